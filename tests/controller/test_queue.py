"""The controller's waiting line, through a real controller process and stand-in workers with one slot each: a
request that finds every worker busy waits, in order, and is answered when a slot frees; only a full line or a wait
that ran out is refused (429 with Retry-After, the code saying which); a client that leaves while waiting leaves the
line at once and reaches no worker; a waiting stream gets no byte before a worker takes it; /metrics and
/queue/{request_id} show the line."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from aiohttp import web

from common.errors import ErrorCode, error_body
from tests.support.chat_http import body
from tests.support.raw_http import RawClient
from tests.support.stack import start_controller
from tests.support.standin_workers import Seen, StandinWorker
from tests.support.stream_chunks import CHUNK, FINISH
from tests.support.waiting import holds_for_async, wait_until_async

QUEUE_SIZE, QUEUE_TIMEOUT_S = 3, 2.0


@pytest.fixture(scope="module")
def controller(log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=600.0, queue_size=QUEUE_SIZE, queue_timeout_s=QUEUE_TIMEOUT_S)
    yield ctl
    ctl.stop()


class Gate:
    """A behaviour that holds every request until `open()`, then answers one token."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def __call__(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        await self.opened.wait()
        return await self.answer_now(request)

    @staticmethod
    async def answer_now(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {CHUNK}\r\n\r\ndata: {FINISH}\r\n\r\ndata: [DONE]\r\n\r\n".encode())
        await response.write_eof()
        return response


class OneSlot:
    """One stand-in worker with max_concurrency 1, registered for the test."""

    def __init__(self, url: str):
        self.url, self.gate = url, Gate()

    async def __aenter__(self) -> StandinWorker:
        self.worker = await StandinWorker("one", self.gate, max_concurrency=1).start()
        await self.worker.register(self.url)
        return self.worker

    async def __aexit__(self, *exc) -> None:
        self.gate.opened.set()
        await self.worker.close()
        async with httpx.AsyncClient() as http:
            await http.post(self.url + "/workers/unregister", json={"worker_id": "one"})


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url + "/metrics")).text
    m = re.search(rf'^{re.escape(name)} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def until_metric(url: str, name: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await metric(url, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        await asyncio.sleep(0.02)


LENGTH = 'internvl_queue_length{model="m"}'


async def fill(http: httpx.AsyncClient, url: str, worker: StandinWorker, prefix: str) -> list[asyncio.Task]:
    """One request on the worker's slot, then QUEUE_SIZE in line, each sent once the one before is in place."""
    tasks = [ask(http, url, f"{prefix} 0", f"{prefix}-0")]
    await wait_until_async(lambda: worker.seen, 10, "the first request at the worker")
    for i in range(1, 1 + QUEUE_SIZE):
        tasks.append(ask(http, url, f"{prefix} {i}", f"{prefix}-{i}"))
        await until_metric(url, LENGTH, i)
    return tasks


def ask(http: httpx.AsyncClient, url: str, text: str, rid: str, **headers) -> asyncio.Task:
    return asyncio.create_task(http.post(url + "/v1/chat/completions", headers={"X-Request-ID": rid, **headers},
                                         json={"model": "m", "messages": [{"role": "user", "content": text}]}))


async def test_requests_wait_in_order_and_are_all_answered(controller):
    async with OneSlot(controller.url) as worker, httpx.AsyncClient(timeout=30) as http:
        tasks = await fill(http, controller.url, worker, "rid")
        # stand-ins report no engine queue, so waiting is the controller's line alone
        assert await metric(controller.url, 'internvl:num_requests_waiting{model="m"}') == QUEUE_SIZE
        assert await metric(controller.url, 'internvl:num_requests_running{model="m"}') == 1
        places = [(await http.get(f"{controller.url}/queue/rid-{i}")).json() for i in range(1 + QUEUE_SIZE)]
        assert places[0] == {"request_id": "rid-0", "queued": False}
        assert [p["position"] for p in places[1:]] == [1, 2, 3] and all(p["waiting"] == 3 for p in places[1:])
        assert len(worker.seen) == 1  # the others never reached the worker
        worker.behaviour.opened.set()
        answers = await asyncio.gather(*tasks)
        assert [r.status_code for r in answers] == [200] * (1 + QUEUE_SIZE)
        order = [json.loads(s.body)["messages"][0]["content"] for s in worker.seen]
        assert order == [f"rid {i}" for i in range(1 + QUEUE_SIZE)]  # first come, first served (one client)
        assert await metric(controller.url, "internvl_queue_wait_seconds_count") >= QUEUE_SIZE


async def test_a_request_a_local_proxy_forwards_takes_turns_as_the_client_it_names(controller):
    """Clients take turns in the line, by address: behind a proxy on this machine (trusted for its X-Forwarded-For
    by default, as uvicorn trusts it), the address it names. The chat route applies the proxy headers itself
    (controller/direct_routes.py)."""
    async with OneSlot(controller.url) as worker, httpx.AsyncClient(timeout=30) as http:
        tasks = [ask(http, controller.url, "x 0", "fw-0")]
        await wait_until_async(lambda: worker.seen, 10, "the first request at the worker")
        for i, (rid, client) in enumerate([("fw-a1", "198.51.100.1"), ("fw-a2", "198.51.100.1"),
                                           ("fw-b1", "198.51.100.2")], 1):
            tasks.append(ask(http, controller.url, rid, rid, **{"X-Forwarded-For": client}))
            await until_metric(controller.url, LENGTH, i)
        places = {rid: (await http.get(f"{controller.url}/queue/{rid}")).json()["position"]
                  for rid in ("fw-a1", "fw-a2", "fw-b1")}
        worker.behaviour.opened.set()
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 4
        # The second client's first request comes before the first client's second (one client: it would be 3rd)
        assert places == {"fw-a1": 1, "fw-b1": 2, "fw-a2": 3}


async def test_a_full_line_and_an_expired_wait_answer_429_with_retry_after(controller):
    async with OneSlot(controller.url) as worker, httpx.AsyncClient(timeout=30) as http:
        tasks = await fill(http, controller.url, worker, "full")
        started = time.monotonic()
        full = await ask(http, controller.url, "one more", "full-x")
        assert time.monotonic() - started < 1.0  # refused at once, not after a wait
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full", full.text
        assert int(full.headers["retry-after"]) >= 1 and "waiting line is full" in full.json()["error"]["message"]
        expired = await asyncio.gather(*tasks[1:])  # the gate never opens: their waits run out
        for r in expired:
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_timeout", r.text
            assert int(r.headers["retry-after"]) >= 1
            assert f"waited {QUEUE_TIMEOUT_S:g} s" in r.json()["error"]["message"]
        assert time.monotonic() - started >= QUEUE_TIMEOUT_S - 0.5
        assert await metric(controller.url, 'internvl_queue_length{model="m"}') == 0
        worker.behaviour.opened.set()
        assert (await tasks[0]).status_code == 200


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_a_client_leaving_the_line_leaves_at_once_and_a_waiting_stream_gets_no_byte(controller, stream):
    async with OneSlot(controller.url) as worker, httpx.AsyncClient(timeout=30) as http:
        first = ask(http, controller.url, "holds the slot", "hold")
        await wait_until_async(lambda: worker.seen, 10, "the first request at the worker")
        client = await RawClient().send(controller.url, body("m", "waits", stream=stream))
        await until_metric(controller.url, LENGTH, 1)
        with pytest.raises(TimeoutError):  # nothing at all while it waits: no status line, no keep-alive
            await asyncio.wait_for(client.reader.read(1), 0.5)
        await client.leave()
        await until_metric(controller.url, LENGTH, 0, timeout=1.0)  # at once, not after the queue timeout
        worker.behaviour.opened.set()
        assert (await first).status_code == 200
        # the request that left never reaches the worker (it left the line: nothing can take it from there)
        await holds_for_async(lambda: len(worker.seen) == 1, 0.2, "only the first request at the worker")


async def test_a_waiting_stream_starts_when_a_worker_takes_it(controller):
    async with OneSlot(controller.url) as worker, httpx.AsyncClient(timeout=30) as http:
        first = ask(http, controller.url, "holds the slot", "hold2")
        await wait_until_async(lambda: worker.seen, 10, "the first request at the worker")
        client = await RawClient().send(controller.url, body("m", "waits", stream=True))
        await until_metric(controller.url, LENGTH, 1)
        worker.behaviour.opened.set()
        data = await client.read_until(b"data: [DONE]")
        assert data.startswith(b"HTTP/1.1 200") and b"x-worker-id: one" in data.lower()
        assert (await first).status_code == 200
        await client.leave()


async def test_a_worker_still_counting_a_request_we_let_go_makes_the_request_wait_not_fail(controller):
    # The worker answers 429 once (it has not yet seen the connection of a request whose client left close): the
    # controller counts it as full for a moment and the request waits in line for it, instead of failing.
    refused = []

    async def busy_once(request: web.Request, seen: Seen) -> web.StreamResponse:
        if not refused:
            refused.append(time.monotonic())
            return web.json_response(error_body(ErrorCode.WORKER_BUSY, "at capacity"), status=429)
        return await Gate.answer_now(request)

    worker = await StandinWorker("one", busy_once, max_concurrency=2).start()
    try:
        await worker.register(controller.url)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(controller.url + "/v1/chat/completions",
                                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert len(worker.seen) == 2 and worker.seen[1].arrived - refused[0] >= 0.2  # it waited before trying again
    finally:
        await worker.close()
        async with httpx.AsyncClient() as http:
            await http.post(controller.url + "/workers/unregister", json={"worker_id": "one"})
