"""Conversation log: one JSON line per chat turn (and per vote), media stored once under its content hash.

Layout under log_dir: `YYYY-MM-DD.jsonl` plus `media/<sha256><ext>`. Turned off with --no-logging, in which case
nothing is written at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
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
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            shutil.copyfile(src, tmp)
            tmp.replace(target)
        return name

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = dt.datetime.now(dt.timezone.utc)
        line = json.dumps({"time": now.isoformat(timespec="milliseconds"), **record}, ensure_ascii=False)
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"{now:%Y-%m-%d}.jsonl", "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def log_turn(self, *, session: str, turn: int, model: str, params: dict[str, Any], messages: list[dict],
                 answer: str, outcome: str, stats: dict[str, Any]) -> None:
        """`messages`: the conversation as sent, media replaced by their stored names (the log stays small)."""
        self.write({"type": "turn", "session": session, "turn": turn, "model": model, "params": params,
                    "messages": messages, "answer": answer, "outcome": outcome, **stats})

    def log_vote(self, *, session: str, turn: int, vote: str | None, answer: str) -> None:
        self.write({"type": "vote", "session": session, "turn": turn, "vote": vote, "answer": answer})
