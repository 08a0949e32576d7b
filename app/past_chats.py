"""Past chats, kept in the reader's browser (gr.BrowserState: localStorage, encrypted with the server's secret).

Each entry is {"id", "title", "history"}; the newest first, at most MAX_CHATS and MAX_BYTES (the oldest go first).
Media stay on this server (the history holds their paths), so a chat reopened after the server restarted shows its
text but not its files.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import gradio as gr

from app.messages import from_display, message_files, message_text

MAX_CHATS = 30
# A browser keeps ~5 M characters per site, and the list is stored encrypted in base64 (4 characters per 3 bytes):
# a list that outgrew it would not be written at all (Gradio logs the error to the console and keeps the old list).
MAX_BYTES = 2_500_000
TITLE_CHARS = 40


def _title(history: list[dict[str, Any]]) -> str:
    first = next((m for m in history if m.get("role") == "user"), None)
    if first is None:
        return "…"
    text = " ".join(from_display(message_text(first)).split())
    if not text:
        text = ", ".join(p.rsplit("/", 1)[-1] for p in message_files(first)) or "…"
    return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1] + "…"


title_of = _title  # a chat's title, as the list shows it (exports are named after it)


def _choices(saved: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["title"], c["id"]) for c in saved]


def listing(saved: list[dict[str, Any]] | None) -> Any:
    return gr.Radio(choices=_choices(saved or []), value=None)


def save(history: list[dict[str, Any]] | None, chat_id: str | None,
         saved: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], str | None, Any]:
    """Store the current chat (new entry on its first turn), newest first."""
    saved = [c for c in saved or [] if isinstance(c, dict) and c.get("id")]
    if not history:
        return saved, chat_id, gr.Radio(choices=_choices(saved), value=chat_id)
    chat_id = chat_id or uuid.uuid4().hex[:12]
    entry = {"id": chat_id, "title": _title(history), "history": history}
    saved = _within_budget([entry] + [c for c in saved if c["id"] != chat_id][:MAX_CHATS - 1])
    return saved, chat_id, gr.Radio(choices=_choices(saved), value=chat_id)


def _within_budget(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest entries whose JSON fits MAX_BYTES (the newest is kept whatever its size)."""
    total = 0
    for i, entry in enumerate(entries):
        total += len(json.dumps(entry, ensure_ascii=False).encode())
        if i and total > MAX_BYTES:
            return entries[:i]
    return entries


def search(query: str | None, saved: list[dict[str, Any]] | None) -> Any:
    """The list narrowed to the chats whose title or messages (answers and reasoning included) hold every word of
    `query`, case-insensitively; an empty query lists them all."""
    words = (query or "").casefold().split()
    entries = [c for c in saved or [] if isinstance(c, dict) and c.get("id")]
    if words:
        entries = [c for c in entries if all(w in _searchable(c) for w in words)]
    return gr.Radio(choices=_choices(entries), value=None)


def _searchable(entry: dict[str, Any]) -> str:
    texts = [entry.get("title") or ""] + [from_display(message_text(m)) for m in entry.get("history") or []
                                          if isinstance(m, dict)]
    return "\n".join(texts).casefold()


def open_chat(chosen: str | None, saved: list[dict[str, Any]] | None) -> tuple[Any, Any]:
    entry = next((c for c in saved or [] if c.get("id") == chosen), None)
    if entry is None:
        return gr.skip(), gr.skip()
    return entry["history"], entry["id"]


def start_new(saved: list[dict[str, Any]] | None) -> tuple[list, None, Any]:
    return [], None, gr.Radio(choices=_choices(saved or []), value=None)
