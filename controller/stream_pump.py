"""The stream phase of a relayed answer: past its first event, the worker's bytes go on to the client from the worker
connection's own callbacks (controller/worker_connection.py `deliver_to`), with no task woken per network read.

Each read is cut at its last complete event (a worker dying mid-event never leaves half an event in front of our
error event). Blocks that follow the last write closer than `stream_interval_ms` wait out that interval and go in
one write; a block of 64 KiB or more goes at once (a write that size costs little per byte, and holding it only
delays it). The controller parses nothing per token: cheap byte searches find the few events it must read (the end
marker, error events for the metrics, the usage event for tokens/s), at the end of each block only, where a worker
puts them.

Where the blocks go is the output's business: straight to the client's connection (a `DirectBody`, for a streamed
response under our server: common/direct_body.py; it is an `Output` as it is), or to an async iterator (`Relay`: a
non-streamed answer being collected, or any other server). Either way, a reader that falls behind pauses the
worker's connection, and only the time spent waiting on the worker counts toward `token_timeout_s`. The stream
always ends with exactly one end marker, after at most one error event; its last write (`final`) is the owner's to
send, with the end of the body. A pump ends its attempt exactly once (`Upstream.finish`), however the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.direct_body import DirectBody
from common.disconnect import ClientGone
from common.errors import ErrorCode, error_body
from common.metrics import Metrics
from common.sse import DONE_EVENT, DONE_LINE, complete_events, error_in_event, sse_event, sse_payloads
from controller.registry import Registry
from controller.worker_connection import WorkerConnectionError

if TYPE_CHECKING:
    from controller.relay import Upstream

log = logging.getLogger(__name__)

_DONE_LATER_LINE = b"\n" + DONE_LINE  # at a line start: token text inside JSON could hold the rest
_ERROR_LINE = b'data: {"error"'  # JSON text cannot hold these quotes unescaped, so this only matches error events
_WRITE_AT_ONCE = 64 * 1024  # a block this large is written without waiting out the interval
_QUEUE_HIGH_WATER = 1024 * 1024  # unread bytes in a Relay past which the worker's connection pauses
_JOIN_BELOW = 4096  # a read this small is joined to the event an earlier read left pending (cheaper than two parts)
_DRAIN_S = 1.0  # after the end marker, how long the rest of the worker's body (its last chunk) is waited for


class Output:
    """Where a pump's blocks go. A DirectBody (common/direct_body.py) has the same three members and is used as one
    directly: an adapter around it was three more Python calls on every write, the first token's included (issue
    26)."""

    def write(self, parts: list[bytes | memoryview], size: int) -> None:
        raise NotImplementedError

    @property
    def blocked(self) -> bool:
        """Whether the reader is behind: the pump pauses the worker until the owner has waited for it."""
        return False

    @property
    def gone(self) -> bool:
        """Whether the reader left: nothing more is written."""
        return False


class StreamPump:
    """One answer's stream phase. The owner `start`s it with an output, waits on `changed()` until `final` is set
    (after each wake: `resume()` once a blocked output has drained), sends `final`, and `close`s it. An owner with
    no task of its own is called (`on_change`) where `changed()` would return."""

    def __init__(self, up: Upstream, registry: Registry, metrics: Metrics, interval_s: float, timeout_s: float,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.up = up
        self.registry = registry
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.loop = loop or asyncio.get_running_loop()
        self.out: Output | DirectBody | None = None
        self.pending = b""  # the start of an event not complete yet
        self.held: list[bytes | memoryview] = []  # blocks waiting out the interval
        self.held_size = 0
        self.flush_handle: asyncio.TimerHandle | None = None
        self.last_write = float("-inf")  # the first event goes at once (time to first token)
        self.last_byte = 0.0  # loop time of the worker's last bytes (or of the end of a pause)
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False  # the worker's connection, until the output has drained
        self.final: bytes | None = None  # the stream's last write, once it has ended
        self.ok: bool | None = False  # how the attempt went: True once the end marker came
        self.finished = False  # the attempt was ended (its lease released)
        self.waiter: asyncio.Future | None = None
        self.on_change: Callable[[], None] | None = None  # an owner with no task told instead (controller/fast_chat.py)

    # -- the owner's side
    def start(self, out: Output | DirectBody) -> None:
        self.out = out
        self.last_byte = self.loop.time()
        self.body_received(self.up.buffered)  # the first event and whatever came with it
        if self.final is None and not self.finished:  # (armed after the first write: not on the first token's way)
            self.timer = self.loop.call_at(self.last_byte + self.timeout_s, self._due)
        if not self.finished:  # (past the end marker too: the body's end then ends the attempt without waiting)
            self.up.response.deliver_to(self)

    async def changed(self) -> None:
        """Until the stream ended, the output blocked, or (for a Relay) a block was written."""
        if self.final is not None or self.paused:
            return
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def resume(self) -> None:
        """The output took what it held: read from the worker again."""
        if self.paused and not self.finished:
            self.paused = False
            self.last_byte = self.loop.time()  # a wait for the reader is not the worker's delay
            self.up.response.resume_reading()

    def close(self) -> None:
        """The owner is done (the client left, or the response was sent). An answer that ended well may still be
        reading its body's last bytes, its lease already released: the connection is put back or closed within a
        second."""
        if self.ok:
            return
        self._finish(None)  # the client left before the end: not the worker's failure

    # -- the worker connection's callbacks (BodyConsumer)
    def body_received(self, data: bytes) -> None:
        if self.final is not None:
            return  # past the end marker: the rest of the body (its last chunk) is not relayed
        self.last_byte = self.loop.time()
        # The block is the read's complete events, with the start of an event an earlier read left pending. A fast
        # stream's reads (up to hundreds of kB) mostly end inside an event: the parts go out as they are, sliced by
        # memoryview, where joining and slicing bytes copied every read once or twice.
        parts: list[bytes | memoryview]
        pending = self.pending
        if pending:
            end = complete_events(data) if len(data) > _JOIN_BELOW else 0
            if not end:  # small, or no event ends in it alone (an end may span the two)
                data, pending = pending + data, b""
        if not pending:
            end = complete_events(data)
            if not end:
                self.pending = data
                return
            parts = [data if end == len(data) else memoryview(data)[:end]]
            tail = _tail(data, end)
        else:
            parts = [pending, data if end == len(data) else memoryview(data)[:end]]
            tail = _tail(data, end, pending)
        self.pending = data[end:] if end < len(data) else b""
        if _ERROR_LINE in tail or b'"usage"' in tail:
            self._observe(tail)
        if _ends(tail):
            self.ok = True
            self.up.lease.release(ok=True)  # the worker is done with it: counted before the client has the end
            self._end(parts)
            if self.up.response.at_eof():
                self._finish(True)
            else:  # the body's last chunk has not come yet: the connection goes back to the pool if it comes soon
                self.timer = self.loop.call_later(_DRAIN_S, self._finish, True)
            return
        self.held += parts
        self.held_size += len(pending) + end
        if self.flush_handle is None:
            due = self.last_write + self.interval_s
            if self.held_size < _WRITE_AT_ONCE and due > self.last_byte:
                self.flush_handle = self.loop.call_at(due, self._flush)
                return
        elif self.held_size < _WRITE_AT_ONCE:
            return
        self._flush()

    def body_ended(self, error: WorkerConnectionError | None) -> None:
        if self.ok:
            self._finish(True)  # the end marker came before: its body's end (or a break after it) closes the attempt
        elif error is not None:
            self._broke(ErrorCode.WORKER_LOST, f"lost worker {self.up.worker.worker_id}: {error}")
        else:
            self._fail(ErrorCode.WORKER_LOST, f"worker {self.up.worker.worker_id} stopped in the middle of the "
                       "answer; please retry")

    # -- inside
    def _flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        held, size = self.held, self.held_size
        self.held, self.held_size = [], 0
        out = self.out
        if out.gone:
            self._pause()  # the owner is told the client left, and ends the attempt
            return
        out.write(held, size)
        self.last_write = self.loop.time()
        if out.blocked:
            self._pause()

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.up.response.pause_reading()
        self._wake()

    def _end(self, parts: list[bytes | memoryview]) -> None:
        """The stream's last write: what is held, then `parts` (which hold the end marker)."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        parts = self.held + parts
        self.final = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        self.held, self.held_size = [], 0
        self._wake()

    def _fail(self, code: ErrorCode, message: str) -> None:
        """The stream broke before its end: one error event and the end marker end it; the event begun is dropped."""
        self.registry.mark_unreachable(self.up.worker)  # silent or cut off: no new requests until it beats
        self.metrics.count_error(code)
        self._end([sse_event(json.dumps(error_body(code, message))) + DONE_EVENT])
        self._finish(False)

    def _broke(self, code: ErrorCode, message: str) -> None:
        log.warning("stream from %s broke: %s", self.up.worker.worker_id, message)
        self._fail(code, message)

    def _due(self) -> None:
        """The token timeout's one timer: fires when the last bytes may be `timeout_s` old."""
        self.timer = None
        if self.final is not None:
            return
        now = self.loop.time()
        if self.paused:  # waiting for the reader, not the worker
            self.timer = self.loop.call_at(now + self.timeout_s, self._due)
        elif now - self.last_byte < self.timeout_s:
            self.timer = self.loop.call_at(self.last_byte + self.timeout_s, self._due)
        else:
            self._broke(ErrorCode.WORKER_TIMEOUT, f"worker {self.up.worker.worker_id} sent nothing for "
                        f"{self.timeout_s:.0f} s")

    def _finish(self, ok: bool | None) -> None:
        if self.finished:
            return
        self.finished = True
        for handle in (self.timer, self.flush_handle):
            if handle is not None:
                handle.cancel()
        self.timer = self.flush_handle = None
        self.up.finish(ok)
        self._wake()

    def _wake(self) -> None:
        if self.on_change is not None:
            self.on_change()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _observe(self, block: bytes) -> None:
        """Count relayed mid-stream errors; time the answer from its usage event (sent when the client asked for
        usage, and always for non-streaming requests)."""
        for data in sse_payloads(block):
            err = error_in_event(data)
            if err is not None:
                self.metrics.count_error(err.code)
            elif '"usage"' in data:
                try:
                    usage = json.loads(data).get("usage") or {}
                    self.metrics.observe_speed(int(usage.get("completion_tokens") or 0), self.up.first_at)
                except (ValueError, AttributeError, TypeError):
                    pass  # not ours to judge: the event is relayed as it is


class Relay(Output):
    """The blocks of one stream as an async iterator of bytes: the first event first, the end marker last, exactly
    once. `aclose()` always ends the attempt, even when iteration never started. `write_to` sends the stream
    straight to the client's connection instead (a streamed response under our server)."""

    def __init__(self, pump: StreamPump):
        self.pump = pump
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.done = False  # the last block was handed out

    # -- Output
    def write(self, parts: list[bytes | memoryview], size: int) -> None:
        self.parts += parts
        self.size += size
        self.pump._wake()  # the reader waits for blocks (a direct output's owner waits only for the end)

    @property
    def blocked(self) -> bool:
        return self.size > _QUEUE_HIGH_WATER

    # -- async iterator
    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        pump = self.pump
        if pump.out is None:
            pump.start(self)
        while True:
            if self.parts:
                parts = self.parts
                block = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
                self.parts, self.size = [], 0
                pump.resume()
                return block
            if pump.final is not None and not self.done:
                self.done = True
                return pump.final
            if self.done:
                raise StopAsyncIteration
            await pump.changed()

    async def aclose(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """`aclose`, for an owner with no task (controller/fast_chat.py)."""
        pump = self.pump
        if pump.out is not None:
            pump.close()
        else:  # never started: the attempt is ended here
            pump.up.finish(ok=None)
        # The owner is done with the stream: the links back to it go (the upstream holds its relay, one per stream;
        # the pump its output, a relay too when iterated; the relay holds the pump), or the lot and all it holds wait
        # for the cycle collector (tests/controller/test_request_garbage.py). The pump's own callbacks, still due
        # for an answer's last bytes, need neither.
        pump.up.relay = None
        pump.out = None

    def start_direct(self, body: DirectBody) -> None:
        """Start sending the stream to `body` now, from the caller's step (the dispatch, once the first event has
        passed its checks: controller/relay.py); `write_to` then waits for its end."""
        if self.pump.out is None:
            self.pump.start(body)

    async def write_to(self, body: DirectBody) -> bytes:
        """Send the stream to `body` until its end; the last write, for the owner to send with the body's end."""
        pump = self.pump
        self.start_direct(body)
        while pump.final is None:
            await pump.changed()
            if pump.paused:
                if body.gone:
                    raise ClientGone
                await body.drain()
                pump.resume()
        self.done = True
        return pump.final


def _tail(data: bytes, end: int, before: bytes = b"") -> bytes:
    """The end of `before + data[:end]` (complete events) from its third-last data line on: where the only events the
    relay reads can be. A worker ends its stream with them (an error event or the usage event, then the end marker)
    and sends nothing after, so the relay need not search every byte it forwards: searching whole blocks of a fast
    stream (a network read is up to hundreds of kB) was a third of the controller's CPU per relayed token."""
    at = end
    for _ in range(3):
        at = data.rfind(b"\ndata:", 0, at)
        if at < 0:
            return before + data[:end]
    return data[at:end]


def _ends(block: bytes) -> bool:
    """Whether a block of complete events holds the end marker."""
    return block.startswith(DONE_LINE) or _DONE_LATER_LINE in block
