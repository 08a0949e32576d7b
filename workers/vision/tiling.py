"""InternVL dynamic tiling: pick a tile grid, resize once, cut tiles, add a thumbnail, normalise the batch.

The grid rule is the one InternVL 1.5+ was trained with (model card `dynamic_preprocess`): the grid (cols, rows)
whose aspect ratio is closest to the image's, among all grids with min_tiles <= cols*rows <= max_tiles, visited in
order of increasing tile count; on an exact tie the later (bigger) grid wins only while the image area exceeds half
the grid's pixel area. Resizing is PIL bicubic, as in the model card, so pixels match the reference bit for bit.
Unlike the model card we resize once and slice tiles out of one array, then normalise all tiles in one op.
"""

from __future__ import annotations

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


def tile_count(width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int, use_thumbnail: bool) -> int:
    cols, rows = choose_grid(width, height, min_tiles, max_tiles, tile_size)
    n = cols * rows
    return n + 1 if use_thumbnail and n > 1 else n


def cut_tiles(image: Image.Image, *, tile_size: int, min_tiles: int, max_tiles: int,
              use_thumbnail: bool) -> np.ndarray:
    """RGB image -> uint8 tiles [N, S, S, 3], row-major, thumbnail last (only when there are 2+ tiles)."""
    cols, rows = choose_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    thumb = None
    if use_thumbnail and cols * rows > 1:
        # Both resizes read the whole source and dominate the cost; PIL releases the GIL, so run them side by side.
        thumb = _resize_pool().submit(image.resize, (tile_size, tile_size), Image.Resampling.BICUBIC)
    resized = np.asarray(image.resize((cols * tile_size, rows * tile_size), Image.Resampling.BICUBIC))
    # [rows*S, cols*S, 3] -> [rows, S, cols, S, 3] -> [rows, cols, S, S, 3]: tile (r, c) in row-major order.
    tiles = resized.reshape(rows, tile_size, cols, tile_size, 3).swapaxes(1, 2).reshape(-1, tile_size, tile_size, 3)
    if thumb is not None:
        tiles = np.concatenate([tiles, np.asarray(thumb.result())[None]], axis=0)
    return tiles


@cache
def _resize_pool() -> ThreadPoolExecutor:
    """Created on first use (never at import); shared by all requests."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="thumbnail")


def square_tile(image: Image.Image, tile_size: int) -> np.ndarray:
    """One S x S tile of the whole image (fixed-size models, video frames): uint8 [1, S, S, 3]."""
    return np.asarray(image.resize((tile_size, tile_size), Image.Resampling.BICUBIC))[None]


def square_tiles_of_frames(frames: np.ndarray, tile_size: int) -> np.ndarray:
    """Video frames uint8 [N, H, W, 3] -> one S x S tile each [N, S, S, 3]; resized in parallel (PIL drops the GIL)."""
    def one(frame: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((tile_size, tile_size), Image.Resampling.BICUBIC))

    return np.stack(list(_resize_pool().map(one, frames)))


def normalize(tiles: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float32 [N, 3, S, S], (x/255 - mean) / std in the same float ops as torchvision's
    ToTensor + Normalize, so the result equals the model card's tensors exactly."""
    import torch  # here, not at module level: importing torch costs seconds a worker need not pay before serving

    x = torch.from_numpy(np.require(tiles, requirements=["C", "W"])).permute(0, 3, 1, 2).to(torch.float32).div_(255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(m).div_(s).contiguous()
