"""What one chat request may carry, as the served model advertises it, and the check of a conversation against it
before sending, naming problems the way a reader sees them ("'cat.jpg' in your 2nd message", not "image 1 (message
3)"), and the conversation as a whole when that is the cause (every earlier file is sent again each turn); and the
reader's words for the place in the request a server error points at (its `param`).

The limits come from the model card the controller lists (`limits` on each card of /v1/models, one typed model
declared in common/limits.py); a card that does not advertise a limit gets its default there. The worker
enforces the same limits again: this check only makes the answer arrive before the upload and in words that name
the file. The cards are fetched at most once per `CARDS_TTL_S`, not once per turn: a fetch is a round trip to the
controller paid before the first token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cachetools import TTLCache
from PIL import Image

from app.messages import conversation_turns, from_display, media_kind, message_files, message_text
from app.texts import EN, ordinal, tr
from common.errors import ErrorCode, ServingError
from common.protocol import ModelCard, ModelLimits

MB = 2**20
CARDS_TTL_S = 2.0
JSON_OVERHEAD = 1024  # the request's own keys, settings and quoting, beyond files and text


def served_limits(card: ModelCard | None) -> ModelLimits:
    """The limits a model card advertises, with the card's context length; the defaults where it is silent."""
    if card is None:
        return ModelLimits()
    limits = card.limits or ModelLimits()
    if limits.context_length is None and card.context_length is not None:
        limits = limits.model_copy(update={"context_length": card.context_length})
    return limits


def per_file_bytes(limits: ModelLimits, upload_bytes: int) -> int:
    """The largest file this UI sends: the served limit, or its own upload ceiling when that is lower."""
    return min(limits.max_media_bytes, upload_bytes)


class ServedLimits:
    """The limits of each served model, from the controller's model cards, fetched at most every `ttl_s`."""

    def __init__(self, client: Any, ttl_s: float = CARDS_TTL_S):
        self.client = client
        # One entry, the whole card list: one fetch answers for every model. No lock: only the event loop uses it.
        self._cards: TTLCache[str, list[ModelCard]] = TTLCache(maxsize=1, ttl=ttl_s)

    async def get(self, model: str) -> ModelLimits:
        """Never raises: when the controller cannot say, the defaults apply and the send itself says why."""
        cards = self._cards.get("cards")
        if cards is None:
            try:
                cards = self._cards["cards"] = await self.client.models()
            except ServingError:
                return ModelLimits()
        return served_limits(next((c for c in cards if c.id == model), None))


def max_new_tokens_bound(limits: ModelLimits, fallback: int = 4096) -> int:
    """Largest 'max new tokens' worth offering: the context minus room for a short prompt with one image."""
    if not limits.context_length:
        return fallback
    return max(16, limits.context_length - min(1024, limits.context_length // 4))


def _mb(n: int) -> str:
    """Megabytes as a reader wants them: 0.3, 2.5, 20, 64 (never a limit of "0 MB")."""
    return f"{n / MB:.1f}" if n < 10 * MB else f"{n / MB:.0f}"


def _where(path: str, nth_message: int, lang: str) -> str:
    return tr("file_in_message", lang, name=Path(path).name, nth=ordinal(nth_message, lang))


def check_conversation(history: list[dict[str, Any]], limits: ModelLimits, upload_bytes: int,
                       lang: str = EN) -> list[tuple[str, str, int]]:
    """Raise a ServingError naming the first file the server would refuse, or the conversation when it is too
    large as a whole; return (path, kind, message number) for every file that will be sent, in order.
    `upload_bytes`: this UI's own per-file limit."""
    items: list[tuple[str, str, int]] = []
    total = 0  # the files' bytes
    text_bytes = 0
    nth = 0
    for turn in conversation_turns(history):
        text_bytes += len(from_display(message_text(turn)).encode())
        if turn["role"] != "user":
            continue
        nth += 1
        for path in message_files(turn):
            items.append((path, media_kind(path), nth))
    per_file = per_file_bytes(limits, upload_bytes)
    for path, kind, nth in items:
        where = _where(path, nth, lang)
        code = ErrorCode.INVALID_IMAGE if kind == "image" else ErrorCode.INVALID_VIDEO
        try:
            size = Path(path).stat().st_size
        except OSError:
            raise ServingError(code, tr("file_unreadable", lang, where=where)) from None
        if size == 0:
            raise ServingError(code, tr("file_empty", lang, where=where))
        if size > per_file:
            raise ServingError(ErrorCode.UPLOAD_TOO_LARGE, tr("file_too_large", lang, where=where,
                               size=_mb(size), limit=_mb(per_file)))
        if kind == "image":
            _check_image(path, where, limits, lang)
        total += size
    if len(items) > limits.max_images_per_request:
        raise ServingError(ErrorCode.INVALID_REQUEST, tr("too_many_media", lang, n=len(items),
                                                          limit=limits.max_images_per_request))
    sent = total * 4 // 3 + text_bytes + JSON_OVERHEAD  # files travel base64-encoded
    if sent > limits.max_body_bytes:
        # The conversation, not one file, is the cause: REQUEST_TOO_LARGE's advice says to start a new chat.
        raise ServingError(ErrorCode.REQUEST_TOO_LARGE, tr("request_too_large", lang, n=len(items),
                                                            size=_mb(sent), limit=_mb(limits.max_body_bytes)))
    return items


def _check_image(path: str, where: str, limits: ModelLimits, lang: str) -> None:
    try:
        with Image.open(path) as img:  # reads the header only
            w, h = img.size
    except (OSError, Image.DecompressionBombError, ValueError):
        raise ServingError(ErrorCode.INVALID_IMAGE, tr("not_an_image", lang, where=where)) from None
    if w * h > limits.max_image_pixels:
        raise ServingError(ErrorCode.INVALID_IMAGE, tr("file_too_many_pixels", lang, where=where, w=w, h=h,
                                                        limit=f"{limits.max_image_pixels / 1e6:.0f}"))


def reader_places(items: list[tuple[str, str, int]], first_user_index: dict[int, int],
                  lang: str = EN) -> dict[str, str]:
    """Where an error's `param` points in the request this UI built -> the reader's words: a file
    (`messages[2].content[0]` -> "'cat.jpg' in your 2nd message"), or a whole user message (`messages[2]` -> "your
    2nd message"). `items`: (path, kind, reader's message number) as check_conversation returned them;
    `first_user_index`: reader's message number -> index of that message in the request (files come first in each
    message, in order: app/messages.py). The UI built the request, so this mapping is exact."""
    out: dict[str, str] = {}
    part = dict.fromkeys(first_user_index, 0)
    for path, _kind, nth in items:
        index = first_user_index.get(nth)
        if index is None:
            continue
        out[f"messages[{index}].content[{part[nth]}]"] = _where(path, nth, lang)
        part[nth] += 1
    for nth, index in first_user_index.items():
        out[f"messages[{index}]"] = tr("your_message", lang, nth=ordinal(nth, lang))
    return out
