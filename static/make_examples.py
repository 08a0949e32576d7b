"""Regenerate the example media in static/examples/ (drawn with PIL, encoded with PyAV; all small).

    python static/make_examples.py
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "examples"


def scene(size: tuple[int, int] = (480, 320)) -> Image.Image:
    """A landscape with a house, a tree and the sun: things to ask about and to ground."""
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):  # sky gradient, then grass
        t = y / h
        color = (int(120 + 90 * t), int(180 + 50 * t), 250) if y < h * 0.65 else (70, int(150 - 40 * t), 60)
        draw.line([(0, y), (w, y)], fill=color)
    draw.ellipse((w * 0.76, h * 0.08, w * 0.9, h * 0.29), fill=(255, 205, 60))
    draw.rectangle((w * 0.18, h * 0.42, w * 0.45, h * 0.75), fill=(200, 80, 60))
    draw.polygon([(w * 0.15, h * 0.43), (w * 0.315, h * 0.22), (w * 0.48, h * 0.43)], fill=(120, 50, 40))
    draw.rectangle((w * 0.28, h * 0.58, w * 0.34, h * 0.75), fill=(90, 60, 40))
    draw.rectangle((w * 0.66, h * 0.5, w * 0.69, h * 0.78), fill=(100, 70, 40))
    draw.ellipse((w * 0.59, h * 0.3, w * 0.76, h * 0.58), fill=(40, 120, 50))
    return img


def chart(size: tuple[int, int] = (400, 280)) -> Image.Image:
    """A bar chart with a title and values: an OCR / reasoning example."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.text((w * 0.3, 12), "Visitors per day", fill="black", font_size=20)
    values = [("Mon", 12), ("Tue", 19), ("Wed", 7), ("Thu", 15), ("Fri", 23)]
    base, top = h - 40, 60
    for i, (day, v) in enumerate(values):
        x = 50 + i * 68
        y = base - (base - top) * v / 25
        draw.rectangle((x, y, x + 40, base), fill=(66, 99, 216))
        draw.text((x + 10, y - 18), str(v), fill="black", font_size=14)
        draw.text((x + 6, base + 8), day, fill="black", font_size=14)
    draw.line((40, base, w - 20, base), fill="black", width=2)
    return img


def ball_frame(t: float, size: tuple[int, int] = (192, 128)) -> Image.Image:
    """The bouncing-ball clip at time t (seconds); also its poster, the example's thumbnail in the chat."""
    w, h = size
    frame = Image.new("RGB", size, (235, 240, 250))
    draw = ImageDraw.Draw(frame)
    x = 20 + (w - 60) * (0.5 - 0.5 * math.cos(math.pi * t))
    y = h - 30 - abs(math.sin(math.pi * 2 * t)) * (h - 60)
    draw.rectangle((0, h - 12, w, h), fill=(90, 160, 80))
    draw.ellipse((x, y, x + 22, y + 22), fill=(220, 60, 60))
    return frame


def bouncing_ball(path: Path, seconds: float = 2.0, fps: int = 12, size: tuple[int, int] = (192, 128)) -> None:
    import av  # test/dev dependency, only needed to regenerate this clip

    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "30", "preset": "veryslow"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = ball_frame(i / fps, size)
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    scene().save(OUT / "landscape.jpg", quality=82)
    chart().save(OUT / "chart.png", optimize=True)
    bouncing_ball(OUT / "bouncing_ball.mp4")
    ball_frame(0.75).save(OUT / "bouncing_ball.jpg", quality=85)
    for p in sorted(OUT.iterdir()):
        print(f"{p.name}: {p.stat().st_size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
