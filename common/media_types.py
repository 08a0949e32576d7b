"""The one list of file types a chat may carry: what the worker decodes (images with Pillow, videos with PyAV or
decord) is what the web UI accepts. Add a type here only with a decoder and a test that decodes it
(tests/workers/test_images.py)."""

from __future__ import annotations

import mimetypes

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".avif", ".bmp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".avi", ".gif", ".mkv"})  # .gif: animated, as a clip

# Python 3.11's table lacks AVIF; the chat shows a file as an image only when its type is known.
mimetypes.add_type("image/avif", ".avif")


def image_names() -> str:
    """For messages: 'PNG, JPEG, WebP, ...'."""
    return ", ".join(sorted({_NAMES.get(ext, ext.lstrip(".").upper()) for ext in IMAGE_EXTENSIONS}))


_NAMES = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".tif": "TIFF", ".tiff": "TIFF"}
