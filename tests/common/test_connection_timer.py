"""The server protocol's one timer per connection (common/bounded_http.py): a kept-alive connection is closed once
it has been idle for the keep-alive time, however many requests it served before; never while it is in use; a
connection that sends nothing is closed after the head's time; a head that stops coming gets its 408."""

from __future__ import annotations

import asyncio
import time

from common.bounded_http import bounded_http
from tests.support.served_app import served

KEEP_ALIVE_S = 1.0
HEAD_S = 1.0
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def ok(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head + await asyncio.wait_for(reader.readexactly(2), 10)


async def closed_after(reader: asyncio.StreamReader, since: float, limit_s: float) -> tuple[float, bytes]:
    """Seconds from `since` until the server closed the connection, and what it sent last (fails if it had not
    closed within `limit_s`)."""
    rest = await asyncio.wait_for(reader.read(), limit_s)
    return time.monotonic() - since, rest


async def test_a_kept_alive_connection_in_use_stays_open_then_closes_after_the_keep_alive_idle():
    async with served(ok, http=bounded_http(head_timeout_s=HEAD_S), timeout_keep_alive=KEEP_ALIVE_S) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        # In use for three keep-alive times and more: each request comes well within the keep-alive of the last
        # answer, so the connection must stay open past the timer armed after the first.
        started = time.monotonic()
        served_n = 0
        while time.monotonic() - started < 3 * KEEP_ALIVE_S:
            writer.write(REQUEST)
            assert (await answer(reader)).endswith(b"\r\n\r\nok")
            last = time.monotonic()
            served_n += 1
            await asyncio.sleep(KEEP_ALIVE_S / 10)
        waited, rest = await closed_after(reader, last, KEEP_ALIVE_S + 10)
        assert rest == b"", "an idle connection is closed without an answer"
        assert waited >= KEEP_ALIVE_S * 0.9, f"closed {waited:.2f} s after its last answer, before the keep-alive"
        assert served_n >= 10
        writer.close()


async def test_a_connection_that_sends_nothing_is_closed_after_the_heads_time():
    async with served(ok, http=bounded_http(head_timeout_s=HEAD_S), timeout_keep_alive=30) as url:
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        waited, rest = await closed_after(reader, opened, HEAD_S + 10)
        assert rest == b"" and waited >= HEAD_S * 0.9
        writer.close()


async def test_a_head_that_stops_coming_after_an_answer_gets_408_timed_from_its_first_bytes():
    async with served(ok, http=bounded_http(head_timeout_s=HEAD_S), timeout_keep_alive=30) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(REQUEST)
        assert (await answer(reader)).endswith(b"ok")
        await asyncio.sleep(HEAD_S / 2)  # (an idle wait first: the head's time counts from its own first bytes)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        waited, rest = await closed_after(reader, began, HEAD_S + 10)
        assert rest.startswith(b"HTTP/1.1 408 "), rest[:100]
        assert waited >= HEAD_S * 0.9
        writer.close()
