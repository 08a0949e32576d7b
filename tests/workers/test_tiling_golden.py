"""Tiling checked against the reference implementations installed as dependencies: lmdeploy's InternVL
preprocessing (a copy of the model card's dynamic_preprocess + torchvision transform) and transformers'
GotOcr2ImageProcessor (torchvision and PIL backends, crop_to_patches) used by the native InternVL processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lmdeploy.vl.model.internvl import InternVLVisionModel, dynamic_preprocess, find_closest_aspect_ratio
from PIL import Image
from transformers import CLIPImageProcessor, GotOcr2ImageProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from workers.vision.tiling import (IMAGENET_MEAN, IMAGENET_STD, MIN_SPLIT_PIXELS, choose_grid, cut_tiles, normalize,
                                  resize_bicubic, square_tile)

SHAPES = [(1, 1), (1, 4000), (4000, 1), (4000, 3000), (3000, 4000), (448, 448), (449, 448), (896, 448),
          (1000, 200), (200, 1000), (640, 480), (480, 640), (1920, 1080), (1080, 1920), (35, 14), (13, 12),
          (300, 700), (2, 3), (1234, 567), (50, 2000), (800, 801), (4480, 448), (1344, 896), (97, 1013)]
S = 448


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + w * 7 + h)
    # smooth gradient + noise: exercises the resampler on both flat and busy content
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w, 1)), (yy * 255 // max(h, 1)), ((xx + yy) * 127 // max(w + h, 1))], -1)
    noise = rng.integers(0, 64, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _lmdeploy_grid(w: int, h: int, min_n: int, max_n: int, size: int = S) -> tuple[int, int]:
    ratios = sorted({(i, j) for n in range(min_n, max_n + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if min_n <= i * j <= max_n}, key=lambda x: x[0] * x[1])  # lmdeploy builds this list inline
    return find_closest_aspect_ratio(w / h, ratios, w, h, size)


def _lmdeploy_model(max_patch: int = 12, image_size: int = S) -> InternVLVisionModel:
    """lmdeploy's real InternVL preprocessor, built without loading weights or a tokenizer."""
    from types import SimpleNamespace

    model = object.__new__(InternVLVisionModel)
    model.model_path = "/nonexistent-no-clip-config"
    model.hf_config = SimpleNamespace(vision_config={"image_size": image_size, "patch_size": 14},
                                      dynamic_image_size=True, force_image_size=image_size, downsample_ratio=0.5,
                                      min_dynamic_patch=1, max_dynamic_patch=max_patch, use_thumbnail=True)
    model.build_preprocessor()
    return model


@pytest.mark.parametrize("max_tiles", [1, 6, 12, 40])
def test_grid_matches_lmdeploy_on_all_shapes(max_tiles):
    for w, h in SHAPES:
        assert choose_grid(w, h, 1, max_tiles, S) == _lmdeploy_grid(w, h, 1, max_tiles), (w, h, max_tiles)


def test_grid_matches_lmdeploy_exhaustively_on_small_shapes():
    for min_n, max_n in [(1, 6), (1, 12), (2, 8), (4, 4), (6, 6)]:
        for w in range(1, 60, 3):
            for h in range(1, 60, 2):
                assert choose_grid(w * 9, h * 9, min_n, max_n, S) == _lmdeploy_grid(w * 9, h * 9, min_n, max_n)


@pytest.mark.parametrize("w,h", SHAPES)
def test_pixels_equal_lmdeploy(w, h):
    model = _lmdeploy_model(max_patch=12)
    image = _image(w, h)
    expected = model._preprocess_v1_5(image, {"max_dynamic_patch": 12})
    ours = normalize(cut_tiles(image, tile_size=S, min_tiles=1, max_tiles=12, use_thumbnail=True))
    assert ours.shape == expected.shape
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("w,h", SHAPES)
def test_tile_count_and_pixels_match_transformers(w, h):
    image = _image(w, h)
    kwargs = dict(size={"height": S, "width": S}, crop_to_patches=True, min_patches=1, max_patches=12,
                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    pil_ref = GotOcr2ImageProcessorPil(**kwargs)(image, return_tensors="pt")
    tv_ref = GotOcr2ImageProcessor(**kwargs)(image, return_tensors="pt")
    ours = normalize(cut_tiles(image, tile_size=S, min_tiles=1, max_tiles=12, use_thumbnail=True))
    assert ours.shape[0] == int(pil_ref["num_patches"][0]) == int(tv_ref["num_patches"][0])
    # PIL backend: same PIL bicubic resize as ours and the model card, float rounding only.
    torch.testing.assert_close(ours, pil_ref["pixel_values"], atol=1e-5, rtol=0)
    # torchvision backend: antialiased tensor bicubic, a different resampler: close, not equal (docs/preprocessing.md)
    diff = (ours - tv_ref["pixel_values"]).abs()
    assert diff.mean() < 0.05, (w, h, float(diff.mean()))


def test_reference_disagreement_on_equal_size_ties_follows_the_model_card():
    """A 5:2 image with exactly 4 tiles: (4,1) and (2,2) are equally far from 2.5 and equally large. lmdeploy (the
    model card's order) keeps (4,1); transformers' enumeration order gives (2,2). We follow the model card."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    assert _lmdeploy_grid(35, 14, 4, 4) == (4, 1)
    assert get_optimal_tiled_canvas((14, 35), (S, S), 4, 4) == (2, 2)
    assert choose_grid(35, 14, 4, 4, S) == (4, 1)


def test_lmdeploy_dynamic_preprocess_tiles_equal_ours_as_uint8():
    image = _image(1920, 1080)
    ref = np.stack([np.asarray(t) for t in dynamic_preprocess(image, 1, 12, S, use_thumbnail=True)])
    np.testing.assert_array_equal(cut_tiles(image, tile_size=S, min_tiles=1, max_tiles=12, use_thumbnail=True), ref)


@pytest.mark.parametrize("w,h", [(448, 448), (1000, 200), (640, 480)])
def test_fixed_448_matches_v1_2_clip_processor(w, h):
    """InternVL-Chat-V1-2's model card: image.resize((448, 448)) then its CLIPImageProcessor (config as shipped:
    resize/center-crop 448, ImageNet mean/std)."""
    clip = CLIPImageProcessor(size=S, crop_size=S, do_center_crop=True, resample=3,
                              image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    image = _image(w, h)
    expected = clip(images=image.resize((S, S)), return_tensors="pt").pixel_values
    torch.testing.assert_close(normalize(square_tile(image, S)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("src,dst", [
    ((4000, 3000), (1792, 1344)), ((4000, 3000), (448, 448)), ((3000, 4000), (448, 448)), ((1920, 1080), (2688, 1344)),
    ((2001, 1999), (2001, 448)), ((2001, 1999), (448, 1999)), ((9000, 300), (5376, 448)), ((1537, 1537), (4480, 4480)),
])
def test_resize_in_strips_equals_one_pil_resize(src, dst):
    """The strips each core resizes join into exactly PIL's own single resize (down, up, one axis only)."""
    image = _image(*src, seed=5)
    assert src[0] * src[1] >= MIN_SPLIT_PIXELS  # the split path, not the small-image shortcut
    assert np.array_equal(resize_bicubic(image, dst), np.asarray(image.resize(dst, Image.Resampling.BICUBIC)))


def test_normalize_in_groups_equals_torchvision_bit_for_bit():
    import torchvision.transforms.functional as F

    tiles = np.random.default_rng(1).integers(0, 256, size=(13, S, S, 3), dtype=np.uint8)
    expected = torch.stack([F.normalize(F.to_tensor(t), IMAGENET_MEAN, IMAGENET_STD) for t in tiles])
    ours = normalize(tiles)
    assert ours.is_contiguous() and torch.equal(ours, expected)
