"""Conversation log: one JSON line per chat turn (and per vote), media stored once under its content hash.

Layout under log_dir: `YYYY-MM-DD.jsonl` plus `media/<sha256><ext>`. Turned off with --no-logging, in which case
nothing is written at all. Conversations are private: files are created 0600 in 0700 folders, whatever the umask.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any


class ConversationLog:
    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.dir = Path(log_dir)
        self.enabled = enabled
        self._lock = threading.Lock()

    def store_media(self, path: str | Path) -> str:
        """Copy an upload into media/ once; returns its name there (the content hash plus the extension)."""
        src = Path(path)
        digest = hashlib.sha256()
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        name = digest.hexdigest() + src.suffix.lower()
        target = self.dir / "media" / name
        if not target.exists():
            _private_dir(target.parent)
            tmp = target.with_suffix(target.suffix + ".part")
            with open(src, "rb") as f, _private_file(tmp, "wb") as out:
                shutil.copyfileobj(f, out)
            tmp.replace(target)
        return name

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = dt.datetime.now(dt.timezone.utc)
        line = json.dumps({"time": now.isoformat(timespec="milliseconds"), **record}, ensure_ascii=False)
        with self._lock:
            _private_dir(self.dir)
            with _private_file(self.dir / f"{now:%Y-%m-%d}.jsonl", "a") as f:
                f.write(line + "\n")

    def log_turn(self, *, session: str, turn: int, model: str, params: dict[str, Any], messages: list[dict],
                 answer: str, outcome: str, stats: dict[str, Any], reasoning: str | None = None) -> None:
        """`messages`: the conversation as sent, media replaced by their stored names (the log stays small).
        `reasoning`: a thinking model's reasoning, kept apart from its answer (earlier turns' in `messages`)."""
        self.write({"type": "turn", "session": session, "turn": turn, "model": model, "params": params,
                    "messages": messages, **({"reasoning": reasoning} if reasoning else {}), "answer": answer,
                    "outcome": outcome, **stats})

    def log_refused(self, *, session: str, turn: int, model: str, params: dict[str, Any], reason: str,
                    message: str, text_chars: int, files: int, excerpt: str, stats: dict[str, Any]) -> None:
        """A turn the server refused: what was refused (its size, the reason, the start of the newest message), never
        the conversation itself. A refused message is often one too large for anything (a 10 MB paste), and each
        retry would be written again in full."""
        self.write({"type": "turn", "session": session, "turn": turn, "model": model, "params": params,
                    "outcome": reason, "refused": {"message": message[:_SHOWN], "text_chars": text_chars,
                                                   "files": files, "excerpt": excerpt[:_SHOWN]}, **stats})

    def log_vote(self, *, session: str, turn: int, vote: str | None, answer: str) -> None:
        self.write({"type": "vote", "session": session, "turn": turn, "vote": vote, "answer": answer})


_SHOWN = 300  # characters of a refused message (and of the reason) that the log keeps


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:  # made earlier, or by someone else's umask: close it
        path.chmod(0o700)


def _private_file(path: Path, mode: str):
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through os.open
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
