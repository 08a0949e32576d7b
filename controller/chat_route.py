"""POST /v1/chat/completions, taken before FastAPI's own layers.

Every chat request is relayed through the controller, so its per-request cost is the gateway's cost. FastAPI's
routing, dependency solving, exception-wrapping layers and response plumbing were about a third of the controller's
CPU per request (py-spy: bench/overhead_bench.py --profile), for a route that uses none of them: it reads a raw body
and answers with a ready response. So this one path is served by a plain ASGI endpoint, still wrapped in the app's own
middlewares (request ids and the access line, the request counter: built from the same `user_middleware` list), and
its errors still rendered by the app's own exception handlers (common/http.py install_error_handlers, counted by
common/metrics.py). Every other path goes through FastAPI as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

CHAT_PATH = "/v1/chat/completions"

Endpoint = Callable[[Request], Awaitable[Response]]


class ControllerApp(FastAPI):
    """FastAPI with the chat route served ahead of it (see the module's docstring); set `chat_endpoint`."""

    chat_endpoint: Endpoint | None = None
    _chat_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH and self.chat_endpoint is not None:
            if self._chat_stack is None:  # built on first use, like Starlette's stack: after every add_middleware
                stack: ASGIApp = ChatRoute(self, self.chat_endpoint)
                for cls, args, kwargs in reversed(self.user_middleware):
                    stack = cls(stack, *args, **kwargs)
                self._chat_stack = stack
            await self._chat_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class ChatRoute:
    """The endpoint as an ASGI app: the request, the endpoint's response, or the app's handler's answer to what it
    raised."""

    path = CHAT_PATH  # the request counter labels requests by their route's path

    def __init__(self, app: FastAPI, endpoint: Endpoint):
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app
        scope["route"] = self
        request = Request(scope, receive)
        try:
            if scope["method"] != "POST":
                raise StarletteHTTPException(405, headers={"Allow": "POST"})
            response = await self.endpoint(request)
        except Exception as exc:
            handler = _handler_for(self.app, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(app: FastAPI, exc: Exception) -> Callable | None:
    """The app's exception handler for `exc`: the nearest class in its MRO, as Starlette picks one."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
