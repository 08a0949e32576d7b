"""The controller's usual chat request served from the client connection's own callbacks, with no task (issue 26).

Every relayed chat request went through uvicorn's ASGI scaffolding (its scope, request cycle and task), the route's
coroutines, and a wakeup of that task at the first token and at the end: ~10% of the controller's CPU per request,
what kept it above the field's Rust routers (bench/relay_floor.py, BENCHMARKS.md). The usual request needs none of
it: a small streamed request, a free worker. So the server's protocol (common/bounded_http.py `BelowAsgi`) holds
such a request's body from its head, and once it is in, this serves it from there: the route's checks (the same
functions), the first attempt begun on a kept connection to the worker (controller/relay.py `Dispatcher.begin`; a
task of its own only to open one when none is idle), the stream started by the same early start (its head with its
first event, controller/chat_parts.py `early_start`), relayed by the same pump (controller/stream_pump.py), ended
here when the pump says so (its last chunk, the request's counter and access line, as the route's).

Anything else is the route's, through uvicorn's task as before, with nothing done twice that counts: a request this
does not want (`wants`: not a small POST to the chat path over HTTP/1.1 with its length declared; forwarded headers;
a request under way on the connection); one that fails a check, is not streamed, or finds no free worker (`take`
returns False; the route checks it again and answers as it always has); a first attempt that does anything but
start well (an error status or event, an empty answer, a broken or refused connection, the first token's deadline):
handed to the route with the attempt under way (`HANDED_OVER`), which `Dispatcher.open` goes on with as its own
first attempt: its failover, counting and errors are the route's. A client that leaves before the first token ends
the attempt as a cancelled dispatch does (`Begun.abandon`, a 499); after it, as a stream's client leaving does.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import TYPE_CHECKING, NamedTuple

from starlette.requests import Request

from common.auth import refuse_relayed
from common.direct_body import DirectBody
from common.disconnect import LEFT
from common.errors import ServingError
from common.http import RELAY_STREAM, check_api_key, json_text
from common.logging_setup import RequestRecord
from controller.chat_parts import conversation_of, early_start
from controller.relay import Begun, Dispatcher, Upstream
from controller.request_peek import peek_small

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from common.bounded_http import BoundedHttpTools
    from controller.direct_routes import ControllerApp
    from controller.stream_pump import StreamPump

HANDED_OVER = "internvl.handed_over"  # scope["extensions"][HANDED_OVER]: a `HandedOver` for the route
MAX_BODY = 16 * 1024  # the bodies taken here (a text chat): peeked in the callback (controller/request_peek.py)
_NOT_HERE = frozenset({b"x-forwarded-for", b"x-forwarded-proto",  # the proxy headers middleware's (the route's)
                       b"transfer-encoding", b"expect", b"upgrade"})
_RELAY_HEADERS = {RELAY_STREAM: "1"}


class HandedOver(NamedTuple):
    """A request taken here and handed to the route with its first attempt under way."""

    begun: Begun
    direct: DirectBody  # its response's body, which the attempt's early start begins


class FastChat:
    """The controller app's `below_asgi` (common/bounded_http.py): see the module's docstring."""

    def __init__(self, app: ControllerApp, path: str):
        self.app = app
        self.path = path  # (the request counter labels requests by their route's path: scope["route"] is this)
        self._path = path.encode()

    def wants(self, protocol: BoundedHttpTools) -> bool:
        if protocol.url != self._path or protocol.root_path or protocol.expect_100_continue:
            return False
        if protocol.cycle is not None and not protocol.cycle.response_complete:
            return False  # pipelined behind a response under way: uvicorn's task waits its turn
        parser = protocol.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
            return False
        length = None
        for name, value in protocol.headers:
            if name == b"content-length":
                length = value
            elif name in _NOT_HERE:
                return False
        return length is not None and length.isdigit() and int(length) <= MAX_BODY

    def take(self, protocol: BoundedHttpTools, cycle: RequestResponseCycle, body: bytes) -> bool:
        context = contextvars.copy_context()  # (the request id is bound for its logs in a context of its own)
        return context.run(self._take, protocol, cycle, body, context)

    def _take(self, protocol: BoundedHttpTools, cycle: RequestResponseCycle, body: bytes,
              context: contextvars.Context) -> bool:
        state = self.app.state
        dispatcher: Dispatcher | None = getattr(state, "dispatcher", None)
        if dispatcher is None:
            return False
        settings = state.settings
        scope = cycle.scope
        scope["app"] = self.app
        request = Request(scope)
        try:  # the route's checks, in its order (controller/app.py chat_completions)
            refuse_relayed(request)
            check_api_key(request, settings.api_keys)
            if len(body) > settings.max_body_bytes:
                return False
            body = json_text(body)
            asked = peek_small(body)
        except ServingError:
            return False  # the route refuses it, as always
        if not asked.stream:
            return False
        started = time.monotonic()
        serving = dispatcher.registry.serving(asked.model)
        taken = dispatcher.queue.take_free(asked.model, conversation_of(request, asked), serving) \
            if serving else None
        if taken is None:
            return False
        record = RequestRecord(scope)  # (RequestIdMiddleware's work, as DirectRoute does it)
        scope["route"] = self
        direct = DirectBody.unstarted(scope)
        worker, lease = taken
        begun = dispatcher.begin(worker, lease, body, record.rid, _RELAY_HEADERS,
                                 early_start(dispatcher, direct, scope), started)
        _Served(self, protocol, cycle, context, record, begun, direct, dispatcher, body)
        return True


class _Served:
    """One request taken here, until its answer ends here or it is handed over."""

    __slots__ = ("begun", "connecting", "context", "cycle", "direct", "dispatcher", "draining", "fast", "hook", "over",
                 "protocol", "pump", "record", "timer")

    def __init__(self, fast: FastChat, protocol: BoundedHttpTools, cycle: RequestResponseCycle,
                 context: contextvars.Context, record: RequestRecord, begun: Begun, direct: DirectBody,
                 dispatcher: Dispatcher, body: bytes):
        self.fast, self.protocol, self.cycle, self.context = fast, protocol, cycle, context
        self.record, self.begun, self.direct, self.dispatcher = record, begun, direct, dispatcher
        self.pump: StreamPump | None = None  # the stream phase, once the first event passed its checks
        self.draining: asyncio.Task | None = None
        self.connecting: asyncio.Task | None = None  # a new connection to the worker, when none was idle
        self.over = False  # answered, or handed over: nothing more is ours to do
        loop = dispatcher.loop
        self.timer: asyncio.TimerHandle | None = loop.call_at(
            begun.sent_at + dispatcher.settings.first_token_timeout_s, self._hand_over)
        if begun.conn is not None:
            begun.conn.watcher = self._news
        else:  # (a task for the connection only: under many streams at once, each may need one)
            self.connecting = loop.create_task(self._connect(body))
        self.hook = cycle.scope["extensions"][LEFT]
        self.hook.watch(self._left)

    async def _connect(self, body: bytes) -> None:
        try:
            await self.dispatcher.connect(self.begun, body, self.record.rid, _RELAY_HEADERS)
        except (OSError, ValueError):  # (WorkerUnreachable is one): the route's dispatch tries it, and judges it
            self.connecting = None
            self._hand_over()
            return
        self.connecting = None
        self.begun.conn.watcher = self._news

    # -- before the first token
    def _news(self) -> None:
        """The worker's connection has something new (its head, body, end, or its loss)."""
        outcome = self.begun.early.outcome
        if isinstance(outcome, Upstream):
            self._first_token(outcome)
            return
        conn = self.begun.conn
        waiting = conn.status == 0 or (conn.status == 200 and not conn.chunks)
        if outcome is None and waiting and conn.error is None and not conn.complete:
            return  # the first event is still to come (a worker sends its head with it: rarely seen here)
        self._hand_over()  # an error status or event, an empty answer, a broken connection: the route's to judge

    def _first_token(self, up: Upstream) -> None:
        self._quiet()
        self.begun.conn.early = None
        self.dispatcher.first_token(up.worker, self.begun.started)
        self.pump = pump = up.relay.pump  # (started by the early start: controller/chat_parts.py)
        pump.on_change = self._changed
        self._changed()  # (the whole answer may have come with its first event)

    def _hand_over(self) -> None:
        """The route goes on with the attempt (the first token's deadline, if it is due, is its too)."""
        if self.over:
            return
        self.over = True
        self._quiet()
        self.hook.unwatch()
        self.cycle.scope["extensions"][HANDED_OVER] = HandedOver(self.begun, self.direct)
        self.protocol.start_app(self.cycle)

    def _quiet(self) -> None:
        """Nothing before the first token tells this any more (a connection being made is given up)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.begun.conn is not None:
            self.begun.conn.watcher = None  # (its `early` stays the attempt's: the route's dispatch goes on with it)

    # -- the stream
    def _changed(self) -> None:
        """The pump's word: the stream ended, or the client is behind or gone."""
        if self.over:
            return
        pump = self.pump
        if pump.final is not None:
            self.over = True
            self.hook.unwatch()
            self.direct.end(pump.final)
            self._done(self.record.status)
        elif pump.paused:
            if self.direct.gone:
                self._left()
            elif self.draining is None:
                self.draining = self.dispatcher.loop.create_task(self._drain())

    async def _drain(self) -> None:
        """The client is behind: once it has taken enough, the pump reads the worker again."""
        try:
            await self.direct.drain()
        finally:
            self.draining = None
        if not self.over:
            self.pump.resume()

    def _left(self) -> None:
        """The client's connection is gone before its answer's end."""
        if self.over:
            return
        self.over = True
        self.hook.unwatch()
        if self.pump is None:  # before the first token: as a cancelled dispatch, a 499 in the counters and the log
            self._quiet()
            self.begun.abandon()
            self._done(499)
        else:  # as a stream's client leaving: the worker's connection closed (it stops), the answer's status kept
            self._done(self.record.status)

    def _done(self, status: int) -> None:
        """The request's end, as the route's: its stream let go, its counter, its access line."""
        pump = self.pump
        if pump is not None:
            pump.on_change = None
            if pump.up.relay is not None:
                pump.up.relay.close_now()
        self.record.status = status
        self.fast.app.state.metrics.count_request(self.cycle.scope, status)
        self.context.run(self.record.end)

