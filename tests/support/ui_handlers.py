"""The web UI's handlers with a scripted stream source in place of the controller (tests of the layer above it):
the source, a handlers factory, and the readers of what a turn logged. Used by the handler tests in tests/app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from PIL import Image

from app.conversation_log import ConversationLog
from app.generation import GenerationSettings
from app.handlers import ChatHandlers
from app.settings import UISettings
from common.errors import ServingError

PARAMS = ("internvl-demo", "Be brief.", 0.5, 0.9, 64, 1.1, 4, 6)  # as the page passes them (chat, regenerate_chat)
SETTINGS = GenerationSettings(*PARAMS)


class ScriptedStream:
    """Stands in for ControllerClient.stream_chat: yields the scripted deltas, then raises `error` if set."""

    def __init__(self, deltas=(), error: ServingError | None = None, block_after: int | None = None):
        self.deltas, self.error, self.block_after = list(deltas), error, block_after
        self.payloads: list[dict] = []
        self.session_ids: list[str | None] = []
        self.request_ids: list[str | None] = []
        self.wait_s, self.places, self.asked_places = 0.0, [], []
        self.closed = asyncio.Event()

    async def models(self):  # no limits advertised: the UI's own upload ceiling applies
        return []

    async def queue_place(self, request_id):
        self.asked_places.append(request_id)
        return self.places.pop(0) if self.places else None

    async def stream_chat(self, payload, stats, session_id=None, request_id=None):
        self.payloads.append(payload)
        self.session_ids.append(session_id)
        self.request_ids.append(request_id)
        if self.wait_s:
            await asyncio.sleep(self.wait_s)  # waiting in the controller's line
        stats.worker = "worker-test"
        try:
            for i, d in enumerate(self.deltas):
                if i == self.block_after:
                    await asyncio.sleep(3600)
                yield d
            if self.error:
                raise self.error
        finally:
            self.closed.set()


def make(tmp_path: Path, source, logging=True) -> ChatHandlers:
    settings = UISettings(log_dir=tmp_path / "logs", logging=logging, max_upload_mb=1)
    return ChatHandlers(settings, source, ConversationLog(settings.log_dir, logging), work_dir=tmp_path / "work")


def image_file(tmp_path: Path, name="cat.png", color=(200, 30, 30), size=(100, 50)) -> str:
    path = tmp_path / name
    Image.new("RGB", size, color).save(path)
    return str(path)


async def run(gen):
    return [h async for h in gen]


def log_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp_path / "logs").glob("*.jsonl")) for line in f.read_text().splitlines()]
