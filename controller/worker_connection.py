"""One kept-alive connection from the controller to a worker, and the response under way on it: the half of the
controller's client to its workers (controller/worker_http.py, the pool and the requests) that the network drives.

Its reads go through httptools' C parser (the one uvicorn uses) from the event loop's own callbacks: no task, stream
object or coroutine of its own per read. A response's body waits for its reader in a list of chunks, or goes straight
to a consumer from those callbacks (the relay's stream phase, controller/stream_pump.py); either way both directions
are bounded (the head's size, unread bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import httptools

if TYPE_CHECKING:
    from controller.worker_http import WorkerClient

MAX_HEAD_BYTES = 64 * 1024  # a worker's status line and headers; more is not a worker of ours
_HIGH_WATER = 1024 * 1024  # unread body bytes past which the connection stops reading until the relay catches up


class WorkerConnectionError(ConnectionError):
    """The connection to a worker broke, or what came back was not HTTP."""


class WorkerUnreachable(WorkerConnectionError):
    """No connection could be made to the worker (refused, no route, or not within the connect timeout)."""


class BodyConsumer(Protocol):
    """Takes a response's body from the connection's callbacks, as the network brings it (`WorkerResponse.deliver_to`):
    no reader task is woken per read (the relay's stream phase, controller/stream_pump.py)."""

    def body_received(self, data: bytes) -> None: ...

    def body_ended(self, error: WorkerConnectionError | None) -> None:
        """The body is complete (None), or the connection broke first."""


class Connection(asyncio.BufferedProtocol):
    """One connection and the response under way on it. Parser callbacks fill `chunks`, where a reader waiting on
    `waiter` takes them, or hand them to `consumer`.

    Its reads land in its client's one read buffer (`get_buffer`), which the parser has read (its callbacks get
    copies) before the next read anywhere: the event loop's own reads made a new bytes object of each read, a copy of
    up to 256 KiB the parser copies again (a fast stream's reads are that large: 4-8% of the relay's CPU per token,
    bench/relay_floor.py --tokens 60000, issue 26)."""

    def __init__(self, client: WorkerClient, key: tuple[str, int, bool], loop: asyncio.AbstractEventLoop):
        self.client = client
        self.key = key
        self.loop = loop  # (looked up once: CPython 3.11 asks the kernel for its pid at each lookup)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.drained: asyncio.Future | None = None  # set while writing is paused
        self.error: WorkerConnectionError | None = None
        # Its request's task is still in `WorkerClient.request`: a release meanwhile (an answer `early` took and that
        # ended at once) waits for it to leave, so the connection is not handed to another request under it
        self.requesting = False
        self.put_back_asked = False
        self.reset()

    def reset(self) -> None:
        self.answer: WorkerResponse | None = None  # the response object, once made (`WorkerResponse.of`)
        self.early: Callable[[WorkerResponse], None] | None = None  # `WorkerClient.request`'s `early`
        self.watcher: Callable[[], None] | None = None  # told of anything new, with no task waiting (`send_now`)
        self.status = 0
        self.keep_alive = False
        self.head_bytes = 0
        self.head_tail = b""  # the last bytes of the head so far (its end may span two reads)
        self.chunks: list[bytes] = []
        self.unread = 0
        self.complete = False  # the response's body has ended
        self.reading_paused = False
        self.idle_since = 0.0
        self.consumer: BodyConsumer | None = None

    # -- asyncio.BufferedProtocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.client.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.client.read_buffer[:nbytes]
        if not self.status:  # the head is not complete: its size is counted here, before anything is parsed
            # (by the read, not by a Python callback per header: those were a measurable part of every first token's
            # way, issue 26)
            self.head_bytes += self._head_part(data.obj, nbytes)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._broken(WorkerConnectionError(f"the worker's response head is over {MAX_HEAD_BYTES // 1024} KiB"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(WorkerConnectionError("the worker asked to switch protocols"))
        except httptools.HttpParserError as exc:
            self._broken(WorkerConnectionError(f"the worker's response is not valid HTTP/1.1 ({exc})"))

    def _head_part(self, buffer: bytearray, nbytes: int) -> int:
        """How much of a read (the first `nbytes` of `buffer`) while the head is not complete is head (its end may
        span two reads)."""
        end = buffer.find(b"\r\n\r\n", 0, nbytes)
        if end >= 0:
            return end + 4
        if self.head_tail:
            spans = (self.head_tail + buffer[:min(3, nbytes)]).find(b"\r\n\r\n")
            if spans >= 0:
                return spans + 4 - len(self.head_tail)
        self.head_tail = bytes((self.head_tail + buffer[:nbytes])[-3:] if nbytes < 3 else buffer[nbytes - 3:nbytes])
        return nbytes

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.forget(self)
        if self.error is None and not self.complete:
            reason = f": {exc}" if exc else ""
            self.error = WorkerConnectionError(f"the worker closed the connection{reason}")
        consumer, self.consumer = self.consumer, None
        if consumer is not None and not self.complete:
            consumer.body_ended(self.error)
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # asked here: at the message's end llhttp has reset it
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.consumer is not None:
            self.consumer.body_received(body)
            return
        self.chunks.append(body)
        self.unread += len(body)
        if self.unread > _HIGH_WATER:
            self.pause()
        if self.early is not None:
            self.early(WorkerResponse.of(self))
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.body_ended(None)
        self._wake()

    # -- for WorkerClient and WorkerResponse
    def _broken(self, error: WorkerConnectionError) -> None:
        self.error = error
        self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self.watcher is not None:
            self.watcher()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the parser has something new (headers, body, the end) or the connection broke."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.unread = 0
        self.resume()
        return data

    def handed_over(self) -> bool:
        """Whether `early` took the response (a consumer reads it, or it was already ended): from then on the
        request's own failure (its task cancelled as the first event came) is not the response's."""
        return self.answer is not None and (self.consumer is not None or self.answer.closed)

    def pause(self) -> None:
        """Read nothing more from the worker until `resume` (its reader is behind)."""
        if not self.reading_paused and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()


class WorkerResponse:
    """A worker's answer once its headers have come: `status`, then the body as it arrives. End it with `release()`
    (a body read to its end puts the connection back for the next request) or `close()` (anything else; closing is
    also how a worker learns its client left, and it stops generating)."""

    __slots__ = ("_conn", "_ended", "status")

    def __init__(self, conn: Connection):
        self._conn = conn
        self._ended = False
        self.status = conn.status

    @classmethod
    def of(cls, conn: Connection) -> WorkerResponse:
        """The one response object of the connection's response under way (made once its head has come)."""
        if conn.answer is None:
            conn.answer = cls(conn)
        return conn.answer

    async def readany(self) -> bytes:
        """What the network has brought since the last read, waiting for some; b"" once the body has ended.
        WorkerConnectionError when the connection broke first."""
        conn = self._conn
        while not conn.chunks:
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait()
        return conn.take()

    def peek(self) -> bytes:
        """What has arrived and not been read, left unread."""
        chunks = self._conn.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read_nowait(self) -> bytes:
        """What has arrived and not been read, without waiting (b"" when nothing has)."""
        return self._conn.take() if self._conn.chunks else b""

    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.chunks

    def deliver_to(self, consumer: BodyConsumer) -> None:
        """From now on the body goes to `consumer` as it arrives, what was read before first. The consumer may end
        this response from its callbacks; it gets nothing more then."""
        conn = self._conn
        if conn.chunks:
            consumer.body_received(conn.take())
        if self._ended:
            return
        if conn.complete:
            consumer.body_ended(None)
        elif conn.error is not None:
            consumer.body_ended(conn.error)
        else:
            conn.consumer = consumer

    def pause_reading(self) -> None:
        """Read nothing more from the worker until `resume_reading` (its consumer's reader is behind)."""
        self._conn.pause()

    def resume_reading(self) -> None:
        self._conn.resume()

    async def read(self, limit: int) -> bytes:
        """The body, up to `limit` bytes (an error answer, a health check): the rest is not read."""
        out = bytearray()
        while len(out) < limit and (chunk := await self.readany()):
            out += chunk
        return bytes(out[:limit])

    @property
    def closed(self) -> bool:
        """Whether this response was ended (released or closed)."""
        return self._ended

    def release(self) -> None:
        if not self._ended:
            self._ended = True
            self._conn.consumer = None
            self._conn.client.put_back(self._conn)

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self._conn.consumer = None
            self._conn.transport.abort()
