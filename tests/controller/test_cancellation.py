"""The controller lets go of a worker as soon as nobody waits for the answer: a real controller process, stand-in
workers (tests/support/standin_workers.py) that record when their connection closed, and a client on a raw socket
so that "the client left" is exactly one close().

- The client leaves before the first token (streaming or not): the controller closes the worker's connection at
  once (on main it kept waiting up to the first-token timeout, 2 minutes by default) and its count goes back to 0.
- The client leaves mid-stream: the same.
- A worker silent past the first-token timeout: the request moves to another worker, and the abandoned attempt's
  connection is closed at that moment, not left running on the first worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.stack import start_controller
from tests.support.standin_workers import CHUNK, FINISH, hang, standins, tokens

FIRST_TOKEN_TIMEOUT_S = 1.0
LET_GO_S = 0.5  # how soon the worker's connection must close after the client left


@pytest.fixture(scope="module")
def controller(log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=600.0, first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,
                           check_worker_reachable=True)
    yield ctl
    ctl.stop()


def chat_body(stream: bool, text: str = "hello") -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": text}], "model": "m", "stream": stream}).encode()


class RawClient:
    """One HTTP/1.1 request on its own socket; `leave()` closes the socket."""

    async def send(self, base_url: str, body: bytes) -> RawClient:
        url = urlsplit(base_url)
        self.reader, self.writer = await asyncio.open_connection(url.hostname, url.port)
        self.writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await self.writer.drain()
        return self

    async def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        data = b""
        async with asyncio.timeout(timeout):
            while marker not in data:
                chunk = await self.reader.read(65536)
                assert chunk, f"connection ended before {marker!r}: {data!r}"
                data += chunk
        return data

    async def leave(self) -> float:
        self.writer.close()
        await self.writer.wait_closed()
        return time.monotonic()


async def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def in_flight(ctl_url: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as http:
        return {w["worker_id"]: w["in_flight"] for w in (await http.get(ctl_url + "/workers")).json()["workers"]}


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_client_leaving_before_the_first_token_closes_the_workers_connection(controller, stream):
    async with standins(controller.url, {"stuck": hang()}) as workers:
        client = await RawClient().send(controller.url, chat_body(stream))
        await wait_for(lambda: workers["stuck"].seen, what="the request to reach the worker")
        assert (await in_flight(controller.url))["stuck"] == 1
        left_at = await client.leave()
        seen = workers["stuck"].seen[0]
        await wait_for(lambda: seen.closed is not None, timeout=FIRST_TOKEN_TIMEOUT_S * 0.9,
                       what="the controller to close the worker's connection")
        assert seen.closed - left_at < LET_GO_S, f"closed {seen.closed - left_at:.2f} s after the client left"
        assert (await in_flight(controller.url))["stuck"] == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_client_leaving_mid_answer_closes_the_workers_connection(controller, stream):
    async with standins(controller.url, {"slow": tokens(400, gap_s=0.05)}) as workers:
        client = await RawClient().send(controller.url, chat_body(stream))
        if stream:
            await client.read_until(b"data: ")  # headers and the first event are here
        seen = await _first(workers["slow"])
        await wait_for(lambda: seen.sent_tokens >= 5, what="tokens")
        left_at = await client.leave()
        await wait_for(lambda: seen.closed is not None, timeout=5, what="the worker's connection to close")
        assert seen.closed - left_at < LET_GO_S, f"closed {seen.closed - left_at:.2f} s after the client left"
        assert seen.sent_tokens < 50
        assert (await in_flight(controller.url))["slow"] == 0


async def _first(worker):
    await wait_for(lambda: worker.seen, what="the request to reach the worker")
    return worker.seen[0]


async def test_first_token_timeout_cancels_the_abandoned_attempt(controller):
    # "stuck" looks idle and "ok" busy, so dispatch tries "stuck" first.
    async with standins(controller.url, {"stuck": hang(), "ok": tokens(3, gap_s=0)}, queued={"ok": 4}) as workers:
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.monotonic()
            r = await http.post(controller.url + "/v1/chat/completions", content=chat_body(False),
                                headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.headers["x-worker-id"] == "ok" and r.json()["choices"][0]["message"]["content"] == "hihihi"
        abandoned = workers["stuck"].seen[0]
        assert abandoned.closed is not None, "the abandoned attempt is still open on the first worker"
        assert abs(abandoned.closed - (started + FIRST_TOKEN_TIMEOUT_S)) < LET_GO_S
        assert await in_flight(controller.url) == {"stuck": 0, "ok": 0}


async def test_the_workers_get_the_clients_bytes_unchanged(controller):
    # Odd spacing, a key order of its own, escapes, an unknown-to-the-controller field: all reach the worker as sent.
    body = (b'{ "messages" : [ {"content": "caf\\u00e9 \\"quoted\\" \\\\ end", "role": "user"} ],\n'
            b'  "temperature": 0.25, "stream": false, "model": "m", "max_tiles": 3 }')
    async with standins(controller.url, {"w": tokens(2, gap_s=0)}) as workers:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(controller.url + "/v1/chat/completions", content=body,
                                headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            streamed = body.replace(b'"stream": false', b'"stream": true')
            async with http.stream("POST", controller.url + "/v1/chat/completions", content=streamed,
                                   headers={"Content-Type": "application/json"}) as s:
                events = [line async for line in s.aiter_lines() if line.startswith("data:")]
            big = json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url",
                              "image_url": {"url": "data:image/png;base64," + "QUJD" * 800_000}}]}]}).encode()
            r = await http.post(controller.url + "/v1/chat/completions", content=big,  # joined, peeked, sent
                                headers={"Content-Type": "application/json"})     # off the loop, in slices
            assert r.status_code == 200, r.text
        one, two, three = workers["w"].seen
        assert one.body == body and two.body == streamed and three.body == big
        assert one.headers["X-Relay-Stream"] == "1" and one.headers["X-Relay-Include-Usage"] == "1"
        assert two.headers["X-Relay-Stream"] == "1" and "X-Relay-Include-Usage" not in two.headers
        assert events == [f"data: {CHUNK}"] * 2 + [f"data: {FINISH}", "data: [DONE]"]
