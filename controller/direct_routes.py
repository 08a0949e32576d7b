"""The controller's two hottest routes, taken before FastAPI's own layers: POST /v1/chat/completions (every chat
request is relayed through the controller, so its per-request cost is the gateway's cost) and POST /workers/heartbeat
(each worker's, every few seconds: most of what an idle controller does).

FastAPI's routing, dependency solving, exception-wrapping layers and response plumbing were about a third of the
controller's CPU per request (py-spy: bench/overhead_bench.py --profile), for routes that use none of them: each
reads a raw body and answers with a ready response. So these paths are served by plain ASGI endpoints
(`ControllerApp.serve_ahead`). Each does itself what the app's two middlewares do for every other path, through the
same code: the request id and the access line (common/logging_setup.py `RequestRecord`), the request counter
(common/metrics.py `Metrics.count_request`). Two middleware layers, each wrapping `send`, were a measurable part of
every first token's way (issue 26). An app with any other middleware refuses to serve them, rather than skip it.
Their errors are still rendered by the app's own exception handlers (common/http.py install_error_handlers, counted
by common/metrics.py). A ready answer (not a stream) goes out in one write, its head with its body
(common/direct_body.py `one_write`): uvicorn wrote them apart. Every other path goes through FastAPI as before. The
usual chat request (streamed, small, a free worker) is served before even this, with no task at all
(controller/fast_chat.py); the route here answers the rest, and goes on with a first attempt handed to it from there.

The app also applies uvicorn's proxy headers middleware itself (its server is told not to: common/serve.py), around
every other path, and on these only for a request that carries a forwarded header: as a layer of its own it was 3%
of the controller's CPU per request (bench/relay_floor.py, issue 26), for headers most requests lack.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from common.direct_body import one_write
from common.logging_setup import RequestIdMiddleware, RequestRecord
from common.metrics import CountRequests, Metrics

CHAT_PATH = "/v1/chat/completions"

Endpoint = Callable[[Request], Awaitable[Response]]
_DONE_HERE = {RequestIdMiddleware, CountRequests}  # the middlewares whose work DirectRoute does itself
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})  # what uvicorn's proxy headers middleware reads


def trusted_proxies() -> str:
    """Whose forwarded headers count: uvicorn's own default (its `--forwarded-allow-ips`)."""
    return os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


class ControllerApp(FastAPI):
    """FastAPI with some POST routes served ahead of it (see the module's docstring): `serve_ahead`."""

    applies_proxy_headers = True  # (its server does not: common/serve.py)
    _ahead: dict[str, Endpoint] = {}  # (replaced, never changed in place: a class default)
    _direct: dict[str, DirectRoute] | None = None
    _behind_proxies: ProxyHeadersMiddleware | None = None

    def serve_ahead(self, path: str, endpoint: Endpoint) -> None:
        """Serve POST `path` with `endpoint`, ahead of FastAPI's layers (added before the first request to any)."""
        if self._direct is not None:
            raise RuntimeError(f"{path}: the routes served ahead were made at their first request; add it before")
        self._ahead = {**self._ahead, path: endpoint}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._ahead:
            direct = self._direct if self._direct is not None else self._direct_routes()
            await direct[scope["path"]](scope, receive, send)
            return
        if self._behind_proxies is None:
            self._behind_proxies = ProxyHeadersMiddleware(super().__call__, trusted_proxies())
        await self._behind_proxies(scope, receive, send)

    def _direct_routes(self) -> dict[str, DirectRoute]:
        # Made on first use, like Starlette's stack: after every add_middleware
        others = [m.cls for m in self.user_middleware if m.cls not in _DONE_HERE]
        if others:
            raise RuntimeError(f"{list(self._ahead)} do not apply {others}: add it to controller/direct_routes.py")
        self._direct = {path: DirectRoute(self, path, endpoint, self.state.metrics)
                        for path, endpoint in self._ahead.items()}
        return self._direct


class DirectRoute:
    """An endpoint as an ASGI app: the request, the endpoint's response, or the app's handler's answer to what it
    raised."""

    def __init__(self, app: FastAPI, path: str, endpoint: Endpoint, metrics: Metrics):
        self.app = app
        self.path = path  # (the request counter labels requests by their route's path)
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
            if isinstance(response, StreamingResponse):
                await response(scope, receive, record.watching(send))
            else:
                with one_write(scope):  # its head with its body
                    await response(scope, receive, record.watching(send))
        finally:
            self.metrics.count_request(scope, record.status)  # (the request counter's work)
            record.end()


async def _scope_only(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind DirectRoute's proxy headers middleware: the middleware's work is on the scope; nothing more."""


def _handler_for(app: FastAPI, exc: Exception) -> Callable | None:
    """The app's exception handler for `exc`: the nearest class in its MRO, as Starlette picks one."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
