"""The first token's way through the controller (issue 26): a streamed answer's response head goes to the client
together with its first event, in one write made the moment the first event has passed its checks. A real controller
process, a stand-in worker whose tokens come a second apart, and a client on a raw socket that looks at what its
first read brings. Sent apart, the head woke the client for nothing it could use yet; the test's client then read
the head alone (on main it did, in every try)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.chat_http import body
from tests.support.raw_http import RawClient
from tests.support.stack import start_controller
from tests.support.standin_workers import standins, tokens
from tests.support.stream_chunks import CHUNK


@pytest.fixture(scope="module")
def controller(log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=600.0, check_worker_reachable=True)
    yield ctl
    ctl.stop()


async def test_the_head_and_the_first_event_come_in_one_read(controller):
    async with standins(controller.url, {"slow": tokens(2, gap_s=1.0)}):
        for _ in range(3):
            client = await RawClient().send(controller.url, body("m", stream=True))
            first = await asyncio.wait_for(client.reader.read(65536), 10)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"x-worker-id: slow" in head.lower()
            assert CHUNK.encode() in rest, f"the first read brought the head without the first event: {first!r}"
            assert rest.count(CHUNK.encode()) == 1  # the second token is a second away
            end = await client.read_until(b"data: [DONE]")
            assert end.count(CHUNK.encode()) == 1  # the second token, once: nothing written twice
            await client.leave()
