"""Image decoding and sanitising: orientation, odd modes, bombs, truncation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.errors import ErrorCode, ServingError
from workers.settings import MediaLimits
from workers.vision.images import decode_image


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = decode_image(_encode(img, "JPEG", exif=exif, quality=95), MediaLimits())
    assert out.size == (20, 40)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60  # the left strip is now on top


@pytest.mark.parametrize("make", [
    lambda: Image.new("P", (8, 8), 3),
    lambda: Image.new("L", (8, 8), 128),
    lambda: Image.new("1", (8, 8), 1),
    lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
    lambda: Image.new("LA", (8, 8), (10, 255)),
])
def test_modes_become_rgb(make):
    out = decode_image(_encode(make(), "TIFF" if make().mode == "CMYK" else "PNG"), MediaLimits())
    assert out.mode == "RGB" and out.size == (8, 8)


def test_cmyk_red_stays_red():
    out = decode_image(_encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=100), MediaLimits())
    r, g, b = np.asarray(out).mean(axis=(0, 1))
    assert r > 200 and g < 60 and b < 60


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(decode_image(_encode(img), MediaLimits())).min() == 255
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    assert np.asarray(decode_image(_encode(pal, transparency=0), MediaLimits())).min() == 255


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((4, 4), 32768, dtype=np.uint16)  # mid grey in 16 bits
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(decode_image(_encode(img), MediaLimits()))
    assert abs(int(out.mean()) - 128) <= 1


def test_decompression_bomb_refused_by_our_limit():
    data = _encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ServingError, match="3000x3000 = 9,000,000 pixels; the limit is 1,000,000") as info:
        decode_image(data, MediaLimits(max_image_pixels=1_000_000), label="image 2 (message 1)")
    assert info.value.code == ErrorCode.INVALID_IMAGE and "image 2 (message 1)" in info.value.message


def test_pils_own_bomb_error_is_a_clear_invalid_image(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL raises above 2x this
    with pytest.raises(ServingError, match="decompression bomb") as info:
        decode_image(_encode(Image.new("L", (100, 100))), MediaLimits())
    assert info.value.code == ErrorCode.INVALID_IMAGE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_refused_even_after_lmdeploy_import(fmt):
    import lmdeploy.vl.media.image  # noqa: F401  sets PIL's LOAD_TRUNCATED_IMAGES = True globally

    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ServingError, match="truncated or corrupt") as info:
        decode_image(data[: len(data) // 2], MediaLimits())
    assert info.value.code == ErrorCode.INVALID_IMAGE


@pytest.mark.parametrize("data,code,match", [
    (b"", ErrorCode.INVALID_IMAGE, "empty"),
    (b"hello, not an image", ErrorCode.INVALID_IMAGE, "not an image format"),
])
def test_garbage_refused(data, code, match):
    with pytest.raises(ServingError, match=match) as info:
        decode_image(data, MediaLimits())
    assert info.value.code == code


# -- colour management (issue 22, item 4): what the file's ICC profile says, as sRGB ---------------------------------

def _managed_reference(img: Image.Image) -> np.ndarray:
    """What a colour-managed viewer shows: LittleCMS from the embedded profile to sRGB, perceptual intent."""
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
    return np.asarray(ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB"),
                      dtype=np.int16)


def _photo_like(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    channels = 4 if mode == "CMYK" else 3
    ramp = np.linspace(0, 255, 64)
    arr = np.stack([np.roll(np.add.outer(ramp, ramp) / 2, 7 * c, axis=c % 2) for c in range(channels)], axis=-1)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    if mode == "CMYK":
        arr[..., 3] //= 3  # little black, as in photos
    return Image.fromarray(arr, mode)


@pytest.mark.parametrize("mode", ["CMYK", "RGB"])
def test_images_with_an_icc_profile_are_converted_through_it(mode):
    from tests.support.icc_profiles import adobe_rgb, press_cmyk

    profile = press_cmyk() if mode == "CMYK" else adobe_rgb()
    data = _encode(_photo_like(mode), "JPEG", quality=95, icc_profile=profile)
    stored = Image.open(io.BytesIO(data))
    reference = _managed_reference(stored)
    out = np.asarray(decode_image(data, MediaLimits()), dtype=np.int16)
    naive = np.asarray(stored.convert("RGB"), dtype=np.int16)  # the profile ignored: what the audit saw
    assert np.abs(naive - reference).mean() > 5  # the profile matters for this image, so the test can fail
    assert np.abs(out - reference).mean() < 1.0 and np.abs(out - reference).max() <= 3


def test_a_broken_icc_profile_falls_back_to_the_plain_conversion():
    data = _encode(_photo_like("RGB"), "JPEG", quality=95, icc_profile=b"not a profile" * 20)
    out = decode_image(data, MediaLimits())
    assert out.mode == "RGB" and out.size == (64, 64)


def test_every_image_type_the_ui_accepts_is_decoded():
    """One list (common/media_types.py) for both sides: each type the UI lets a user attach decodes here."""
    from PIL import Image as PILImage

    from app.messages import media_kind
    from common.media_types import IMAGE_EXTENSIONS

    PILImage.init()
    img = _photo_like("RGB")
    for ext in sorted(IMAGE_EXTENSIONS):
        assert media_kind(f"photo{ext}") == "image"
        data = _encode(img, PILImage.registered_extensions()[ext])
        out = np.asarray(decode_image(data, MediaLimits(), label=ext), dtype=np.int16)
        assert out.shape == (64, 64, 3) and np.abs(out - np.asarray(img, dtype=np.int16)).mean() < 12, ext
