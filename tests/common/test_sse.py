"""common/sse.py, the one SSE module: events framed here are read back unchanged by the parser the controller and the
UI use, whatever the line ends, however the bytes are cut; comments (pings) carry no data; the end marker has one
definition; and both streaming responses, served by a real server on loopback, read back event for event."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI

from common.bounded_http import bounded_http
from common.errors import ErrorCode, error_body
from common.sse import (DONE, DONE_EVENT, DONE_LINE, SSEBytesResponse, complete_events, error_in_event,
                        first_payload, payloads, sse_event, sse_payloads, sse_response)
from tests.support.served_app import served

TOKEN = json.dumps({"choices": [{"index": 0, "delta": {"content": "héllo \"error\" data: [DONE]"}}]})
DATA = [TOKEN, "plain", "", "a\nb", "a\r\nb\rc", "ends with a line end\n", "\n", "données ✓"]


async def chunks(*parts: bytes):
    for part in parts:
        yield part


async def read_all(*parts: bytes) -> list[str]:
    return [data async for data in payloads(chunks(*parts))]


def test_the_end_marker_is_one_event_framed_from_its_one_definition():
    assert sse_event(DONE) == DONE_EVENT == DONE_LINE + b"\r\n\r\n" == b"data: [DONE]\r\n\r\n"
    assert list(sse_payloads(DONE_EVENT)) == [DONE]


@pytest.mark.parametrize("data", DATA)
def test_framed_data_reads_back_unchanged_but_for_line_ends(data):
    framed = sse_event(data)
    assert framed.endswith(b"\r\n\r\n") and complete_events(framed) == len(framed)
    # SSE readers join an event's data lines with LF, whichever line end each had
    assert list(sse_payloads(framed)) == [data.replace("\r\n", "\n").replace("\r", "\n")]


def test_multi_line_data_goes_as_one_data_line_per_line():
    assert sse_event("a\nb\r\nc") == b"data: a\r\ndata: b\r\ndata: c\r\n\r\n"
    assert sse_event("a\n") == b"data: a\r\ndata: \r\n\r\n"  # the last (empty) line is kept


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_comments_fields_and_line_ends_as_other_servers_send_them(line_end):
    def event(*lines: bytes) -> bytes:
        return b"".join(line + line_end for line in lines) + line_end

    block = (event(b": ping - 2026-12-03 21:00:00") + event(b"data:no space", b"data:  two spaces")
             + event(b"event: message", b"id: 7", b"retry: 100", b"data: {}") + event(b":only a comment")
             + event(b"data: [DONE]"))
    assert complete_events(block) == len(block)
    assert list(sse_payloads(block)) == ["no space\n two spaces", "{}", DONE]


@pytest.mark.parametrize(("buffer", "end"), [
    (b"", 0), (b"data: a", 0), (b"data: a\r\n", 0), (b"data: a\r\n\r", 0), (b"data: a\r\n\r\n", 11),
    (b"data: a\r\n\r\ndata: b", 11), (b"data: a\n\ndata: b\n", 9), (b"data: a\r\n\r\ndata: b\n\n", 20),
])
def test_complete_events_ends_at_the_last_blank_line(buffer, end):
    assert complete_events(buffer) == end


async def test_a_stream_cut_anywhere_reads_as_the_same_events():
    stream = b"".join(sse_event(d) for d in DATA) + b": ping\r\n\r\n" + DONE_EVENT
    expected = [d.replace("\r\n", "\n").replace("\r", "\n") for d in DATA] + [DONE]
    assert await read_all(stream) == expected
    assert await read_all(*(stream[i:i + 1] for i in range(len(stream)))) == expected  # a byte at a time
    for cut in range(1, len(stream)):
        assert await read_all(stream[:cut], stream[cut:]) == expected, cut


async def test_an_unfinished_event_at_the_end_is_dropped():
    assert await read_all(sse_event("whole"), b"data: half") == ["whole"]
    assert await read_all(b"data: half\r\n") == []


def test_error_events_are_told_from_answers_by_their_shape_not_their_text():
    err = error_in_event(json.dumps(error_body(ErrorCode.WORKER_LOST, "worker w1 failed")))
    assert err is not None and err.code == ErrorCode.WORKER_LOST and err.message == "worker w1 failed"
    assert error_in_event(TOKEN) is None  # an answer that talks about "error"
    assert error_in_event(json.dumps({"error": "x"})[:-1]) is None  # not JSON: relayed, never raised
    assert error_in_event(DONE) is None


async def test_both_responses_read_back_over_a_real_socket():
    events = [TOKEN, "a\nb", json.dumps(error_body(ErrorCode.ENGINE_ERROR, "boom")), DONE]

    async def worker_events():
        for e in events:
            yield e

    async def relay_blocks():  # what the relay yields: blocks of complete events, the end marker last
        yield sse_event(events[0]) + sse_event(events[1])
        yield sse_event(events[2]) + DONE_EVENT

    app = FastAPI()
    app.get("/framed")(lambda: sse_response(worker_events(), interval_s=0.01))
    app.get("/relayed")(lambda: SSEBytesResponse(relay_blocks(), {"X-Worker-ID": "w1"}))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for path in ("/framed", "/relayed"):
            async with client.stream("GET", path) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["x-accel-buffering"] == "no"
                got = [data async for data in payloads(response.aiter_bytes())]
            assert got == events, path
            assert error_in_event(got[2]).code == ErrorCode.ENGINE_ERROR


async def test_a_workers_stream_sends_its_head_with_its_first_event_not_before():
    """A response's head is sent before the first event is taken from the iterator; held until then, the
    head and the first event go out in one write, and a relay reads them in one read (issue 26)."""
    first_asked, release = asyncio.Event(), asyncio.Event()

    async def events():
        first_asked.set()
        await release.wait()  # the first token is not there yet
        yield TOKEN
        yield DONE

    app = FastAPI()
    app.get("/slow")(lambda: sse_response(events(), interval_s=0.01))
    async with served(app, http=bounded_http()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        await asyncio.wait_for(first_asked.wait(), 10)
        with pytest.raises(TimeoutError):  # the iterator is asked for its first event: nothing has gone yet
            await asyncio.wait_for(reader.read(65536), 0.3)
        release.set()
        first = await asyncio.wait_for(reader.read(65536), 10)
        head, _, rest = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert sse_event(TOKEN) in rest, f"the head came without the first event: {first!r}"  # one write
        got = first
        async with asyncio.timeout(10):
            while b"data: [DONE]" not in got:
                got += await reader.read(65536)
        writer.close()


async def test_a_silent_stream_gets_pings_and_its_events_unchanged():
    release = asyncio.Event()

    async def events():
        yield TOKEN
        await release.wait()
        yield DONE

    app = FastAPI()
    app.get("/quiet")(lambda: sse_response(events(), interval_s=0.01, ping_s=0.2))
    async with served(app, http=bounded_http()) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("GET", "/quiet") as response:
            body = response.aiter_bytes()
            got = b""
            while got.count(b": ping\r\n\r\n") < 2:  # a comment each 0.2 s while the source is silent
                got += await asyncio.wait_for(anext(body), 5)
            release.set()
            got += b"".join([chunk async for chunk in body])
    assert [data async for data in payloads(chunks(got))] == [TOKEN, DONE]


@pytest.mark.parametrize("http", ["auto", "bounded"])
@pytest.mark.parametrize("first", [True, False], ids=["mid-stream", "before-the-first-event"])
async def test_a_client_that_leaves_closes_the_source(http, first):
    """Under our server the watch takes its protocol's word; under another, a task waits for the disconnect."""
    waiting, closed = asyncio.Event(), asyncio.Event()

    async def events():
        try:
            if first:
                yield TOKEN
            waiting.set()
            await asyncio.Event().wait()  # a long generation
            yield DONE
        finally:
            closed.set()  # where a worker's generation is aborted

    app = FastAPI()
    app.get("/long")(lambda: sse_response(events(), interval_s=0.01))
    async with served(app, http=bounded_http() if http == "bounded" else "auto") as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /long HTTP/1.1\r\nHost: test\r\n\r\n")
        if first:
            assert b"data: " in await asyncio.wait_for(reader.read(65536), 10)
        await asyncio.wait_for(waiting.wait(), 10)
        writer.close()
        await asyncio.wait_for(closed.wait(), 10)


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_the_first_payload_is_the_parsers_first_however_the_bytes_are_cut(line_end):
    # first_payload reads the usual first event in place: it must say what the parser says, for every prefix
    def event(*lines: bytes) -> bytes:
        return b"".join(line + line_end for line in lines) + line_end

    streams = [b"".join(sse_event(d) for d in DATA) + DONE_EVENT,
               event(b": ping") + event(b"data:no space", b"data:  two spaces") + event(b"data: [DONE]"),
               event(b"event: message", b"data: {}") + event(b"data: x"),
               event(b"data: a\rb") + event(b"data: c"),
               b"data: mixed\r\n\ndata: next\n\r\n", b"data: lf then\n\r\n\r\n", b"data:\r\n\r\n", b"data: \n\n"]
    for stream in streams:
        for cut in range(len(stream) + 1):
            buffer = stream[:cut]
            assert first_payload(buffer) == next(sse_payloads(buffer[:complete_events(buffer)]), None), buffer
    assert first_payload(sse_event(TOKEN) + DONE_EVENT) == TOKEN
