"""Export a conversation (Markdown to read, JSON to import back) and import it again.

- Markdown: each message under its speaker, a thinking answer's reasoning as a quoted "Thinking" section above it,
  media referenced by file name (`![cat.jpg](cat.jpg)`, videos as links): readable anywhere, the media alongside.
- JSON (`format: internvl-chat`, `version: 1`): the Chatbot's messages with each file embedded as base64, so it
  imports back into any server running this UI, in any browser: a history that names server paths could not come
  back (the UI opens only what the session uploaded, app/history_guard.py).

An import is untrusted input: its size is bounded before it is read, its structure checked field by field (roles,
text and file parts, the metadata of notes and thoughts), every file an image or video within the upload limit, and
its files become this session's uploads (written to Gradio's upload cache, where the Chatbot takes them).
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.messages import (NOTE_THINKING, display_part, from_display, media_kind, message_files, message_text,
                          note_kind)
from common.errors import ErrorCode, ServingError

FORMAT, VERSION = "internvl-chat", 1
MAX_MESSAGES = 500
_META_KEYS = {"title": str, "id": str, "status": str, "duration": (int, float)}


def _messages(history: list[dict[str, Any]]):
    for msg in history or []:
        if msg.get("role") in ("user", "assistant"):
            yield msg


def to_markdown(history: list[dict[str, Any]], title: str) -> str:
    out = [f"# {title}", ""]
    for msg in _messages(history):
        text = from_display(message_text(msg)).strip()
        files = [Path(p).name for p in message_files(msg)]
        kind = note_kind(msg)
        if kind == NOTE_THINKING:
            meta = msg.get("metadata") or {}
            seconds = f", {meta['duration']} s" if meta.get("duration") is not None else ""
            out += [f"> **{meta.get('title', 'Thinking')}**{seconds}", ">"]
            out += [f"> {line}" if line else ">" for line in text.splitlines()] + [""]
            continue
        who = "**You**" if msg["role"] == "user" else "**InternVL**"
        if kind:
            who += f" ({(msg.get('metadata') or {}).get('title', kind)})"
        out.append(who + ":")
        out.append("")
        for name in files:
            out.append(f"![{name}]({name})" if media_kind(name) == "image" else f"[{name}]({name})")
        if files:
            out.append("")
        if text:
            out += [text, ""]
    return "\n".join(out).rstrip() + "\n"


def to_json(history: list[dict[str, Any]], title: str) -> str:
    messages = []
    for msg in _messages(history):
        parts: list[dict[str, Any]] = []
        for path in message_files(msg):
            p = Path(path)
            parts.append({"type": "file", "name": p.name, "mime_type": mimetypes.guess_type(p.name)[0],
                          "data": base64.b64encode(p.read_bytes()).decode("ascii")})
        text = from_display(message_text(msg))
        if text:
            parts.append({"type": "text", "text": text})
        entry: dict[str, Any] = {"role": msg["role"], "content": parts}
        meta = {k: v for k, v in (msg.get("metadata") or {}).items() if k in _META_KEYS and v is not None}
        if meta:
            entry["metadata"] = meta
        messages.append(entry)
    return json.dumps({"format": FORMAT, "version": VERSION, "title": title, "messages": messages},
                      ensure_ascii=False, indent=1)


def from_json(text: str, save_file: Callable[[str, bytes], str], max_file_bytes: int) -> list[dict[str, Any]]:
    """The Chatbot history of an exported conversation; `save_file(name, data)` stores one file and returns its
    path. Raises ServingError (INVALID_REQUEST) naming what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _bad(f"it is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise _bad(f"it is not a conversation exported by this chat (expected format '{FORMAT}', version {VERSION})")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise _bad(f"'messages' must be a list of 1 to {MAX_MESSAGES} messages")
    # everything is checked before any file is written
    checked = [_check_message(i, m, max_file_bytes) for i, m in enumerate(messages)]
    history = []
    for role, parts, meta in checked:
        content: list[dict[str, Any]] = []
        for part in parts:
            if part[0] == "file":
                path = save_file(part[1], part[2])
                content.append({"type": "file", "file": {"path": path, "mime_type": mimetypes.guess_type(path)[0]}})
            else:
                content.append(display_part(part[1]))
        if meta:  # notes and thoughts: one text, as the chat shows them
            text = "".join(p["text"] for p in content if p["type"] == "text")
            history.append({"role": role, "content": {"type": "text", "text": text}, "metadata": meta})
        else:
            history.append({"role": role, "content": content})
    return history


def _check_message(index: int, msg: Any, max_file_bytes: int):
    where = f"message {index + 1}"
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        raise _bad(f"{where}: each message needs a role 'user' or 'assistant'")
    parts_in = msg.get("content")
    if not isinstance(parts_in, list):
        raise _bad(f"{where}: 'content' must be a list of parts")
    parts: list[tuple] = []
    for part in parts_in:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append(("text", part["text"]))
        elif isinstance(part, dict) and part.get("type") == "file" and msg["role"] == "user":
            parts.append(("file", *_check_file(where, part, max_file_bytes)))
        else:
            raise _bad(f"{where}: a part must be text, or a file in a user message")
    meta = msg.get("metadata") or {}
    if not isinstance(meta, dict) or any(k not in _META_KEYS or not isinstance(v, _META_KEYS[k])
                                         for k, v in meta.items()):
        raise _bad(f"{where}: metadata may hold only {', '.join(_META_KEYS)}")
    if meta and (msg["role"] != "assistant" or not meta.get("title") or any(p[0] == "file" for p in parts)):
        raise _bad(f"{where}: only an assistant note or thought (text, with a title) carries metadata")
    return msg["role"], parts, meta


def _check_file(where: str, part: dict[str, Any], max_file_bytes: int) -> tuple[str, bytes]:
    name = Path(str(part.get("name") or "")).name
    try:
        media_kind(name)
    except ServingError:
        raise _bad(f"{where}: '{name}' is not an image or a video this chat accepts") from None
    data = part.get("data")
    if not isinstance(data, str) or len(data) > (max_file_bytes * 4) // 3 + 4:
        raise _bad(f"{where}: '{name}' is missing or larger than {max_file_bytes / 2**20:.1f} MB")
    try:
        return name, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where}: '{name}' is not valid base64") from None


def _bad(why: str) -> ServingError:
    return ServingError(ErrorCode.INVALID_REQUEST, f"This file cannot be imported: {why}.")
