"""The chat history comes from the browser (or any client of the UI's API) on every turn, so nothing in it is trusted:
the server opens only media that this browser session uploaded, and its own examples.

- `GuardedChatbot` refuses history parts of `{"type": "component"}` before Gradio builds the component, which would
  open (PIL, ffmpeg) and copy into the cache whatever path the client named. Only text and file parts remain, and
  Gradio itself accepts a file part only when its path is in its upload cache.
- `SessionMedia` remembers what each session uploaded (the files of the message box, which Gradio took as uploads) and
  refuses a history that names any other file, before anything is opened, read or copied into the conversation log.
  It also deletes the UI's own generated files (grounding previews) once they are older than the set age; Gradio's
  `delete_cache` does the same for its cache (uploads and the copies it serves).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
from cachetools import Cache, LRUCache
from gradio.components.chatbot import ComponentMessage

from app.messages import conversation_turns, message_files

STATIC = Path(__file__).resolve().parent.parent / "static"  # the UI's own examples
_MAX_SESSIONS = 10_000  # oldest sessions are forgotten first; their history then needs a new upload
_PRUNE_EVERY_S = 60.0


class GuardedChatbot(gr.Chatbot):
    """A Chatbot whose incoming value may hold text and file parts only."""

    @classmethod
    def get_block_name(cls) -> str:
        return "chatbot"  # the same front-end component

    def _preprocess_content(self, chat_message: Any):
        if isinstance(chat_message, ComponentMessage):
            raise gr.Error("The chat history holds a part of type 'component'; this chat accepts only text and the "
                           "files you upload. Nothing was opened.", duration=10)
        return super()._preprocess_content(chat_message)


class SessionMedia:
    def __init__(self, generated: Path, max_age_s: float, examples: Path = STATIC):
        self.examples = examples.resolve()
        self.generated = generated
        self.max_age_s = max_age_s
        # session -> its uploads; the least recently active session is forgotten first (cachetools evicts)
        self._sessions: LRUCache[str, set[str]] = LRUCache(_MAX_SESSIONS)
        self._lock = threading.Lock()
        self._pruned_at = 0.0

    def received(self, request: gr.Request | None, paths: list[str]) -> None:
        """Remember the files of a submitted message box: Gradio accepted them as this session's uploads."""
        with self._lock:
            known = self._sessions.setdefault(_session(request), set())
            known.update(str(Path(p).resolve()) for p in paths if p)

    def held_bytes(self, request: gr.Request | None, adding: list[str] = ()) -> int:
        """Bytes of this session's uploads, with `adding` counted once."""
        with self._lock:
            paths = set(self._sessions.get(_session(request), ())) | {str(Path(p).resolve()) for p in adding if p}
        return sum(_size(p) for p in paths)

    def forget(self, request: gr.Request | None) -> list[Path]:
        """The session ended: forget it; -> its uploads that no other session holds (the same file uploaded twice
        is one file in Gradio's cache)."""
        with self._lock:
            mine = self._sessions.pop(_session(request), set())
            others = self._held()
        return [Path(p) for p in mine - others]

    def unclaimed(self, paths: list[str]) -> list[Path]:
        """Those of `paths` that no session holds."""
        with self._lock:
            held = self._held()
        return [Path(p) for p in paths if p and str(Path(p).resolve()) not in held]

    def _held(self) -> set[str]:
        """Every session's uploads. Read through the base class: LRUCache's own read marks an entry as used, and a
        look at all sessions must not change which is forgotten first. Call with the lock held."""
        return set().union(*(Cache.__getitem__(self._sessions, s) for s in self._sessions))

    def check(self, history: list[dict[str, Any]], request: gr.Request | None) -> None:
        """Refuse a history naming a file this session did not upload (notes, which are never opened, aside)."""
        self._prune_generated()
        with self._lock:
            known = set(self._sessions.get(_session(request), ()))
        for turn in conversation_turns(history):
            for path in message_files(turn):
                resolved = Path(path).resolve()
                if str(resolved) not in known and not resolved.is_relative_to(self.examples):
                    raise gr.Error(f"The chat history names the file '{Path(path).name}', which was not uploaded in "
                                   "this session; attach it again. Nothing was opened.", duration=10)

    def _prune_generated(self) -> None:
        now = time.time()
        if now - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = now
        for file in self.generated.glob("*"):
            try:
                if now - file.stat().st_mtime > self.max_age_s:
                    file.unlink()
            except OSError:
                pass


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"
