"""Stand-in workers for tests of a real controller process: small aiohttp servers in the test's own event loop that
register with the controller over HTTP, as a worker does, and answer chat requests with a scripted behaviour. Each
request they receive is recorded with the moment its connection closed, which is what a test of the controller's
cancellation needs to see (the real worker's reaction to a closed connection is tested with real workers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.stream_chunks import CHUNK, FINISH



@dataclass
class Seen:
    """One chat request a stand-in received."""

    body: bytes
    headers: dict[str, str]
    arrived: float = field(default_factory=time.monotonic)
    closed: float | None = None  # when its connection closed (the controller let go), None while open
    sent_tokens: int = 0
    gone: asyncio.Event = field(default_factory=asyncio.Event)


Behaviour = Callable[[web.Request, Seen], Awaitable[web.StreamResponse]]


def hang() -> Behaviour:
    """Never answer (a worker stuck before its first token), until the connection closes."""

    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        await seen.gone.wait()
        return web.Response(status=499)

    return answer


def tokens(n: int, gap_s: float = 0.05) -> Behaviour:
    """200, then `n` token events `gap_s` apart, the finish event and the end marker."""

    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(n):
            await response.write(f"data: {CHUNK}\r\n\r\n".encode())
            seen.sent_tokens += 1
            await asyncio.sleep(gap_s)
        await response.write(f"data: {FINISH}\r\n\r\ndata: [DONE]\r\n\r\n".encode())
        await response.write_eof()
        return response

    return answer


class StandinWorker:
    def __init__(self, worker_id: str, behaviour: Behaviour, model: str = "m", max_concurrency: int = 8):
        self.worker_id, self.behaviour, self.model = worker_id, behaviour, model
        self.max_concurrency = max_concurrency
        self.seen: list[Seen] = []
        self.url = ""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(await request.read(), dict(request.headers))
        self.seen.append(seen)
        watcher = asyncio.ensure_future(self._watch_close(request, seen))
        try:
            return await self.behaviour(request, seen)
        finally:
            watcher.cancel()  # the answer is over: a finished one's keep-alive connection may stay open
            if seen.closed is None and (request.transport is None or request.transport.is_closing()):
                seen.closed = time.monotonic()  # a write failed: the controller closed the stream

    @staticmethod
    async def _watch_close(request: web.Request, seen: Seen) -> None:
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)
        seen.closed = time.monotonic()
        seen.gone.set()

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker_id": self.worker_id, "model": self.model})

    async def start(self) -> StandinWorker:
        app = web.Application(client_max_size=1024**3)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")
        return self

    async def register(self, controller_url: str, queued: int = 0) -> None:
        """Register (as the worker does), then one heartbeat with `queued` (how busy the controller thinks it is)."""
        card = {"id": self.model, "object": "model", "owned_by": "internvl"}
        async with aiohttp.ClientSession() as http:
            async with http.post(controller_url + "/workers/register", json={
                    "worker_id": self.worker_id, "url": self.url, "models": [card],
                    "max_concurrency": self.max_concurrency}) as r:
                assert r.status == 200, await r.text()
            async with http.post(controller_url + "/workers/heartbeat", json={
                    "worker_id": self.worker_id, "in_flight": 0, "queued": queued}) as r:
                assert r.status == 200, await r.text()

    async def close(self) -> None:
        await self._server.close()


@contextlib.asynccontextmanager
async def standins(controller_url: str, behaviours: dict[str, Behaviour], queued: dict[str, int] | None = None):
    """{worker_id: behaviour} -> {worker_id: StandinWorker}, registered with the controller; closed at the end."""
    started = {}
    try:
        for worker_id, behaviour in behaviours.items():
            started[worker_id] = await StandinWorker(worker_id, behaviour).start()
            await started[worker_id].register(controller_url, (queued or {}).get(worker_id, 0))
        yield started
    finally:
        for w in started.values():
            await w.close()
        async with aiohttp.ClientSession() as http:
            for worker_id in started:
                with contextlib.suppress(aiohttp.ClientError):
                    await http.post(controller_url + "/workers/unregister", json={"worker_id": worker_id})
