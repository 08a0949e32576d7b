"""The middle of a streamed response written straight to the client's connection, below ASGI (issue 26).

An ASGI `send` of a body chunk passes through every middleware's send wrapper and uvicorn's checks, and uvicorn joins
the chunk and its HTTP/1.1 framing into a new bytes object: for a fast stream, whose network reads are up to
hundreds of kB, that was more of the controller's CPU than moving the bytes. The relay's stream phase
(controller/stream_pump.py) writes here instead, from the worker connection's own callbacks: each write is one chunk
of the chunked body, its framing and parts handed to the transport as a list (one writev, no copy). The response's
head and its last write still go through `send`, so the middlewares see its status and its end, and uvicorn knows
when it is complete (keep-alive, the next pipelined request).

The server protocol with our bounds (common/bounded_http.py) offers this as an ASGI scope extension; under any other
server (Gradio's, a test's in-process transport) it is absent, and the relay sends its blocks through `send`.
"""

from __future__ import annotations

from typing import Any

EXTENSION = "internvl.direct_body"  # scope["extensions"][EXTENSION]: uvicorn's RequestResponseCycle of the request


class DirectBody:
    """The body of one response under way, once its head has gone through `send` (chunked: it has no length)."""

    __slots__ = ("_cycle", "_transport")

    def __init__(self, cycle: Any):
        self._cycle = cycle
        self._transport = cycle.transport

    @classmethod
    def of(cls, scope: dict) -> DirectBody | None:
        """The request's direct body, where the server offers one and the response's head went out chunked."""
        cycle = scope.get("extensions", {}).get(EXTENSION)
        if cycle is None or not cycle.response_started or not cycle.chunked_encoding or cycle.response_complete:
            return None
        return cls(cycle)

    def write(self, parts: list[bytes | memoryview], size: int) -> None:
        """One chunk of the body: `parts`, `size` bytes in all (not 0: a zero-length chunk ends a body)."""
        self._transport.writelines([b"%x\r\n" % size, *parts, b"\r\n"])

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
