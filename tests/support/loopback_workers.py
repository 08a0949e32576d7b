"""Small HTTP servers on loopback that stand in for workers in the dispatcher's tests: each answers every chat
request with one scripted behaviour (a stream of events, an error status, ...). The dispatcher under test talks to
them through its real aiohttp client, so connection handling, chunked bodies and timeouts are the real ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from common.errors import ErrorCode, ServingError, error_body
from tests.support.stack import free_port

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]
REFUSED = "refused"  # a behaviour that is no server at all: the worker's port has nothing listening


def sse(*payloads: str) -> bytes:
    return "".join(f"data: {p}\r\n\r\n" for p in payloads).encode()


def stream(*payloads: str, gap_s: float = 0.0) -> Behaviour:
    """200 and these events; with `gap_s`, one event per network write, that long apart (as a worker sends them)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if gap_s:
            for p in payloads:
                await asyncio.sleep(gap_s)
                await response.write(sse(p))
        else:
            await response.write(sse(*payloads))
        await response.write_eof()
        return response

    return answer


def status(code: ErrorCode) -> Behaviour:
    """The worker's error answer for `code`: its HTTP status and error body."""

    async def answer(_: web.Request) -> web.Response:
        return web.json_response(error_body(code, f"{code.value} here"), status=ServingError(code, "").status)

    return answer


class LoopbackWorkers(contextlib.AsyncExitStack):
    """`url = await workers.start(behaviour)`; every server stops when the `async with` block ends. `calls` counts
    the chat requests each URL received."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    async def start(self, behaviour: Behaviour | str) -> str:
        if behaviour == REFUSED:
            return f"http://127.0.0.1:{free_port()}"
        url = ""

        async def chat(request: web.Request) -> web.StreamResponse:
            self.calls[url] += 1
            await request.read()
            return await behaviour(request)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        self.push_async_callback(server.close)
        url = str(server.make_url("")).rstrip("/")
        self.calls[url] = 0
        return url
