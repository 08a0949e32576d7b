"""The worker's request slot (workers/slots.py) is owned by the chat response (workers/chat_response.py): taken when
the response starts, released exactly once when it ends, on every path: a whole answer, a stream, an engine error
before and after the first token, a client that leaves before the first token or mid-stream.

A real worker app on a loopback port (uvicorn, in this process, so the slots can be counted) over the scripted
engine: what is under test sits above the engine.
"""

from __future__ import annotations

import asyncio
import collections
import json

import httpx
import pytest
import uvicorn

from launcher.compose import free_port
from tests.support.chat_http import body
from tests.support.raw_http import LeavingClient
from tests.support.scripted_engine import ScriptedEngine
from workers.app import create_app
from workers.model_spec import detect_model_spec
from workers.settings import WorkerSettings
from workers.slots import RequestSlot

CHAT = "/v1/chat/completions"


@pytest.fixture
async def worker(demo_checkpoint, monkeypatch):
    """-> (base URL, the app's ChatService, the engine, the ids of released slots in release order)."""
    released: list[str] = []
    release = RequestSlot._release

    async def counted(slot: RequestSlot) -> None:
        released.append(slot.id)
        await release(slot)

    monkeypatch.setattr(RequestSlot, "_release", counted)
    port = free_port()
    settings = WorkerSettings(model_path=str(demo_checkpoint), port=port, controller_url="", body_parsers=0,
                              model_name="demo", worker_id="w1")
    engine = ScriptedEngine(settings, detect_model_spec(demo_checkpoint))
    engine.tokens, engine.rate = 100_000, 200  # long answers unless the request's max_tokens is small
    app = create_app(settings, engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, 30, "the worker serves")
    try:
        yield f"http://127.0.0.1:{port}", app.state.service, engine, released
    finally:
        server.should_exit = True
        await task


async def until(condition, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


def chat(text: str, stream: bool, max_tokens: int = 5) -> dict:
    return body("demo", text, max_tokens, stream)


async def released_once(service, engine, released: list[str], requests: int) -> None:
    """Every request's slot went, each exactly once, and the engine stopped its work."""
    await until(lambda: len(service.slots) == 0 and engine.running == 0, 2, "the slots are back and the engine idle")
    assert len(released) == requests
    assert set(collections.Counter(released).values()) == {1}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_answer_releases_its_slot_once(worker, stream):
    url, service, engine, released = worker
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(3):
            r = await client.post(CHAT, json=chat("hello", stream))
            assert r.status_code == 200
            assert r.text.rstrip().endswith("data: [DONE]") if stream else r.json()["choices"][0]["finish_reason"]
    await released_once(service, engine, released, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_engine_error_before_the_first_token_releases_its_slot_once(worker, stream):
    url, service, engine, released = worker
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post(CHAT, json=chat("scripted:fail=w1", stream))
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    await released_once(service, engine, released, 1)


async def test_an_engine_error_after_the_first_token_releases_its_slot_once(worker):
    url, service, engine, released = worker
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post(CHAT, json=chat("scripted:break=w1", True))
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "engine_error" and events[-1] == "[DONE]"
    await released_once(service, engine, released, 1)


async def test_an_engine_error_after_the_first_token_of_a_whole_answer_releases_its_slot_once(worker):
    url, service, engine, released = worker
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post(CHAT, json=chat("scripted:break=w1", False))
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    await released_once(service, engine, released, 1)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_client_leaving_before_the_first_token_releases_its_slot_once(worker, stream):
    url, service, engine, released = worker
    client = LeavingClient(url, CHAT, chat("scripted:hang=w1", stream))
    try:
        await until(lambda: engine.running == 1 and service.slots.stages() == {"engine": 1}, 10, "the engine works")
    finally:
        client.close()
    await released_once(service, engine, released, 1)


async def test_a_client_leaving_mid_stream_releases_its_slot_once(worker):
    url, service, engine, released = worker
    client = LeavingClient(url, CHAT, chat("a long story", True, max_tokens=1000))  # 5 s at 200 tokens/s
    try:
        assert b"200 OK" in await asyncio.to_thread(client.read_some)
        await until(lambda: service.slots.stages() == {"streaming": 1}, 10, "the answer streams")
    finally:
        client.close()
    await released_once(service, engine, released, 1)
