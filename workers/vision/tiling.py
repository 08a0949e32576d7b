"""InternVL dynamic tiling: pick a tile grid, resize once, cut tiles, add a thumbnail, normalise the batch.

The grid rule is the one InternVL 1.5+ was trained with (model card `dynamic_preprocess`): the grid (cols, rows)
whose aspect ratio is closest to the image's, among all grids with min_tiles <= cols*rows <= max_tiles, visited in
order of increasing tile count; on an exact tie the later (bigger) grid wins only while the image area exceeds half
the grid's pixel area. Resizing is PIL bicubic, as in the model card, so pixels match the reference bit for bit.
Unlike the model card we resize once and slice tiles out of one array, then normalise all tiles in one op, and a big
image's resize runs on several cores (`resize_bicubic`), with the same pixels.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with min_tiles <= cols*rows <= max_tiles, by tile count.

    Within one tile count the order is that of InternVL's reference (a Python set of int tuples, whose iteration
    order is deterministic); it decides the rare exact ties between grids of equal size (see docs/preprocessing.md).
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles}
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """(cols, rows) of the tile grid for an image of width x height pixels."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)  # tie: take the bigger grid only while it is at most 2x the image area
    return best


def cut_tiles(image: Image.Image, *, tile_size: int, min_tiles: int, max_tiles: int,
              use_thumbnail: bool) -> np.ndarray:
    """RGB image -> uint8 tiles [N, S, S, 3], row-major, thumbnail last (only when there are 2+ tiles)."""
    cols, rows = choose_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    resized = resize_bicubic(image, (cols * tile_size, rows * tile_size))
    # [rows*S, cols*S, 3] -> [rows, S, cols, S, 3] -> [rows, cols, S, S, 3]: tile (r, c) in row-major order.
    tiles = resized.reshape(rows, tile_size, cols, tile_size, 3).swapaxes(1, 2).reshape(-1, tile_size, tile_size, 3)
    if use_thumbnail and cols * rows > 1:
        tiles = np.concatenate([tiles, resize_bicubic(image, (tile_size, tile_size))[None]], axis=0)
    return tiles


# Below this many source pixels, handing strips to threads costs more than it saves.
MIN_SPLIT_PIXELS = 2_000_000


def resize_bicubic(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """`image.resize(size, BICUBIC)` of an RGB image as uint8 [H, W, 3], the very same pixels, on several cores.

    PIL resizes in two passes, horizontal then vertical, rounding to 8 bits in between. Each output row of the first
    pass depends on one source row only and each output column of the second on one column only, with weights that
    depend on the full sizes alone; so each pass is cut into strips (rows, then columns) resized side by side (PIL
    releases the GIL). tests/test_tiling_golden.py checks the pixels against plain `resize` and lmdeploy's reference.
    """
    parts = min(usable_cores(), 4)
    if parts < 2 or image.mode != "RGB" or image.width * image.height < MIN_SPLIT_PIXELS:
        return np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    width, height = size
    pool = _pool()

    def rows(span: tuple[int, int]) -> np.ndarray:
        top, bottom = span
        return np.asarray(image.crop((0, top, image.width, bottom)).resize((width, bottom - top),
                                                                           Image.Resampling.BICUBIC))

    wide = np.concatenate(list(pool.map(rows, _spans(image.height, parts))), axis=0)
    if height == image.height:
        return wide
    middle = Image.fromarray(wide)

    def columns(span: tuple[int, int]) -> np.ndarray:
        left, right = span
        return np.asarray(middle.crop((left, 0, right, middle.height)).resize((right - left, height),
                                                                            Image.Resampling.BICUBIC))

    return np.concatenate(list(pool.map(columns, _spans(width, parts))), axis=1)


def _spans(count: int, parts: int) -> list[tuple[int, int]]:
    """[0, count) cut into at most `parts` non-empty (start, stop) spans of about equal length."""
    cuts = np.unique(np.linspace(0, count, min(parts, count) + 1).astype(int)).tolist()
    return list(zip(cuts[:-1], cuts[1:]))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    """The preprocessing threads (resizes, normalisation): created on first use (never at import), shared by all
    requests. Its tasks never wait for each other, so callers can always wait for theirs."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="preprocess")


def square_tile(image: Image.Image, tile_size: int) -> np.ndarray:
    """One S x S tile of the whole image (fixed-size models, video frames): uint8 [1, S, S, 3]."""
    return np.asarray(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))[None]


def frame_tile(frame: np.ndarray, tile_size: int) -> np.ndarray:
    """One video frame uint8 [H, W, 3] -> its S x S tile [S, S, 3] (the model card's resize of a frame)."""
    return np.asarray(Image.fromarray(frame).resize((tile_size, tile_size), Image.Resampling.BICUBIC))


def square_tiles_of_frames(frames: np.ndarray, tile_size: int) -> np.ndarray:
    """Video frames uint8 [N, H, W, 3] -> one S x S tile each [N, S, S, 3]; resized in parallel (PIL drops the GIL)."""
    return np.stack(list(_pool().map(lambda frame: frame_tile(frame, tile_size), frames)))


def normalize(tiles: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float32 [N, 3, S, S], (x/255 - mean) / std in the same float ops as torchvision's
    ToTensor + Normalize, so the result equals the model card's tensors exactly. Element-wise, so groups of tiles
    are normalised side by side (torch releases the GIL), each into its slice of the output."""
    import torch  # here, not at module level: importing torch costs seconds a worker need not pay before serving

    tiles = np.require(tiles, requirements=["C", "W"])
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((tiles.shape[0], 3, *tiles.shape[1:3]), dtype=torch.float32)

    def part(span: tuple[int, int]) -> None:
        first, last = span
        x = out[first:last]
        x.copy_(torch.from_numpy(tiles[first:last]).permute(0, 3, 1, 2))  # uint8 -> float32, channels first
        x.div_(255).sub_(m).div_(s)

    spans = _spans(tiles.shape[0], min(usable_cores(), 4))
    if len(spans) < 2 or tiles.size // 3 < MIN_SPLIT_PIXELS:
        part((0, tiles.shape[0]))
    else:
        list(_pool().map(part, spans))
    return out
