"""A conversation to files and back: Markdown to read and JSON to import (app/chat_export.py converts; this writes
the downloads and takes an imported chat's files in as the session's own uploads, so the chat can go on)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from app import chat_export, past_chats
from app.history_guard import SessionMedia
from app.texts import language, tr
from common.errors import ServingError

History = list[dict[str, Any]]


class ChatTransfer:
    def __init__(self, work_dir: Path, media: SessionMedia, max_bytes: int):
        self.work_dir, self.media, self.max_bytes = work_dir, media, max_bytes

    def export_chat(self, history: History | None, request: gr.Request = None) -> list[str] | None:
        """The conversation as Markdown (to read) and JSON (to import back): two files to download."""
        if not history:
            gr.Warning(tr("nothing_to_export", language(request)), duration=4)
            return None
        title = past_chats.title_of(history)
        self.work_dir.mkdir(parents=True, exist_ok=True)  # its files are deleted by age (SessionMedia)
        name = "".join(c if c.isalnum() else "-" for c in title).strip("-")[:40] or "chat"
        stem = f"{name}-{uuid.uuid4().hex[:6]}"
        md, js = self.work_dir / f"{stem}.md", self.work_dir / f"{stem}.json"
        md.write_text(chat_export.to_markdown(history, title), encoding="utf-8")
        js.write_text(chat_export.to_json(history, title), encoding="utf-8")
        return [str(md), str(js)]

    def import_chat(self, file: Any, request: gr.Request = None) -> tuple[Any, Any]:
        """A conversation exported as JSON becomes the current chat (a new entry in the list); its files become
        this session's uploads."""
        path = file if isinstance(file, str) else getattr(file, "name", None) or (file or {}).get("path")
        try:
            text = Path(path).read_text(encoding="utf-8")
            history = chat_export.from_json(text, lambda name, data: self._imported_file(name, data, request),
                                            self.max_bytes)
        except (OSError, UnicodeDecodeError, TypeError, ServingError) as exc:
            gr.Warning(getattr(exc, "message", None) or f"This file cannot be imported: {exc}", duration=10)
            return gr.skip(), gr.skip()
        return history, None

    def _imported_file(self, name: str, data: bytes, request: gr.Request | None) -> str:
        from gradio.processing_utils import save_file_to_cache
        from gradio.utils import get_upload_folder

        self.work_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="import-", dir=self.work_dir)) / name
        staging.write_bytes(data)
        try:
            cached = save_file_to_cache(staging, get_upload_folder())  # where the Chatbot takes files from
        finally:
            staging.unlink(missing_ok=True)
            staging.parent.rmdir()
        self.media.received(request, [cached])
        return cached
