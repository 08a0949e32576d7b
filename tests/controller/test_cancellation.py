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

import httpx
import pytest

from tests.support.chat_http import body
from tests.support.raw_http import RawClient
from tests.support.stack import start_controller
from tests.support.standin_workers import hang, standins, tokens
from tests.support.stream_chunks import CHUNK, FINISH
from tests.support.waiting import wait_until_async

FIRST_TOKEN_TIMEOUT_S = 1.0
LET_GO_S = 0.5  # how soon the worker's connection must close after the client left


@pytest.fixture(scope="module")
def controller(log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=600.0, first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,
                           check_worker_reachable=True)
    yield ctl
    ctl.stop()


async def in_flight(ctl_url: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as http:
        return {w["worker_id"]: w["in_flight"] for w in (await http.get(ctl_url + "/workers")).json()["workers"]}


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_client_leaving_before_the_first_token_closes_the_workers_connection(controller, stream):
    async with standins(controller.url, {"stuck": hang()}) as workers:
        client = await RawClient().send(controller.url, body("m", stream=stream))
        await wait_until_async(lambda: workers["stuck"].seen, 10, "the request to reach the worker")
        assert (await in_flight(controller.url))["stuck"] == 1
        left_at = await client.leave()
        seen = workers["stuck"].seen[0]
        await wait_until_async(lambda: seen.closed is not None, FIRST_TOKEN_TIMEOUT_S * 0.9,
                               "the controller to close the worker's connection")
        assert seen.closed - left_at < LET_GO_S, f"closed {seen.closed - left_at:.2f} s after the client left"
        assert (await in_flight(controller.url))["stuck"] == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_client_leaving_mid_answer_closes_the_workers_connection(controller, stream):
    async with standins(controller.url, {"slow": tokens(400, gap_s=0.05)}) as workers:
        client = await RawClient().send(controller.url, body("m", stream=stream))
        if stream:
            await client.read_until(b"data: ")  # headers and the first event are here
        seen = await _first(workers["slow"])
        await wait_until_async(lambda: seen.sent_tokens >= 5, 10, "tokens")
        left_at = await client.leave()
        await wait_until_async(lambda: seen.closed is not None, 5, "the worker's connection to close")
        assert seen.closed - left_at < LET_GO_S, f"closed {seen.closed - left_at:.2f} s after the client left"
        assert seen.sent_tokens < 50
        assert (await in_flight(controller.url))["slow"] == 0


async def _first(worker):
    await wait_until_async(lambda: worker.seen, 10, "the request to reach the worker")
    return worker.seen[0]


async def test_first_token_timeout_cancels_the_abandoned_attempt(controller):
    # "stuck" looks idle and "ok" busy, so dispatch tries "stuck" first.
    async with standins(controller.url, {"stuck": hang(), "ok": tokens(3, gap_s=0)}, queued={"ok": 4}) as workers:
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.monotonic()
            r = await http.post(controller.url + "/v1/chat/completions", json=body("m"))
        assert r.status_code == 200, r.text
        assert r.headers["x-worker-id"] == "ok" and r.json()["choices"][0]["message"]["content"] == "hihihi"
        abandoned = workers["stuck"].seen[0]
        assert abandoned.closed is not None, "the abandoned attempt is still open on the first worker"
        assert abs(abandoned.closed - (started + FIRST_TOKEN_TIMEOUT_S)) < LET_GO_S
        assert await in_flight(controller.url) == {"stuck": 0, "ok": 0}


async def test_the_workers_get_the_clients_bytes_unchanged(controller):
    # Odd spacing, a key order of its own, escapes, an unknown-to-the-controller field: all reach the worker as sent.
    sent = (b'{ "messages" : [ {"content": "caf\\u00e9 \\"quoted\\" \\\\ end", "role": "user"} ],\n'
            b'  "temperature": 0.25, "stream": false, "model": "m", "max_tiles": 3 }')
    async with standins(controller.url, {"w": tokens(2, gap_s=0)}) as workers:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(controller.url + "/v1/chat/completions", content=sent,
                                headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            streamed = sent.replace(b'"stream": false', b'"stream": true')
            async with http.stream("POST", controller.url + "/v1/chat/completions", content=streamed,
                                   headers={"Content-Type": "application/json"}) as s:
                events = [line async for line in s.aiter_lines() if line.startswith("data:")]
            big = json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url",
                              "image_url": {"url": "data:image/png;base64," + "QUJD" * 800_000}}]}]}).encode()
            r = await http.post(controller.url + "/v1/chat/completions", content=big,  # joined, peeked, sent
                                headers={"Content-Type": "application/json"})     # off the loop, in slices
            assert r.status_code == 200, r.text
        one, two, three = workers["w"].seen
        assert one.body == sent and two.body == streamed and three.body == big
        assert one.headers["X-Relay-Stream"] == "1" and one.headers["X-Relay-Include-Usage"] == "1"
        assert two.headers["X-Relay-Stream"] == "1" and "X-Relay-Include-Usage" not in two.headers
        assert events == [f"data: {CHUNK}"] * 2 + [f"data: {FINISH}", "data: [DONE]"]


async def _metrics(ctl_url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(ctl_url + "/metrics")).text
    return {k: float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines())
            if k and not k.startswith("#")}


async def test_a_stream_longer_than_the_first_token_timeout_arrives_whole_timed_from_its_first_token(controller):
    """The first-token deadline ends with the first event (the stream goes on under the token timeout), and the
    first token is timed when it came, not when the stream ended."""
    ttft = "internvl_time_to_first_token_seconds"
    async with standins(controller.url, {"long": tokens(30, gap_s=0.05)}):  # 1.5 s, past the 1 s first-token timeout
        before = await _metrics(controller.url)
        async with httpx.AsyncClient(timeout=30) as http:
            started = time.monotonic()
            async with http.stream("POST", controller.url + "/v1/chat/completions", json=body("m", stream=True)) as s:
                events = [line async for line in s.aiter_lines() if line.startswith("data:")]
            took = time.monotonic() - started
        after = await _metrics(controller.url)
    assert events == [f"data: {CHUNK}"] * 30 + [f"data: {FINISH}", "data: [DONE]"]
    assert took > FIRST_TOKEN_TIMEOUT_S
    assert after[f"{ttft}_count"] - before[f"{ttft}_count"] == 1
    assert after[f"{ttft}_sum"] - before[f"{ttft}_sum"] < took / 2, "timed at the stream's end"
    ok = 'internvl_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    assert after[ok] - before.get(ok, 0) == 1


async def test_a_client_leaving_mid_stream_is_counted_with_the_status_it_was_sent(controller):
    """Its head said 200 before it left: the access line and the counter say so (a 499 is a client that left before
    its answer began)."""
    status = 'internvl_http_requests_total{{method="POST",route="/v1/chat/completions",status="{}"}}'
    async with standins(controller.url, {"slow": tokens(400, gap_s=0.05)}) as workers:
        before = await _metrics(controller.url)
        client = await RawClient().send(controller.url, body("m", stream=True))
        await client.read_until(b"data: ")
        seen = await _first(workers["slow"])
        await wait_until_async(lambda: seen.sent_tokens >= 5, 10, "tokens")
        await client.leave()
        await wait_until_async(lambda: seen.closed is not None, 5, "the worker's connection to close")
        after, deadline = await _metrics(controller.url), time.monotonic() + 5
        counted = [status.format(200), status.format(499)]
        while sum(after.get(k, 0) - before.get(k, 0) for k in counted) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            after = await _metrics(controller.url)
    assert after[status.format(200)] - before.get(status.format(200), 0) == 1
    assert after.get(status.format(499), 0) == before.get(status.format(499), 0)
