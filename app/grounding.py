"""Grounding answers: `<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>` on InternVL's 0-1000 scale.

Parsed with a regex and int() only: model output is never evaluated. Boxes are drawn on a copy of the image the
answer refers to, with the label on a filled tab so it stays readable on any background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_REF_BOX = re.compile(r"<ref>(.*?)</ref>\s*<box>(.*?)</box>", re.S)
_LONE_BOX = re.compile(r"<box>(.*?)</box>", re.S)
_QUAD = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")
_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
SCALE = 1000


@dataclass(frozen=True)
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float


def parse_boxes(text: str) -> list[Box]:
    """All boxes in an answer; coordinates clamped to 0-1000 and ordered; malformed boxes skipped."""
    boxes: list[Box] = []
    spans = []
    for m in _REF_BOX.finditer(text):
        spans.append(m.span(2))
        boxes += _quads(m.group(1).strip(), m.group(2))
    for m in _LONE_BOX.finditer(text):
        if not any(s <= m.start(1) < e for s, e in spans):
            boxes += _quads("", m.group(1))
    return boxes


def _quads(label: str, inner: str) -> list[Box]:
    out = []
    for q in _QUAD.finditer(inner):
        x1, y1, x2, y2 = (min(max(float(v), 0.0), SCALE) for v in q.groups())
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x2 > x1 and y2 > y1:
            out.append(Box(label, x1, y1, x2, y2))
    return out


def draw_boxes(image_path: str | Path, boxes: list[Box], out_path: str | Path) -> Path:
    """Save a copy of the image with the boxes drawn (pixel coordinates = value / 1000 * side)."""
    with Image.open(image_path) as src:
        img = src.convert("RGB")
    w, h = img.size
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(w, h) / 150))
    font = ImageFont.load_default(size=max(12, round(min(w, h) / 28)))
    colors: dict[str, str] = {}
    for box in boxes:
        color = colors.setdefault(box.label, _PALETTE[len(colors) % len(_PALETTE)])
        rect = (box.x1 * w / SCALE, box.y1 * h / SCALE, box.x2 * w / SCALE, box.y2 * h / SCALE)
        draw.rectangle(rect, outline=color, width=width)
        if box.label:
            left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
            tw, th = right - left + 2 * width, bottom - top + 2 * width
            tx = min(max(rect[0], 0), max(w - tw, 0))
            ty = rect[1] - th if rect[1] - th >= 0 else rect[1]
            draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
            draw.text((tx + width - left, ty + width - top), box.label, fill="white", font=font)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out
