"""Images for the bad-input tests, made on the spot with PIL: unusual but valid ones and broken ones (truncated,
decompression bomb), and data: URLs. Videos: tests/support/video_samples.py."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image



def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_data_url(colour: tuple[int, int, int], size: tuple[int, int] = (120, 80)) -> str:
    """A solid-colour PNG as a data: URL (what a model may be asked the colour of)."""
    return data_url(encode(Image.new("RGB", size, colour)), "image/png")


def encode(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def gradient(size=(96, 64), mode="RGB") -> Image.Image:
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[..., 2] = 128
    return Image.fromarray(arr, "RGB").convert(mode)


def png_16bit() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return encode(Image.fromarray(arr, "I;16"))


def png_alpha() -> bytes:
    img = gradient().convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return encode(img)


def png_palette_transparent() -> bytes:
    img = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, transparency=0)


def jpeg_exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encode(gradient((120, 40)), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [gradient().rotate(a).convert("P") for a in (0, 90, 180)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_bomb(side: int = 10_000) -> bytes:
    """A real, fully valid 1-bit PNG of side x side pixels (100 M pixels) that compresses to ~12 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * side, 9))
            + chunk(b"IEND", b""))


def noise_png(nbytes: int) -> bytes:
    side = int((nbytes / 3) ** 0.5) + 8
    arr = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr, "RGB"), compress_level=0)


