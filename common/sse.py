"""Server-sent events, the one module: the end marker, framing, parsing, and the streaming response.

Who uses what: a worker frames its chunks (`sse_data`, `sse_response`); the controller relays the worker's bytes
unparsed; both send ready blocks with `SSEBytesResponse`. The controller reads only the few events it must
(`complete_events`, `sse_payloads`, `first_payload`, `error_in_event`: controller/relay.py), or collects a whole
answer (`payloads`: controller/aggregate.py); the UI's client reads the controller's stream (`payloads`:
app/client.py). Every stream ends with exactly one end marker event, after at most one error event (the one error
body, common/errors.py).

Lines end with CRLF (what we send) or LF; a lone CR, which the SSE spec also allows, is sent by no server here and
is not read as a line end. Parsing works on bytes and finds event ends with byte searches: the relay calls it on
hot paths (see the costs noted in controller/relay.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

from pydantic import BaseModel
from starlette.responses import StreamingResponse

from common.coalesce import coalesce
from common.direct_body import DirectBody, one_write
from common.disconnect import ClientGone, ClientWatch
from common.errors import ServingError

DONE = "[DONE]"  # the end marker (OpenAI's): the data of a stream's last event
DONE_LINE = b"data: " + DONE.encode()
DONE_EVENT = DONE_LINE + b"\r\n\r\n"  # the end marker as it is framed here

_LINE_END = re.compile(r"\r\n|\r|\n")


# --- framing -------------------------------------------------------------------------------------------------------

def sse_data(payload: BaseModel) -> str:
    """A wire model as an event's data (JSON text, without the fields that are None)."""
    return payload.model_dump_json(exclude_none=True)


def sse_event(data: str) -> bytes:
    """One framed event. Data with line ends goes as one `data:` line per line (readers join them with LF)."""
    if "\n" in data or "\r" in data:
        return "".join(f"data: {line}\r\n" for line in _LINE_END.split(data)).encode() + b"\r\n"
    return b"data: " + data.encode() + b"\r\n\r\n"


# --- parsing -------------------------------------------------------------------------------------------------------

def complete_events(buffer: bytes) -> int:
    """Length of the run of complete events at the start of `buffer` (an event ends with a blank line)."""
    if buffer.endswith(b"\n\n"):  # the usual case: a worker's write ends with an event
        return len(buffer)
    # An absent needle costs a search of the whole buffer: a CRLF stream has no LF end at all, so the LF end is
    # only looked for past the last CRLF one.
    crlf = buffer.rfind(b"\n\r\n")
    lf = buffer.rfind(b"\n\n", max(crlf, 0))
    return max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)


def sse_payloads(block: bytes) -> Iterator[str]:
    """The data of each event in a block of complete events (comment-only events, like pings, have none)."""
    for event in block.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if lines:
            yield b"\n".join(lines).decode()


def first_payload(buffer: bytes) -> str | None:
    """The data of the first event with data among the complete events at the start of `buffer`, None without one:
    `sse_payloads`' first, without splitting the whole buffer. The usual first event (one data line, then a blank
    line) is read where it lies; anything else goes through `sse_payloads`. On every first token's way (issue 26),
    where the buffer may hold the whole answer."""
    if buffer.startswith(b"data:"):
        end = buffer.find(b"\n")
        if end > 0:
            crlf = buffer[end - 1] == 0x0D
            if buffer.startswith(b"\r\n" if crlf else b"\n", end + 1):  # a blank line: the event is this line
                return buffer[5:end - 1 if crlf else end].removeprefix(b" ").decode()
    return next(sse_payloads(buffer[:complete_events(buffer)]), None)


async def payloads(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each event of a byte stream, as each event completes, however the bytes are cut (a network read,
    or the relay's blocks of complete events). An unfinished event at the end of the stream is dropped."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        end = complete_events(pending)
        if end:
            for data in sse_payloads(pending[:end]):
                yield data
            pending = pending[end:]


def error_in_event(data: str) -> ServingError | None:
    """The error an event's data carries (the one error body, common/errors.py), or None for any other event."""
    if '"error"' not in data[:20]:
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return ServingError.from_body(payload) if isinstance(payload, dict) and "error" in payload else None


# --- responses -----------------------------------------------------------------------------------------------------

PING_S = 15.0  # a stream silent this long gets a comment: proxies and browsers close streams that stay quiet
_PING = b": ping\r\n\r\n"


def sse_response(events: AsyncIterator[str], headers: dict[str, str] | None = None,
                 interval_s: float = 0.0, ping_s: float = PING_S) -> SSEBytesResponse:
    """`events` yields ready `data:` payloads (JSON text or DONE). Events that follow the last write closer than
    `interval_s` go out together in the next write (common/coalesce.py), a comment after `ping_s` seconds without
    one; a client that leaves closes `events` (which is how a worker's generation is aborted). Open, the stream
    holds its request's task and the coalescer's reader: sse-starlette's response, used before, ran four more tasks
    per stream and a cancel scope per event, and under 500 streams the worker's cycle collector walked them all in
    each of its pauses (tests/common/test_stream_footprint.py, issue 26)."""
    return SSEBytesResponse(coalesce(_framed(events), lambda _: interval_s, keepalive=(ping_s, _PING)), headers)


async def _framed(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    # Framed here, as bytes: framed events can be joined into one write.
    async for e in events:
        yield sse_event(e)


def sse_head(headers: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """The head's headers of a stream (`SSEBytesResponse`'s), with `headers`."""
    more = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else []
    return [*_SSE_HEAD[:2], *more, _SSE_HEAD[2]]


_SSE_HEAD = ((b"cache-control", b"no-store"), (b"x-accel-buffering", b"no"),
             (b"content-type", b"text/event-stream; charset=utf-8"))


class SSEBytesResponse(StreamingResponse):
    """Streams ready blocks of SSE events (the controller's relay; a worker's framed events, `sse_response`) with no
    per-event work, from the request's own task: no framing, no ping task (a relay's keep-alive comments are the
    worker's; a worker's come from its coalescer). It watches for the client leaving with the request's
    ClientWatch when given one (the controller's, started when the body was read; it stops it), else its own.

    The head goes out with the first block and the block that ends with the end marker with the end of the body,
    each pair in one write (apart, a worker's head and first event reached the controller in two network reads, each
    a wakeup on the way to the first token: issue 26). The blocks iterator is always run to its end or closed here,
    so its cleanup (returning or closing the worker's connection) runs now. A client disconnect cancels the stream,
    which closes the iterator and so the worker's stream. An iterator that can write itself to the client's
    connection (`write_to`: the relay's, controller/stream_pump.py) does so where the server offers one
    (common/direct_body.py); only its last block comes back here. Given `direct`, whose head the relay began
    (controller/app.py), no head is sent here."""

    media_type = "text/event-stream"

    def __init__(self, blocks: AsyncIterator[bytes], headers: dict[str, str] | None = None,
                 watch: ClientWatch | None = None, direct: DirectBody | None = None):
        # (StreamingResponse's own __init__ is not run: its headers are `sse_head`'s, as in the relay's early head)
        self.body_iterator = self._blocks = blocks
        self.status_code = 200
        self.background = None
        self._watch = watch
        self._direct = direct if direct is not None and direct.begun else None
        self._began = self._direct is not None
        self.raw_headers = sse_head(headers) if not self._began else []  # (a begun head was written with these)

    async def __call__(self, scope, receive, send) -> None:
        watch = self._watch or ClientWatch(receive, scope)
        try:
            try:
                await watch.guard(self._stream(scope, send))
            finally:
                # The response is complete (which the server reports as a disconnect from now on, so this is not
                # watched): let the relay finish reading upstream after the end marker.
                watch.stop()
            async for _ in self._blocks:
                pass
        except ClientGone:  # the client left: nothing more to send, and not an error
            if not self._began:  # it left before the answer began: the access line and the counters read 499
                await send({"type": "http.response.start", "status": 499, "headers": []})  # the server drops it
        finally:
            await self._blocks.aclose()  # type: ignore[attr-defined]

    async def _stream(self, scope, send) -> None:
        write_to = getattr(self._blocks, "write_to", None)
        direct = self._direct
        if direct is None and write_to is not None:
            await self._start(send)
            direct = DirectBody.of(scope)
        if direct is not None:
            try:
                last = await write_to(direct)
            finally:
                direct.release()  # a head still held: the answer ended within the worker's first read
            await send({"type": "http.response.body", "body": last, "more_body": False})
            return
        async for block in self._blocks:
            last = block.endswith(DONE_EVENT)
            body = {"type": "http.response.body", "body": block, "more_body": not last}
            if self._began:
                await send(body)
            else:  # the head with the first block, in one write: a relay reads them in one read (issue 26)
                with one_write(scope):
                    await self._start(send)
                    await send(body)
            if last:
                return
        if not self._began:
            await self._start(send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start(self, send) -> None:
        self._began = True
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
