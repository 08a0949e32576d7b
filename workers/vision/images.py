"""Decode one uploaded image into a clean RGB PIL image, or refuse it with a ServingError that says why.

Sanitising: EXIF orientation applied; colours converted to sRGB through the file's ICC profile when it has one
(CMYK from a print workflow, Adobe RGB or Display P3 photos: what a colour-managed viewer shows); palette, alpha,
CMYK, 16-bit and float modes converted to 8-bit RGB (transparency composited over white, what a viewer shows);
decompression bombs and truncated files refused.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from common.errors import ErrorCode, ServingError
from common.media_types import image_names
from workers.limits import MediaLimits

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def header_pixels(data: bytes) -> int:
    """width x height from the file's header, without decoding (0 when unreadable: decoding then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.width * img.height
    except Exception:  # noqa: BLE001 - any failure here is reported by decode_image with its real cause
        return 0


class _CheckedBytes(io.BytesIO):
    """The file as PIL reads it, block by block while it decodes: `check` runs before each block, so a decoding can
    be stopped (it raises) every 64 KB of compressed data."""

    def __init__(self, data: bytes, check: Callable[[], None]):
        super().__init__(data)
        self._check = check

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        return super().read(size)


def _never() -> None:
    return None


def decode_image(data: bytes, limits: MediaLimits, label: str = "image",
                 check: Callable[[], None] = _never) -> Image.Image:
    """`label` names the image in error messages (e.g. "image 2 (message 3)"); `check` raises to stop decoding. Its
    byte size was checked when the bytes arrived (workers/media.py)."""
    if not data:
        raise ServingError(ErrorCode.INVALID_IMAGE, f"{label} is empty (0 bytes)")
    # lmdeploy sets this global to True when its vision module is imported; truncated uploads must still fail here.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(_CheckedBytes(data, check))
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise ServingError(ErrorCode.INVALID_IMAGE,
                                   f"{label} is {width}x{height} = {width * height:,} pixels; the limit is "
                                   f"{limits.max_image_pixels:,} (decompression-bomb guard)")
            img.load()
    except ServingError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServingError(ErrorCode.INVALID_IMAGE, f"{label} refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ServingError(ErrorCode.INVALID_IMAGE,
                           f"{label} is not an image format we can read ({image_names()})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ServingError(ErrorCode.INVALID_IMAGE, f"{label} is truncated or corrupt: {exc}") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost the user the image; orientation then stays as stored
        pass
    return to_rgb(to_srgb(img))


_MANAGED_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB", "LA": "RGBA"}


def to_srgb(img: Image.Image) -> Image.Image:
    """The image's colours as sRGB, through its embedded ICC profile (LittleCMS, perceptual intent); unchanged
    when it has none, when the profile is sRGB already, or when the profile cannot be used (then the plain
    conversion applies, as for an untagged file)."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in _MANAGED_MODES:
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(source).strip().lower().startswith("srgb"):
            return img  # the common case: nothing to convert
        return ImageCms.profileToProfile(img, source, _srgb(), outputMode=_MANAGED_MODES[img.mode])
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        return Image.fromarray(_wide_to_u8(np.asarray(img)), "L").convert("RGB")
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV


def _wide_to_u8(arr: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit int / float) greyscale -> 8-bit. PIL's own convert clips at 255 (a mostly white image)."""
    a = arr.astype(np.float64)
    if arr.dtype.kind == "f":
        top = 1.0 if a.max(initial=0.0) <= 1.0 else a.max()
    elif arr.dtype.itemsize == 2:  # I;16*: the full 16-bit range, whatever this image happens to use
        top = 65535.0
    else:  # 32-bit "I": usually 8- or 16-bit data widened by the decoder
        top = 255.0 if a.max(initial=0) <= 255 else 65535.0 if a.max() <= 65535 else float(a.max())
    return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
