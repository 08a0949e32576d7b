"""Event handlers of the chat, as plain (async) functions of their inputs: ui.py wires them, tests call them.

A turn is: `add_user_message` (validate, lock inputs) -> `stream_reply` (yield the growing history) -> unlock.
Stop cancels the `stream_reply` task; cancellation leaves its `async for` inside the client's `async with`, which
closes the HTTP stream, which the controller relays to the worker as an abort.
"""

from __future__ import annotations

import asyncio
import mimetypes
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr

from app.client import ControllerClient, StreamStats
from app.conversation_log import ConversationLog
from app.encoded_files import EncodedFiles
from app.errors import describe
from app.grounding import draw_boxes, parse_boxes
from app.history_guard import SessionMedia
from app.limits import check_conversation, limits_for
from app.messages import (NOTE_ERROR, NOTE_GROUNDING, conversation_turns, from_display, is_note, last_image,
                          media_kind, message_files, message_text, to_display, to_openai_messages)
from app.settings import UISettings
from common.errors import ServingError

History = list[dict[str, Any]]


class ChatHandlers:
    def __init__(self, settings: UISettings, client: ControllerClient, log: ConversationLog,
                 work_dir: str | Path | None = None):
        self.settings = settings
        self.client = client
        self.log = log
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="internvl-ui-"))
        self.max_bytes = settings.max_upload_mb * 2**20
        self.media = SessionMedia(self.work_dir, settings.media_max_age_s)
        self.encoded = EncodedFiles(settings.encoded_cache_mb * 2**20)

    # ------------------------------------------------------------------------------------------ turn steps

    def add_user_message(self, history: History | None, box: dict[str, Any] | None,
                         request: gr.Request | None = None) -> tuple[History, Any]:
        """Append the user's message (files first, then text) and clear/lock the input box."""
        box = box or {}
        text = (box.get("text") or "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in box.get("files") or []]
        if not text and not files:
            raise gr.Error("Type a message or attach an image or video first.", duration=5)
        for path in files:
            try:
                media_kind(path)
            except ServingError as err:
                raise gr.Error(err.message, duration=8) from None
        self.media.received(request, files)  # Gradio took them as this session's uploads
        # mime_type makes the Chatbot show an image or a video player instead of a download link
        content: list[dict[str, Any]] = [{"type": "file", "file": {"path": p, "mime_type": mimetypes.guess_type(p)[0]}}
                                         for p in files]
        if text:
            content.append({"type": "text", "text": to_display(text)})
        history = list(history or []) + [{"role": "user", "content": content}]
        return history, gr.MultimodalTextbox(value=None, interactive=False)

    async def stream_reply(self, history: History, model: str | None, system_prompt: str, temperature: float,
                           top_p: float, max_new_tokens: float, repetition_penalty: float, max_tiles: float,
                           num_frames: float, request: gr.Request | None = None):
        """Stream the answer to the last user message, yielding the whole history each time it grows."""
        history = list(history or [])
        self.media.check(history, request)  # before any file in it is opened
        if not model:
            yield self._error_note(history, "No model is selected. Start a worker (`python -m workers "
                                   "--model-path PATH`), then press ↻ next to the model list.")
            return
        params = {"temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_new_tokens),
                  "repetition_penalty": float(repetition_penalty), "max_tiles": int(max_tiles),
                  "num_frames": int(num_frames)}
        try:
            limits = await limits_for(self.client, model, self.max_bytes)
            messages = await asyncio.to_thread(to_openai_messages, history, system_prompt or "", int(num_frames),
                                               limits.max_file_bytes, self.encoded.get)
            check_conversation(messages, limits)
        except ServingError as err:
            yield self._error_note(history, describe(err))
            return
        sent = list(history)
        history.append({"role": "assistant", "content": ""})
        turn = sum(1 for m in history if m["role"] == "assistant" and not is_note(m))
        stats, answer, outcome = StreamStats(), "", "ok"
        try:
            async for delta in self.client.stream_chat({"model": model, "messages": messages, **params}, stats):
                if stats.first_token_s is None:
                    stats.first_token_s = round(time.monotonic() - stats.started, 4)
                answer += delta
                history[-1] = {"role": "assistant", "content": to_display(answer)}
                yield list(history)
        except ServingError as err:
            outcome = err.code.value
            if answer:  # keep what was streamed; say why it ended
                yield history
                history.append(self._note(describe(err)))
            else:
                history[-1] = self._note(describe(err))
            gr.Warning(err.message, duration=10)
            yield history
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        finally:
            stats.total_s = round(time.monotonic() - stats.started, 4)
            await self._log_turn(request, turn, model, params, sent, system_prompt, answer, outcome, stats)
        if answer:
            preview = await asyncio.to_thread(self._grounding_preview, history, answer)
            if preview is not None:
                history.append(preview)
            yield history

    async def chat(self, box: dict[str, Any] | None, history: History | None, model: str | None, system_prompt: str,
                   temperature: float, top_p: float, max_new_tokens: float, repetition_penalty: float,
                   max_tiles: float, num_frames: float, request: gr.Request = None):
        """One whole turn (the `/chat` API): show the user's message, lock the box, stream the answer."""
        history, box_update = self.add_user_message(history, box, request)
        yield history, box_update
        async for h in self.stream_reply(history, model, system_prompt, temperature, top_p, max_new_tokens,
                                         repetition_penalty, max_tiles, num_frames, request):
            yield h, gr.skip()

    async def regenerate_chat(self, history: History | None, model: str | None, system_prompt: str,
                              temperature: float, top_p: float, max_new_tokens: float, repetition_penalty: float,
                              max_tiles: float, num_frames: float, request: gr.Request = None):
        """Answer the last user message again (the `/regenerate` API)."""
        history = self.regenerate(history)
        yield history
        async for h in self.stream_reply(history, model, system_prompt, temperature, top_p, max_new_tokens,
                                         repetition_penalty, max_tiles, num_frames, request):
            yield h

    # ------------------------------------------------------------------------------------------ buttons

    def regenerate(self, history: History | None) -> History:
        history = _drop_trailing_assistant(list(history or []))
        if not history:
            raise gr.Error("There is no message to answer again.", duration=5)
        return history

    def undo(self, history: History | None) -> tuple[History, dict[str, Any]]:
        """Remove the last turn and put the user's text and files back into the input box."""
        history = _drop_trailing_assistant(list(history or []))
        if not history:
            return [], {"text": "", "files": []}
        last = history.pop()
        return history, {"text": from_display(message_text(last)), "files": message_files(last)}

    @staticmethod
    def clear() -> tuple[History, dict[str, Any]]:
        return [], {"text": "", "files": []}

    def vote(self, history: History | None, data: gr.LikeData, request: gr.Request | None = None) -> None:
        history = history or []
        index = data.index if isinstance(data.index, int) else data.index[0]
        turn = sum(1 for m in history[:index + 1] if m["role"] == "assistant" and not is_note(m))
        vote = {True: "like", False: "dislike"}.get(data.liked, data.liked if isinstance(data.liked, str) else None)
        answer = message_text(history[index]) if 0 <= index < len(history) else ""
        self.log.log_vote(session=_session(request), turn=turn, vote=vote, answer=answer)

    # ------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _note(text: str, kind: str = NOTE_ERROR, title: str = "⚠ Could not answer") -> dict[str, Any]:
        return {"role": "assistant", "content": text, "metadata": {"title": title, "id": kind}}

    def _error_note(self, history: History, text: str) -> History:
        gr.Warning(text, duration=10)
        return history + [self._note(text)]

    def _grounding_preview(self, history: History, answer: str) -> dict[str, Any] | None:
        boxes = parse_boxes(answer)
        image = last_image(history) if boxes else None
        if image is None:
            return None
        out = draw_boxes(image, boxes, self.work_dir / f"grounding-{uuid.uuid4().hex[:12]}.png")
        labels = ", ".join(dict.fromkeys(b.label for b in boxes if b.label)) or f"{len(boxes)} boxes"
        return {"role": "assistant", "content": [{"type": "file", "file": {"path": str(out), "mime_type": "image/png"}}],
                "metadata": {"title": f"Boxes: {labels}", "id": NOTE_GROUNDING}}

    async def _log_turn(self, request, turn, model, params, history, system_prompt, answer, outcome,
                        stats: StreamStats) -> None:
        if not self.log.enabled:
            return
        try:
            logged = await asyncio.to_thread(self._loggable, history, system_prompt)
            self.log.log_turn(session=_session(request), turn=turn, model=model, params=params, messages=logged,
                              answer=answer, outcome=outcome,
                              stats={k: v for k, v in asdict(stats).items() if k != "started"})
        except OSError as exc:  # a full disk must not break the chat
            gr.Warning(f"could not write the conversation log: {exc}")

    def _loggable(self, history: History, system_prompt: str) -> list[dict[str, Any]]:
        """The conversation as sent, each file replaced by its name in the log's media store."""
        out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for turn in conversation_turns(history):
            parts: list[dict[str, Any]] = [{"type": media_kind(p), "media": self.log.store_media(p)}
                                           for p in message_files(turn)]
            text = from_display(message_text(turn))
            if text:
                parts.append({"type": "text", "text": text})
            out.append({"role": turn["role"], "content": parts})
        return out


def _drop_trailing_assistant(history: History) -> History:
    while history and history[-1]["role"] == "assistant":
        history.pop()
    return history


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"
