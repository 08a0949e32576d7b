"""Past chats, kept in the reader's browser (gr.BrowserState: localStorage, encrypted with the server's secret).

Each entry is {"id", "title", "history"}; the newest first, at most MAX_CHATS. Media stay on this server (the
history holds their paths), so a chat reopened after the server restarted shows its text but not its files.
"""

from __future__ import annotations

import uuid
from typing import Any

import gradio as gr

from app.messages import from_display, message_files, message_text

MAX_CHATS = 30
TITLE_CHARS = 40


def _title(history: list[dict[str, Any]]) -> str:
    first = next((m for m in history if m.get("role") == "user"), None)
    if first is None:
        return "…"
    text = " ".join(from_display(message_text(first)).split())
    if not text:
        text = ", ".join(p.rsplit("/", 1)[-1] for p in message_files(first)) or "…"
    return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1] + "…"


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
    saved = [entry] + [c for c in saved if c["id"] != chat_id]
    saved = saved[:MAX_CHATS]
    return saved, chat_id, gr.Radio(choices=_choices(saved), value=chat_id)


def open_chat(chosen: str | None, saved: list[dict[str, Any]] | None) -> tuple[Any, Any]:
    entry = next((c for c in saved or [] if c.get("id") == chosen), None)
    if entry is None:
        return gr.skip(), gr.skip()
    return entry["history"], entry["id"]


def start_new(saved: list[dict[str, Any]] | None) -> tuple[list, None, Any]:
    return [], None, gr.Radio(choices=_choices(saved or []), value=None)
