"""POST /v1/chat/completions, taken before FastAPI's own layers.

Every chat request is relayed through the controller, so its per-request cost is the gateway's cost. FastAPI's
routing, dependency solving, exception-wrapping layers and response plumbing were about a third of the controller's
CPU per request (py-spy: bench/overhead_bench.py --profile), for a route that uses none of them: it reads a raw body
and answers with a ready response. So this one path is served by a plain ASGI endpoint. It does itself what the
app's two middlewares do for every other path, through the same code: the request id and the access line
(common/logging_setup.py `RequestRecord`), the request counter (common/metrics.py `Metrics.count_request`). Two
middleware layers, each wrapping `send`, were a measurable part of every first token's way (issue 26). An app with
any other middleware refuses to serve the route, rather than skip it. Its errors are still rendered by the app's own
exception handlers (common/http.py install_error_handlers, counted by common/metrics.py). Every other path goes
through FastAPI as before.

The app also applies uvicorn's proxy headers middleware itself (its server is told not to: common/serve.py), around
every path but this one, which runs it only for a request that carries a forwarded header: as a layer of its own it
was 3% of the controller's CPU per request (bench/relay_floor.py, issue 26), for headers most requests lack.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from common.logging_setup import RequestIdMiddleware, RequestRecord
from common.metrics import CountRequests, Metrics

CHAT_PATH = "/v1/chat/completions"

Endpoint = Callable[[Request], Awaitable[Response]]
_DONE_HERE = {RequestIdMiddleware, CountRequests}  # the middlewares whose work ChatRoute does itself
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})  # what uvicorn's proxy headers middleware reads


def trusted_proxies() -> str:
    """Whose forwarded headers count: uvicorn's own default (its `--forwarded-allow-ips`)."""
    return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


class ControllerApp(FastAPI):
    """FastAPI with the chat route served ahead of it (see the module's docstring); set `chat_endpoint`."""

    chat_endpoint: Endpoint | None = None
    applies_proxy_headers = True  # (its server does not: common/serve.py)
    _chat_route: ChatRoute | None = None
    _behind_proxies: ProxyHeadersMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH and self.chat_endpoint is not None:
            if self._chat_route is None:  # made on first use, like Starlette's stack: after every add_middleware
                others = [m.cls for m in self.user_middleware if m.cls not in _DONE_HERE]
                if others:
                    raise RuntimeError(f"{CHAT_PATH} does not apply {others}: add it to controller/chat_route.py")
                self._chat_route = ChatRoute(self, self.chat_endpoint, self.state.metrics)
            await self._chat_route(scope, receive, send)
            return
        if self._behind_proxies is None:
            self._behind_proxies = ProxyHeadersMiddleware(super().__call__, trusted_proxies())
        await self._behind_proxies(scope, receive, send)


class ChatRoute:
    """The endpoint as an ASGI app: the request, the endpoint's response, or the app's handler's answer to what it
    raised."""

    path = CHAT_PATH  # the request counter labels requests by their route's path

    def __init__(self, app: FastAPI, endpoint: Endpoint, metrics: Metrics):
        self.app = app
        self.endpoint = endpoint
        self.metrics = metrics
        self._proxies = ProxyHeadersMiddleware(_scope_only, trusted_proxies())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, _ in scope["headers"]:
            if name in _FORWARDED:
                await self._proxies(scope, receive, send)  # the client and scheme, as the proxies that sent it say
                break
        record = RequestRecord(scope)  # (RequestIdMiddleware's work)
        scope["app"] = self.app
        scope["route"] = self
        request = Request(scope, receive)
        try:
            try:
                if scope["method"] != "POST":
                    raise StarletteHTTPException(405, headers={"Allow": "POST"})
                response = await self.endpoint(request)
            except Exception as exc:
                handler = _handler_for(self.app, exc)
                if handler is None:
                    raise
                response = await handler(request, exc)
            await response(scope, receive, record.watching(send))
        finally:
            self.metrics.count_request(scope, record.status)  # (the request counter's work)
            record.end()


async def _scope_only(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind ChatRoute's proxy headers middleware: the middleware's work is on the scope; nothing more."""


def _handler_for(app: FastAPI, exc: Exception) -> Callable | None:
    """The app's exception handler for `exc`: the nearest class in its MRO, as Starlette picks one."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
