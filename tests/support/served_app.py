"""An ASGI app served by a real uvicorn server on a free loopback port, in the test's own event loop (so the test can
look at what the app holds while a client talks to it over a real socket)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import uvicorn

from common.serve import proxy_headers
from launcher.compose import free_port


@contextlib.asynccontextmanager
async def served(app, http: str | type = "auto", **config) -> AsyncIterator[str]:
    """-> the app's base URL while the `async with` lasts; the server is stopped on the way out. `http`: uvicorn's
    protocol ("auto": its own; `common.bounded_http.bounded_http()`: the controller's and the workers'); `config`:
    more of uvicorn's settings (`timeout_keep_alive=...`). uvicorn's proxy headers middleware is applied as
    common/serve.py applies it (not around an app that applies it itself: the controller's)."""
    config.setdefault("proxy_headers", proxy_headers(app))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None,
                                           access_log=False, http=http, **config))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), 10, "the server listens")
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)
