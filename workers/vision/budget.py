"""Tile budgets: how many tiles each image of a request may use, and whether the images fit the context at all.

InternVL counts the budget (`max_dynamic_patch`, our `max_tiles`) in grid tiles; the thumbnail comes on top.
The newest user turn shares the budget; images from earlier turns were already discussed, so 1 tile each keeps
long conversations inside the context; video frames are always 1 tile (as the model card samples them).
"""

from __future__ import annotations

from common.errors import ErrorCode, ServingError
from workers.model_spec import ModelSpec


def newest_turn_budgets(spec: ModelSpec, per_image: list[int | None], request_max_tiles: int | None) -> list[int]:
    """Max grid tiles for each image of the newest user turn.

    An image's own `max_dynamic_patch` wins for that image; the others split `request_max_tiles` (default: the
    checkpoint's max_tiles) evenly, at least 1 each. Fixed-size models (V1-1/V1-2) always get 1.
    """
    if not spec.dynamic:
        return [1] * len(per_image)
    shared = [i for i, own in enumerate(per_image) if own is None]
    pool = request_max_tiles or spec.max_tiles
    share = max(1, pool // len(shared)) if shared else 1
    return [max(1, own) if own is not None else share for own in per_image]


def check_image_tokens_fit(spec: ModelSpec, total_tiles: int) -> None:
    """Refuse before any engine work when the image tokens alone cannot fit the context."""
    image_tokens = total_tiles * spec.tokens_per_tile
    if image_tokens >= spec.context_length:
        raise ServingError(
            ErrorCode.CONTEXT_TOO_LONG,
            f"the images need {total_tiles} tiles = {image_tokens} tokens, but the model's context is "
            f"{spec.context_length} tokens; send fewer or smaller images, or lower max_tiles")
