"""Event handlers of the chat, as plain (async) functions of their inputs: ui.py wires them, tests call them.

A turn is: `add_user_message` (validate, show it) -> `stream_reply` (yield the growing history) -> unlock (ui.py).
No handler raises to Gradio: a raised error would stop the event chain in the browser and leave the page locked,
so a problem is a toast (gr.Warning) or a note in the chat, and the chain always runs to its unlock step.

Stop cancels the running event. Gradio then closes this generator (or cancels it inside an `await`); both leave
the `aclosing` blocks below, which close the HTTP stream to the controller, which aborts the generation on the
worker. A turn counts as "stopped" unless its stream ended by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import tempfile
import time
import uuid
from contextlib import aclosing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from app.client import ControllerClient, StreamStats, with_place
from app.coalesce import coalesce
from app.chat_transfer import ChatTransfer
from app.conversation_log import ConversationLog
from app.encoded_files import EncodedFiles
from app.errors import describe
from app.generation import GenerationSettings
from app.grounding import draw_boxes, parse_boxes
from app.messages import (IMAGE_EXTS, NOTE_ERROR, NOTE_GROUNDING, NOTE_WAITING, VIDEO_EXTS, conversation_turns,
                          display_part, from_display, is_note, last_image, media_kind, message_files, message_text,
                          to_openai_messages)
from app.history_guard import SessionMedia
from app.limits import ServedLimits, check_conversation, per_file_bytes, reader_places
from app.memory import LARGE_BYTES, MemoryReleaser
from app.settings import UISettings
from app.texts import EN, language, ordinal, tr
from app.thinking import ThinkingDisplay, mark_stopped
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
        self.limits = ServedLimits(client)
        self.memory = MemoryReleaser()
        self.transfer = ChatTransfer(self.work_dir, self.media, self.max_bytes)
        self.place_poll_s = 1.0  # how often a waiting turn asks the controller for its place in line

    def end_session(self, request: gr.Request | None = None) -> None:
        """The page was closed: its uploads go now, not after --media-max-age-s."""
        remove_files(self.media.forget(request))

    # ------------------------------------------------------------------------------------------ turn steps

    def add_user_message(self, history: History | None, box: dict[str, Any] | None,
                         request: gr.Request | None = None) -> tuple[History, Any] | None:
        """Append the user's message (one message: files, then text) and clear the input box; None (after a
        toast) when there is nothing to send or a file is not an image or video."""
        lang = language(request)
        box = box or {}
        text = (box.get("text") or "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in box.get("files") or []]
        files = [f for f in files if f]
        if not text and not files:
            gr.Warning(tr("empty_message", lang), duration=5)
            return None
        for path in files:
            try:
                media_kind(path)
            except ServingError:
                gr.Warning(tr("bad_file", lang, name=Path(path).name, images=", ".join(sorted(IMAGE_EXTS)),
                              videos=", ".join(sorted(VIDEO_EXTS))), duration=8)
                return None
        held = self.media.held_bytes(request, files)
        if held > self.settings.session_upload_mb * 2**20:
            remove_files(self.media.unclaimed(files))  # refused: they are nobody's
            gr.Warning(tr("session_quota", lang, total=f"{held / 2**20:.0f}", limit=self.settings.session_upload_mb),
                       duration=10)
            return None
        self.media.received(request, files)  # Gradio took them as this session's uploads
        # mime_type makes the Chatbot show an image or a video player instead of a download link
        content: list[dict[str, Any]] = [{"type": "file", "file": {"path": p, "mime_type": mimetypes.guess_type(p)[0]}}
                                         for p in files]
        if text:
            content.append(display_part(text))
        history = list(history or []) + [{"role": "user", "content": content}]
        return history, {"text": "", "files": []}

    async def stream_reply(self, history: History, settings: GenerationSettings, request: gr.Request | None = None):
        """Stream the answer to the last user message, yielding the whole history each time it grows. With
        `settings.thinking`, the model's reasoning streams into a folded Thinking message above the answer
        (app/thinking.py)."""
        lang = language(request)
        model, system_prompt = settings.model, settings.system_prompt
        history = list(history or [])
        try:
            self.media.check(history, request)  # before any file in it is opened
        except gr.Error as err:  # a note, not a raised error: that would leave the page locked
            yield self._error_note(history, str(err.message), lang)
            return
        if not model:  # none served, or the controller is gone: say which
            try:
                await self.client.models()
                text = tr("no_model", lang)
            except ServingError as err:
                text = describe(err, lang)
            yield self._error_note(history, text, lang)
            return
        params = settings.request_fields()
        try:
            limits = await self.limits.get(model)
            items = await asyncio.to_thread(check_conversation, history, limits, self.max_bytes, lang)
            messages = await asyncio.to_thread(to_openai_messages, history, system_prompt or "", params["num_frames"],
                                               per_file_bytes(limits, self.max_bytes), self.encoded.get)
        except ServingError as err:
            self._release_if_large(history)
            yield self._error_note(history, describe(err, lang), lang, toast=err.message)
            return
        places = reader_places(items, _user_indices(messages), lang)
        sent = list(history)
        turn = sum(1 for m in history if m["role"] == "assistant" and not is_note(m)) + 1
        stats, answer, outcome, refusal = StreamStats(), "", "stopped", ""
        thought = ThinkingDisplay(lang)
        try:
            request_id = uuid.uuid4().hex
            stream = self.client.stream_chat({"model": model, "messages": messages, **params}, stats,
                                             session_id=chat_id(request, history), request_id=request_id)
            async with (aclosing(stream), aclosing(coalesce(stream)) as deltas,
                        aclosing(with_place(self.client, deltas, request_id, self.place_poll_s)) as shown):  # closed in reverse order
                async for delta in shown:
                    if isinstance(delta, tuple):  # still waiting for a worker: where in line
                        text = tr("waiting_in_line", lang, nth=ordinal(delta[0]), n=delta[0])
                        yield history + [self._note(text, NOTE_WAITING, tr("waiting_title", lang))]
                        continue
                    if stats.first_token_s is None:
                        stats.first_token_s = round(time.monotonic() - stats.started, 4)
                    answer += delta
                    history = _answered(sent, thought.message(stats.reasoning, bool(answer)), answer)
                    yield list(history)
            outcome = "ok"
        except ServingError as err:
            # a request refused (4xx) is logged as what was refused; a failure (5xx) keeps its conversation
            outcome, refusal = err.code.value, err.message if err.status < 500 else ""
            text = describe(_in_readers_words(err, places), lang)
            if stats.reasoning:
                history = _answered(sent, thought.final(stats.reasoning, outcome, None), answer, keep_empty=False)
            history.append(self._note(text, lang=lang))
            gr.Warning(text.split("\n\n")[0], duration=10)
            yield history
        finally:
            stats.total_s = round(time.monotonic() - stats.started, 4)
            await self._log_turn(request, turn, model, params, sent, system_prompt, answer, outcome, stats, lang,
                                 refusal)
            self._release_if_large(sent)
        if outcome == "ok" and stats.reasoning:  # the thought's final title and duration
            history = _answered(sent, thought.final(stats.reasoning, outcome, stats.finish_reason), answer,
                                keep_empty=False)
            yield list(history)
        if answer:
            preview = await asyncio.to_thread(self._grounding_preview, history, answer, lang)
            if preview is not None:
                history.append(preview)
                yield history

    async def chat(self, box: dict[str, Any] | None, history: History | None, model: str | None, system_prompt: str,
                   temperature: float, top_p: float, max_new_tokens: float, repetition_penalty: float,
                   max_tiles: float, num_frames: float, thinking: bool = False, request: gr.Request = None):
        """One whole turn (the `/chat` API): show the user's message, clear the box, stream the answer."""
        added = self.add_user_message(history, box, request)
        if added is None:  # nothing to send: the conversation stays as it is (the toast says why)
            yield list(history or []), gr.skip()
            return
        history, box_update = added
        yield history, box_update
        settings = GenerationSettings(model, system_prompt, temperature, top_p, max_new_tokens, repetition_penalty,
                                      max_tiles, num_frames, thinking)
        async for h in self.stream_reply(history, settings, request):
            yield h, gr.skip()

    async def regenerate_chat(self, history: History | None, model: str | None, system_prompt: str,
                              temperature: float, top_p: float, max_new_tokens: float, repetition_penalty: float,
                              max_tiles: float, num_frames: float, thinking: bool = False,
                              request: gr.Request = None):
        """Answer the last user message again (the `/regenerate` API)."""
        history = _drop_trailing_assistant(list(history or []))
        if not history:
            gr.Warning(tr("nothing_to_regenerate", language(request)), duration=5)
            yield history
            return
        yield history
        settings = GenerationSettings(model, system_prompt, temperature, top_p, max_new_tokens, repetition_penalty,
                                      max_tiles, num_frames, thinking)
        async for h in self.stream_reply(history, settings, request):
            yield h

    def apply_edit(self, history: History | None, edit: gr.EditData, request: gr.Request = None) -> History:
        """An earlier user message was edited: keep the conversation before it and the edited message (its files
        stay); the next step answers it again."""
        history = list(history or [])
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        if not 0 <= index < len(history) or history[index]["role"] != "user":
            return history
        text = edit.value if isinstance(edit.value, str) else message_text({"content": edit.value})
        files = [{"type": "file", "file": {"path": p, "mime_type": mimetypes.guess_type(p)[0]}}
                 for p in message_files(history[index])]
        content = files + ([display_part(from_display(text).strip())] if text.strip() else [])
        if not content:
            gr.Warning(tr("empty_message", language(request)), duration=5)
            return history
        return history[:index] + [{"role": "user", "content": content}]

    # ------------------------------------------------------------------------------------------ buttons

    def undo(self, history: History | None, request: gr.Request = None) -> tuple[Any, Any]:
        """Remove the last turn and put the user's text and files back into the input box."""
        history = _drop_trailing_assistant(list(history or []))
        if not history:
            gr.Warning(tr("nothing_to_undo", language(request)), duration=4)
            return [], gr.skip()
        last = history.pop()
        return history, {"text": from_display(message_text(last)), "files": message_files(last)}

    def export_chat(self, history: History | None, request: gr.Request = None) -> list[str] | None:
        return self.transfer.export_chat(history, request)

    def import_chat(self, file: Any, request: gr.Request = None) -> tuple[Any, Any]:
        return self.transfer.import_chat(file, request)

    @staticmethod
    def stopped(history: History | None, request: gr.Request = None) -> History:
        """After Stop: a thought cut off mid-stream says so (its stream can no longer update it)."""
        return mark_stopped(history, language(request))

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
    def _note(text: str, kind: str = NOTE_ERROR, title: str | None = None, lang: str = EN) -> dict[str, Any]:
        return {"role": "assistant", "content": text,
                "metadata": {"title": title or tr("could_not_answer", lang), "id": kind}}

    def _error_note(self, history: History, text: str, lang: str = EN, toast: str | None = None) -> History:
        gr.Warning(toast or text.split("\n\n")[0], duration=10)
        return history + [self._note(text, lang=lang)]

    def _grounding_preview(self, history: History, answer: str, lang: str = EN) -> dict[str, Any] | None:
        boxes = parse_boxes(answer)
        image = last_image(history) if boxes else None
        if image is None:
            return None
        out = draw_boxes(image, boxes, self.work_dir / f"grounding-{uuid.uuid4().hex[:12]}.png")
        labels = ", ".join(dict.fromkeys(b.label for b in boxes if b.label)) or tr("n_boxes", lang, n=len(boxes))
        return {"role": "assistant", "content": [{"type": "file", "file": {"path": str(out), "mime_type": "image/png"}}],
                "metadata": {"title": tr("boxes", lang, labels=labels), "id": NOTE_GROUNDING}}

    async def _log_turn(self, request, turn, model, params, history, system_prompt, answer, outcome,
                        stats: StreamStats, lang: str = EN, refusal: str = "") -> None:
        if not self.log.enabled:
            return
        stats_fields = {k: v for k, v in asdict(stats).items() if k not in ("started", "reasoning")}
        try:
            if refusal:  # what was refused, not the conversation (and none of its files are stored for it)
                texts = [from_display(message_text(m)) for m in conversation_turns(history)]
                users = [m for m in conversation_turns(history) if m["role"] == "user"]
                newest = from_display(message_text(users[-1])) if users else ""
                await asyncio.to_thread(self.log.log_refused, session=_session(request), turn=turn, model=model,
                                        params=params, reason=outcome, message=refusal,
                                        text_chars=sum(map(len, texts)) + len(system_prompt or ""),
                                        files=sum(len(message_files(m)) for m in users), excerpt=newest,
                                        stats=stats_fields)
                return
            logged = await asyncio.to_thread(self._loggable, history, system_prompt)
            await asyncio.to_thread(self.log.log_turn, session=_session(request), turn=turn, model=model,
                                    params=params, messages=logged, answer=answer, outcome=outcome,
                                    stats=stats_fields, reasoning=stats.reasoning or None)
        except OSError as exc:  # a full disk must not break the chat
            gr.Warning(tr("log_failed", lang, error=exc))

    def _release_if_large(self, history: History) -> None:
        """After a large message, give its copies' memory back once they are gone (app/memory.py)."""
        if sum(len(message_text(m)) for m in history) > LARGE_BYTES:
            self.memory.large_message_done()

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
            if turn.get("reasoning"):
                out[-1]["reasoning"] = from_display(turn["reasoning"])
        return out


def _answered(before: History, thought: dict[str, Any] | None, answer: str, keep_empty: bool = True) -> History:
    """The history with the answer so far: its Thinking message (if any), then the answer (an empty answer shows as
    an empty bubble until the first words, unless there is a thought to show instead)."""
    out = list(before) + ([thought] if thought else [])
    if answer or (thought is None and keep_empty):
        out.append({"role": "assistant", "content": display_part(answer)})
    return out


def _user_indices(messages: list[dict[str, Any]]) -> dict[int, int]:
    """Reader's message number (1, 2, ...) -> index of that user message in the OpenAI request."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return {n: i for n, i in enumerate(users, start=1)}


def _in_readers_words(err: ServingError, places: dict[str, str]) -> ServingError:
    """An error about one file or message says where in the request (`param`); put the reader's words for that
    place first (the server's message, meant for API users, is kept as it is: never read or rewritten here)."""
    words = places.get(err.param or "")
    return ServingError(err.code, f"{words}: {err.message}", param=err.param) if words else err


def remove_files(paths: list[Path]) -> None:
    """Delete uploads, and the folder Gradio made for each (one per upload) once it is empty. Only what is in
    Gradio's upload folder: never the UI's examples, or anything else a history named."""
    uploads = Path(get_upload_folder()).resolve()
    for path in (p.resolve() for p in paths):
        if not path.is_relative_to(uploads):
            continue
        try:
            path.unlink(missing_ok=True)
            if path.parent != uploads:
                path.parent.rmdir()
        except OSError:
            pass  # the folder holds another file, or is gone


def _drop_trailing_assistant(history: History) -> History:
    while history and history[-1]["role"] == "assistant":
        history.pop()
    return history


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def chat_id(request: gr.Request | None, history: History) -> str:
    """One id per chat, the same for each of its turns: the browser session and the chat's first message. The
    controller keeps a chat's turns on the worker that has its files decoded and cached (X-Session-Id)."""
    first = next((m for m in history if m["role"] == "user"), None)
    seed = json.dumps([_session(request), first], sort_keys=True, default=str).encode()
    return hashlib.blake2b(seed, digest_size=12).hexdigest()
