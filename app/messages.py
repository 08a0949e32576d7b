"""Gradio chat history <-> OpenAI chat messages, and the display escaping that keeps HTML shown as text.

The Chatbot holds what the user sees; the controller gets OpenAI messages rebuilt from it on every turn, so every
earlier image and video stays in context in its original order (the worker numbers them Image-1, Image-2, ...).
Assistant messages that carry a metadata title are UI notes (errors, grounding previews), never sent to the model;
a user turn answered only by an error note is dropped too, so a failed turn cannot poison the next one. A Thinking
message is the reasoning of the answer after it: it goes back as that answer's `reasoning_content` (the worker puts
it where the model's authors keep it, docs/preprocessing.md), never as text of its own.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import ErrorCode, ServingError
from common.media_types import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

IMAGE_EXTS = IMAGE_EXTENSIONS  # what the worker decodes (common/media_types.py)
VIDEO_EXTS = VIDEO_EXTENSIONS
NOTE_ERROR = "error"  # metadata id of an error note
NOTE_GROUNDING = "grounding"  # metadata id of a grounding preview
NOTE_THINKING = "thinking"  # metadata id of an answer's reasoning (app/thinking.py), shown folded above it
NOTE_WAITING = "waiting"  # metadata id of "waiting for a free worker, 3rd in line" (shown until the answer starts)

# Code and math are left raw (markdown shows code literally; KaTeX needs the real '<'); the rest is escaped.
# A lone '$' is text, not math (ui.LATEX has no single-'$' delimiter).
_RAW_SPANS = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)", re.S)


def _map_outside_raw(text: str, fn) -> str:
    out, last = [], 0
    for m in _RAW_SPANS.finditer(text):
        out.append(fn(text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(fn(text[last:]))
    return "".join(out)


def to_display(text: str) -> str:
    """Escape HTML outside code/math so the chat shows '<b>' literally instead of rendering it."""
    return _map_outside_raw(text, lambda s: html.escape(s, quote=False))


def from_display(text: str) -> str:
    """Exact inverse of to_display (escaping never touches backticks or '$', so the spans split the same)."""
    return _map_outside_raw(text, html.unescape)


def display_part(text: str) -> dict[str, str]:
    """Text for a Chatbot message's content, kept as it is: a text part. Gradio passes a bare string through
    inspect.cleandoc, which turns tabs into spaces and strips indentation, and the next turn would send the model
    that changed text as its own earlier answer."""
    return {"type": "text", "text": to_display(text)}


def media_kind(path: str | Path) -> str:
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise ServingError(ErrorCode.INVALID_REQUEST, f"'{Path(path).name}' is not an image or a video this chat "
                       f"accepts (images: {', '.join(sorted(IMAGE_EXTS))}; videos: {', '.join(sorted(VIDEO_EXTS))})")


def _mime(path: Path, kind: str) -> str:
    mime = mimetypes.guess_type(path.name)[0]
    return mime or ("image/png" if kind == "image" else "video/mp4")


def data_url(path: str | Path, max_bytes: int) -> tuple[str, str]:
    """(kind, data: URL) for an uploaded file; a ServingError that names the file when it cannot be used."""
    p = Path(path)
    kind = media_kind(p)
    code = ErrorCode.INVALID_IMAGE if kind == "image" else ErrorCode.INVALID_VIDEO
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ServingError(code, f"'{p.name}' could not be read ({exc.strerror}); "
                           "upload it again") from exc
    if size == 0:
        raise ServingError(code, f"'{p.name}' is empty; upload another file")
    if size > max_bytes:
        raise ServingError(ErrorCode.UPLOAD_TOO_LARGE, f"'{p.name}' is {size / 2**20:.1f} MB; the limit is "
                           f"{max_bytes / 2**20:.1f} MB. Use a smaller or shorter file")
    b64 = base64.b64encode(p.read_bytes()).decode("ascii")
    return kind, f"data:{_mime(p, kind)};base64,{b64}"


def _file_path(part: dict[str, Any]) -> str | None:
    if part.get("type") == "file":
        return (part.get("file") or {}).get("path")
    if "path" in part and "type" not in part:  # a bare FileData dict
        return part["path"]
    return None


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, dict):
        return [content]
    return list(content or [])


def is_note(message: dict[str, Any]) -> bool:
    return bool((message.get("metadata") or {}).get("title"))


def note_kind(message: dict[str, Any]) -> str | None:
    return (message.get("metadata") or {}).get("id") if is_note(message) else None


def message_text(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in _parts(message.get("content")) if p.get("type") == "text")


def message_files(message: dict[str, Any]) -> list[str]:
    return [path for p in _parts(message.get("content")) if (path := _file_path(p))]


def conversation_turns(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model's view of the chat: notes removed, failed user turns dropped, same-role neighbours merged."""
    kept: list[dict[str, Any]] = []
    reasoning = None  # a Thinking message waiting for its answer
    for msg in history:
        if note_kind(msg) == NOTE_THINKING:
            reasoning = message_text(msg)
            continue
        if msg.get("role") == "user":
            reasoning = None  # thought, but never answered (stopped or cut): nothing to attach it to
        if msg.get("role") == "assistant" and note_kind(msg) == NOTE_ERROR:
            while kept and kept[-1]["role"] == "user":
                kept.pop()
            continue
        if is_note(msg) or msg.get("role") not in ("user", "assistant"):
            continue
        if msg["role"] == "assistant" and not message_text(msg).strip():
            continue  # stopped before the first token
        if kept and kept[-1]["role"] == msg["role"]:
            kept[-1] = {**kept[-1], "content": _parts(kept[-1]["content"]) + _parts(msg["content"])}
        else:
            kept.append({"role": msg["role"], "content": _parts(msg["content"])})
        if msg["role"] == "assistant" and reasoning:
            kept[-1]["reasoning"], reasoning = reasoning, None
    return kept


def to_openai_messages(history: list[dict[str, Any]], system_prompt: str, num_frames: int, max_bytes: int,
                       encode: Callable[[str, int], tuple[str, str]] = data_url) -> list[dict[str, Any]]:
    """`encode(path, max_bytes)` -> (kind, data: URL); the handlers pass their EncodedFiles cache."""
    messages: list[dict[str, Any]] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt.strip()})
    for turn in conversation_turns(history):
        if turn["role"] == "assistant":
            messages.append({"role": "assistant", "content": from_display(message_text(turn))})
            if turn.get("reasoning"):
                messages[-1]["reasoning_content"] = from_display(turn["reasoning"])
            continue
        content: list[dict[str, Any]] = []
        for path in message_files(turn):
            kind, url = encode(path, max_bytes)
            if kind == "image":
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                content.append({"type": "video_url", "video_url": {"url": url, "num_frames": num_frames}})
        text = from_display(message_text(turn))
        if text:
            content.append({"type": "text", "text": text})
        messages.append({"role": "user", "content": content})
    return messages


def last_image(history: list[dict[str, Any]]) -> str | None:
    """The newest image the user sent: the one a grounding answer refers to."""
    for msg in reversed(conversation_turns(history)):
        if msg["role"] == "user":
            images = [p for p in message_files(msg) if Path(p).suffix.lower() in IMAGE_EXTS]
            if images:
                return images[-1]
    return None
