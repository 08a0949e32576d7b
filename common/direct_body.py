"""The middle of a streamed response written straight to the client's connection, below ASGI (issue 26).

An ASGI `send` of a body chunk passes through every middleware's send wrapper and uvicorn's checks, and uvicorn joins
the chunk and its HTTP/1.1 framing into a new bytes object: for a fast stream, whose network reads are up to
hundreds of kB, that was more of the controller's CPU than moving the bytes. The relay's stream phase
(controller/stream_pump.py) writes here instead, from the worker connection's own callbacks: each write is one chunk
of the chunked body, its framing and parts handed to the transport as a list (one writev, no copy). The last write
still goes through `send`, so uvicorn knows when the response is complete (keep-alive, the next pipelined request).

The head goes through `send` too, or, for a streamed answer, its owner writes it here (`unstarted`, then `begin`,
telling the request's record itself, common/logging_setup.py): it then goes out with the body's first chunk, in one
write, from wherever that chunk is written (the relay starts the stream from the worker connection's callback, the
moment the first event has passed its checks). Sent apart, through `send`, the head woke the client once for
nothing it could use yet, and waited for the request's task to unwind the dispatch and build its response
(issue 26).

The server protocol with our bounds (common/bounded_http.py) offers this as an ASGI scope extension; under any other
server (Gradio's, a test's in-process transport) it is absent, and the relay sends its blocks through `send`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

EXTENSION = "internvl.direct_body"  # scope["extensions"][EXTENSION]: uvicorn's RequestResponseCycle of the request


class DirectBody:
    """The body of one response under way (chunked: it has no length), once its head has gone through `send` or
    `begin`."""

    __slots__ = ("_cycle", "_transport", "_head", "begun")

    def __init__(self, cycle: Any):
        self._cycle = cycle
        self._transport = cycle.transport
        self._head: bytes | None = None  # `begin`'s head, until it goes with the first chunk
        self.begun = False  # `begin` was called: the head is this object's to write, not `send`'s

    @classmethod
    def of(cls, scope: dict) -> DirectBody | None:
        """The request's direct body, where the server offers one and the response's head went out chunked."""
        cycle = scope.get("extensions", {}).get(EXTENSION)
        if cycle is None or not cycle.response_started or not cycle.chunked_encoding or cycle.response_complete:
            return None
        return cls(cycle)

    @classmethod
    def unstarted(cls, scope: dict) -> DirectBody | None:
        """The request's direct body, where the server offers one and no head was sent yet: `begin` writes it."""
        cycle = scope.get("extensions", {}).get(EXTENSION)
        if cycle is None or cycle.response_started:
            return None
        return cls(cycle)

    def begin(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The response's head, as the server's `send` would write it (its default headers first; chunked), to go
        with the first chunk; from now on the server's `send` takes only the body's end. ValueError, and nothing
        begun, for a header the server would refuse; RuntimeError for a response whose head was begun or sent."""
        cycle = self._cycle
        if self.begun or cycle.response_started:
            raise RuntimeError("this response's head was begun already")
        # The server's checks, on all names at once and all values at once: each looks for a single character, so
        # one search of the names (values) joined finds what a search of each would (14 searches per head were on
        # every first token's way, issue 26). The server's own default headers need none. The names and values are
        # taken apart by zip, not by two generators (each step of one is a Python call, on the first token's way).
        names, values = zip(*headers) if headers else ((), ())
        if HEADER_RE.search(b"".join(names)) or HEADER_VALUE_RE.search(b"".join(values)):
            name, value = next((n, v) for n, v in headers if HEADER_RE.search(n) or HEADER_VALUE_RE.search(v))
            raise ValueError(f"not a valid HTTP header: {name!r}: {value!r}")
        head = [STATUS_LINE[status]]
        lines = [*cycle.default_headers, *headers]
        if lines:  # (joined by C calls: a formatting step per header was a Python frame each, on the first token's way)
            head += [b"\r\n".join(map(b": ".join, lines)), b"\r\n"]
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"transfer-encoding: chunked\r\n\r\n")
        self._head = b"".join(head)
        self.begun = True
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        cycle.chunked_encoding = True

    def release(self) -> None:
        """Write a head that is still held: before the body's end goes through `send` (an answer that ended before
        its first chunk)."""
        if self._head is not None:
            head, self._head = self._head, None
            if not self.gone:
                self._transport.write(head)

    def write(self, parts: list[bytes | memoryview], size: int) -> None:
        """One chunk of the body: `parts`, `size` bytes in all (not 0: a zero-length chunk ends a body)."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.writelines([head, b"%x\r\n" % size, *parts, b"\r\n"])
            return
        self._transport.writelines([b"%x\r\n" % size, *parts, b"\r\n"])

    def end(self, last: bytes) -> None:
        """The body's last chunk (`last`, may be empty) and its end, the response then complete, as the server's `send`
        of the body's last message does it (the connection closed unless kept alive; the server told, for its next
        request): for an owner with no task to `send` from (controller/fast_chat.py). Nothing for a client gone."""
        cycle = self._cycle
        if self.gone:
            return
        parts = [b"%x\r\n" % len(last), last, b"\r\n0\r\n\r\n"] if last else [b"0\r\n\r\n"]
        if self._head is not None:
            parts.insert(0, self._head)
            self._head = None
        self._transport.writelines(parts)
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self._transport.close()
        cycle.on_response()

    @property
    def blocked(self) -> bool:
        """Whether the client is behind: the transport holds more than its high-water mark unsent."""
        return self._cycle.flow.write_paused

    async def drain(self) -> None:
        """Until the client has taken enough that writing may go on (or it left)."""
        if self._cycle.flow.write_paused and not self.gone:
            await self._cycle.flow.drain()

    @property
    def gone(self) -> bool:
        """Whether the client left (nothing written now reaches it)."""
        return self._cycle.disconnected or self._transport.is_closing()


@contextlib.contextmanager
def one_write(scope: dict) -> Iterator[None]:
    """What the server writes for this request within the block goes out in one write at its end, where the server
    offers its connection (elsewhere the writes go as they come): a worker's response head and first event, sent by
    two ASGI messages through its middlewares, reach the controller in one network read (issue 26)."""
    cycle = scope.get("extensions", {}).get(EXTENSION)
    if cycle is None:
        yield
        return
    transport, held = cycle.transport, _Held(cycle.transport)
    cycle.transport = held
    try:
        yield
    finally:
        cycle.transport = transport
        if held.kept and not transport.is_closing():
            transport.writelines(held.kept)
        if held.close_asked:
            transport.close()


class _Held:
    """The transport as the server sees it within `one_write`: writes are kept, a close waits for them; anything
    else is the transport's."""

    __slots__ = ("_transport", "close_asked", "kept")

    def __init__(self, transport: Any):
        self._transport = transport
        self.kept: list[bytes] = []
        self.close_asked = False

    def write(self, data: bytes) -> None:
        self.kept.append(data)

    def close(self) -> None:
        self.close_asked = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
