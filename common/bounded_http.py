"""uvicorn's httptools protocol with the bounds a public server needs below the application: the request line and
headers (the head) limited in size (431) and in the time they take to arrive (408), and a body declared larger than
the server takes refused before `100 Continue` (413). Each refusal is answered and the connection closed; nothing more
of it is read.

uvicorn sets no such limits with httptools (its h11 limit does not apply): a client could hold megabytes of header
per connection, before any API key is checked, or keep a connection open forever one byte at a time. The controller
and the workers pass the protocol to uvicorn (`http=`); the web UI runs inside Gradio's own uvicorn, which asks for
the "auto" protocol, so `make_default` puts it there (one process-wide setting, made before the server starts).
It also offers the relay a way to write a streamed body below ASGI (common/direct_body.py), a request's watch for
its client leaving the connection's own word for it (`ClientLeft`, common/disconnect.py), and an app the way to
serve some requests from the connection's own callbacks, with no task (`BelowAsgi`: the controller's streamed chat
requests, controller/fast_chat.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Callable
from typing import Protocol

import httptools
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from common.direct_body import EXTENSION as DIRECT_BODY
from common.disconnect import LEFT
from common.errors import ErrorCode, error_body

log = logging.getLogger("internvl.access")

MAX_HEAD_BYTES = 64 * 1024  # nginx's default large_client_header_buffers is 4 x 8 KiB: 64 KiB leaves room
# scope["extensions"][KEEP_ALIVE](seconds): how long this request's connection may then wait for its next request,
# for a client the app trusts to come back (a worker's heartbeats: controller/admission.py); others get uvicorn's.
KEEP_ALIVE = "internvl.keep_alive"
HEAD_TIMEOUT_S = 20.0  # nginx: client_header_timeout 60 s; a head is one packet in practice


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class ClientLeft:
    """One request's word that its client left (`ClientWatch`): the connection was lost before the response was
    complete. It tells one watch at a time, from `watch` to `unwatch`, and at once of a client that had already
    left."""

    __slots__ = ("cycle", "callback", "loop")

    def __init__(self, cycle, loop: asyncio.AbstractEventLoop):
        self.cycle = cycle
        self.callback: Callable[[], None] | None = None
        self.loop = loop  # the connection's (the watch's task runs in it)

    def watch(self, callback: Callable[[], None]) -> None:
        if self.cycle.disconnected:
            callback()
            return
        self.callback = callback
        self.cycle.flow.resume_reading()  # as uvicorn's `receive` does: a connection not read would not tell its end

    def unwatch(self) -> None:
        self.callback = None

    def lost(self) -> None:
        """The server's side: the connection is gone."""
        callback, self.callback = self.callback, None
        if callback is not None and not self.cycle.response_complete:
            callback()

    def let_go(self) -> None:
        """The server's side: the request was answered, or its connection is gone. Its scope lets go of the
        extensions our protocol put there: the scope and uvicorn's cycle held each other through them, and a
        finished request's objects waited for the cycle collector (tests/controller/test_request_garbage.py)."""
        extensions = self.cycle.scope.get("extensions", {})
        if extensions.get(LEFT) is self:
            del extensions[LEFT]
            extensions.pop(DIRECT_BODY, None)
            extensions.pop(KEEP_ALIVE, None)


class BelowAsgi(Protocol):
    """What an app offers as `below_asgi` to serve some requests from the connection's callbacks: at a request's
    head, whether it `wants` it (then its body is held, not given to a task); once the body is in, `take` serves it,
    or returns False and the app's ASGI task serves it. Later too, it may hand a request it took to the app's task
    (`BoundedHttpTools.start_app`): a request it takes is answered one way or the other."""

    def wants(self, protocol: BoundedHttpTools) -> bool: ...

    def take(self, protocol: BoundedHttpTools, cycle: RequestResponseCycle, body: bytes) -> bool: ...


class BoundedHttpTools(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S
    max_body_bytes: int | None = None  # None: the application checks the declared length itself

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True  # between the end of a request (or the connection's start) and its next head's end
        self._reads = 0  # reads so far; the one a request ended in, and whether the next head began in it:
        self._ended_in = -1  # a head that began in that read is partly in a read `_head_bytes` did not count
        self._head_counted = True
        self._head_began: float | None = None  # loop time of a head that did not come whole in one read
        self._quiet_since = self.loop.time()  # since when the connection waits for a head
        self._quiet_limit = self.head_timeout_s  # how long it may: a first head's time, then the keep-alive's
        self._timer: asyncio.TimerHandle | None = None  # the connection's one timer (`_arm`), and when it is due
        self._timer_due = 0.0
        self._arm(self._quiet_since + self._quiet_limit)  # a connection that sends nothing at all is bounded too
        self._keep_alive_s = float(self.timeout_keep_alive)  # (`keep_for`)
        self._keep_for = self.keep_for  # (made once: offered to every request on the connection)
        self._left: list[ClientLeft] = []  # of the requests not answered yet (more than one when pipelined)
        # The app's requests served below ASGI (uvicorn's concurrency limit and fresh contexts are its tasks' own)
        below = getattr(self.app, "below_asgi", None)
        self._below: BelowAsgi | None = below if self.limit_concurrency is None and \
            not self.config.reset_contextvars else None
        self._held: bytearray | None = None  # the body of a request `_below` wants, until it is in
        self._held_keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)
        left, self._left = self._left, []
        for hook in left:
            hook.lost()
            hook.let_go()
        # A closed connection let go of nothing: its transport holds its methods, its request cycle its
        # `on_response_complete`, and it held both, its flow control and its last request's scope (exit stacks,
        # record, state), all left to the cycle collector. A worker's full collections walked those of hundreds of
        # closed connections: up to 400 ms under 500 streams (issue 26). A request still running keeps what it uses
        # (its cycle holds the scope, the transport and the flow control); the connection gets no more callbacks.
        self.transport = self.flow = self.cycle = self.scope = self._keep_for = None  # type: ignore[assignment]
        self.pipeline.clear()

    def on_response_complete(self) -> None:
        # As uvicorn's, but its keep-alive wait is the connection's one timer, armed once and moved lazily (`_arm`):
        # a keep-alive timer made and cancelled for every request was on every request's way (issue 26).
        keep = []
        for hook in self._left:
            if hook.cycle.response_complete:
                hook.let_go()
            else:
                keep.append(hook)
        self._left = keep
        self.server_state.total_requests += 1
        if self.transport is None or self.transport.is_closing():  # (None: the connection is gone)
            return
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waited for this one's end
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._quiet_since, self._quiet_limit = self.loop.time(), self._keep_alive_s
        if self._head_began is not None:
            self._head_began = self._quiet_since  # a head that began behind this response is timed from its end
        self._arm(self._quiet_since + self._quiet_limit)

    def data_received(self, data: bytes) -> None:
        # As uvicorn's (less its keep-alive timer's cancelling: see on_response_complete), plus the head's size, and
        # the refusals raised from the parser's callbacks.
        self._reads += 1
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refused):
                raise
            self._refuse(431 if exc.__context__.code is ErrorCode.HEADERS_TOO_LARGE else 413, exc.__context__)
            return
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # The head is still incomplete after this read: beyond the limit nothing more of it is read. (At most one
        # read, 256 KiB, is held beyond it.)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(431, _Refused(ErrorCode.HEADERS_TOO_LARGE, self._too_large_head()))
        elif self._in_head and self._head_bytes and self._head_began is None:
            # A head that did not come whole in one read has its time counted from here. (One that does, the usual
            # case, is never timed: issue 26.)
            self._head_began = self.loop.time()
            self._arm(self._head_began + self.head_timeout_s)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_began = None
        # A head that ended within the read that took it over the limit. Summed only when it can be over: the reads
        # counted hold all of it unless it began behind a request that ended in the same read (pipelined); summing
        # every request's headers was on every first token's way (issue 26).
        if (self._head_bytes > self.max_head_bytes or not self._head_counted) and \
                len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > self.max_head_bytes:
            raise _Refused(ErrorCode.HEADERS_TOO_LARGE, self._too_large_head())
        if self.max_body_bytes is not None:
            declared = next((v for k, v in self.headers if k == b"content-length"), b"")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _Refused(ErrorCode.REQUEST_TOO_LARGE,
                               f"the request body is {int(declared) / 2**20:.1f} MB, over the "
                               f"{self.max_body_bytes / 2**20:.1f} MB this server takes per request")
        if self._below is not None and self._below.wants(self):
            self._held = bytearray()  # (no scope, cycle or task yet: `_take_held`, once the body is in)
            self._held_keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it by the message's end)
            return
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:  # (not an upgrade)
            self._offer(self.cycle)

    def _offer(self, cycle: RequestResponseCycle) -> None:
        """The scope extensions this protocol offers a request (see the module's docstring)."""
        extensions = cycle.scope.setdefault("extensions", {})
        extensions[DIRECT_BODY] = cycle  # the relay's writer (common/direct_body.py)
        self._left.append(ClientLeft(cycle, self.loop))
        extensions[LEFT] = self._left[-1]  # (common/disconnect.py)
        extensions[KEEP_ALIVE] = self._keep_for

    def on_body(self, body: bytes) -> None:
        if self._held is not None:
            self._held += body  # (`wants` takes only a small body, its length declared)
            return
        super().on_body(body)

    def _take_held(self, body: bytes) -> None:
        """A held request, its body in: its scope and cycle as uvicorn's would have been made at its head, then
        `_below` serves it, else the app's task."""
        scope, url = self.scope, httptools.parse_url(self.url)
        scope["method"] = self.parser.get_method().decode("ascii")
        scope["http_version"] = self.parser.get_http_version()
        path = url.path.decode("ascii")
        scope["path"] = self.root_path + (urllib.parse.unquote(path) if "%" in path else path)
        scope["raw_path"] = self.root_path.encode("ascii") + url.path
        scope["query_string"] = url.query or b""
        self.cycle = cycle = RequestResponseCycle(
            scope=scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=False, keep_alive=self._held_keep_alive, on_response=self.on_response_complete)
        cycle.body, cycle.more_body = body, False
        cycle.message_event.set()  # (the body is in: the app's `receive` takes it at once)
        self._offer(cycle)
        try:
            taken = self._below.take(self, cycle, body)
        except Exception:  # (raised in the parser's callback, it would end the connection unanswered)
            self.logger.exception("serving a request below ASGI failed: the app's task serves it")
            taken = False
        if not taken:
            self.start_app(cycle)

    def start_app(self, cycle: RequestResponseCycle) -> None:
        """The app's ASGI task for a request whose body is in (`BelowAsgi`)."""
        self._start_asgi_task(cycle, self.app)

    def keep_for(self, seconds: float) -> None:
        """Between this connection's requests from now on, wait up to `seconds` for the next (KEEP_ALIVE)."""
        self._keep_alive_s = seconds

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_counted = self._reads != self._ended_in

    def on_message_complete(self) -> None:
        held, self._held = self._held, None
        if held is None:
            super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # the timer starts with the next request's first byte
        self._ended_in = self._reads
        if held is not None:
            self._take_held(bytes(held))

    def _too_large_head(self) -> str:
        return f"the request line and headers are over the {self.max_head_bytes // 1024} KiB this server takes"

    def _arm(self, due: float) -> None:
        """The connection's timer fires no later than `due`. Armed earlier, it stays: when it fires, `_timed` looks
        at what the connection is doing then, and arms it again for what is due next."""
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.loop.call_at(due, self._timed)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if not self._in_head or (self.cycle is not None and not self.cycle.response_complete):
            # A request under way (a pipelined head may wait behind it): its response's end arms the timer. (Out of
            # a head with no request under way: the connection went to another protocol, an upgrade.)
            return
        now = self.loop.time()
        if self._head_began is not None:  # a head partly in
            due = self._head_began + self.head_timeout_s
            if now >= due:
                self._refuse(408, _Refused(ErrorCode.REQUEST_TIMEOUT, "the request line and headers did not "
                                           f"arrive within {self.head_timeout_s:g} s"))
                return
        else:
            due = self._quiet_since + self._quiet_limit
            if now >= due:
                self.transport.close()  # idle (a browser's spare connection, a client done): nothing to answer
                return
        self._arm(due)

    def _refuse(self, status: int, refusal: _Refused) -> None:
        self._cancel_timer()
        client = "%s:%d" % self.client if self.client else "-"
        log.info("refused %d from %s: %s", status, client, refusal.message, extra={"status": status})
        body = json.dumps(error_body(refusal.code, refusal.message)).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def bounded_http(max_head_bytes: int = MAX_HEAD_BYTES, head_timeout_s: float = HEAD_TIMEOUT_S,
                 max_body_bytes: int | None = None) -> type[BoundedHttpTools]:
    """The protocol class with these bounds, for uvicorn's `http=`."""
    return type("BoundedHttpTools", (BoundedHttpTools,), {"max_head_bytes": max_head_bytes,
                                                          "head_timeout_s": head_timeout_s,
                                                          "max_body_bytes": max_body_bytes})


def make_default(protocol: type[BoundedHttpTools]) -> None:
    """Make `protocol` what uvicorn servers started with `http="auto"` use in this process (Gradio's)."""
    global _default
    _default = protocol
    HTTP_PROTOCOLS["auto"] = f"{__name__}:_default"


_default: type[BoundedHttpTools] = BoundedHttpTools
