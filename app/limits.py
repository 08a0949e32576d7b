"""What one chat request may carry, as the served model advertises it (`limits` on its card in /v1/models, declared
by the workers in workers/limits.py), so the UI refuses a file or a conversation before uploading it, with the same
numbers and the same cause the server would give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import ErrorCode, ServingError
from common.protocol import ModelCard


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int  # one image or video
    max_body_bytes: int | None = None  # the whole request; None: not advertised (the server still checks)
    max_files: int | None = None  # images and videos in the whole conversation


def upload_limits(card: ModelCard | None, ui_max_file_bytes: int) -> UploadLimits:
    """The card's limits; the UI's own upload ceiling (`--max-upload-mb`) when it is lower or none is advertised."""
    if card is None or card.limits is None:
        return UploadLimits(ui_max_file_bytes)
    limits = card.limits
    return UploadLimits(min(limits.max_media_bytes, ui_max_file_bytes), limits.max_body_bytes,
                        limits.max_images_per_request)


async def limits_for(client, model: str, ui_max_file_bytes: int) -> UploadLimits:
    """The limits of `model` as the controller lists it now. Never raises: when the controller cannot say, the UI's
    own ceiling applies and the server's answer tells the rest."""
    try:
        cards = await client.models()
    except ServingError:
        cards = []
    return upload_limits(next((c for c in cards if c.id == model), None), ui_max_file_bytes)


def check_conversation(messages: list[dict[str, Any]], limits: UploadLimits) -> None:
    """Refuse a conversation the server would refuse as a whole (every earlier file is sent again each turn)."""
    files = [part for m in messages if isinstance(m["content"], list) for part in m["content"]
             if part.get("type") in ("image_url", "video_url")]
    if limits.max_files is not None and len(files) > limits.max_files:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"this conversation as a whole holds {len(files)} images and "
                           f"videos (earlier turns included); the model takes at most {limits.max_files} per request")
    if limits.max_body_bytes is None:
        return
    # The data: URLs are nearly all of the body; the rest (text, JSON) is counted by its characters.
    size = sum(len(p[p["type"]]["url"]) for p in files) + sum(
        len(m["content"]) if isinstance(m["content"], str) else
        sum(len(p.get("text", "")) for p in m["content"]) for m in messages) + 1024
    if size > limits.max_body_bytes:
        raise ServingError(ErrorCode.REQUEST_TOO_LARGE, f"this conversation as a whole is {size / 2**20:.1f} MB as "
                           f"sent ({len(files)} files, each sent again with every turn), over the "
                           f"{limits.max_body_bytes / 2**20:.1f} MB one request may carry")
