"""The circuit breaker per worker: in isolation, with the dispatcher against loopback workers (a worker that fails
every request costs no client a failed attempt once benched, then gets one trial), and through a real controller
process (/workers shows it benched, and heartbeats do not un-bench it)."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest
from aiohttp import web

from common.errors import ErrorCode, error_body
from common.protocol import ModelCard, WorkerHeartbeat, WorkerRegistration
from common.sse import payloads
from controller.app import worker_client
from controller.breaker import Breaker
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.relay import Dispatcher
from controller.settings import ControllerSettings
from tests.support.loopback_workers import LoopbackWorkers, status, stream
from tests.support.registry_records import Clock
from tests.support.stack import start_controller
from tests.support.standin_workers import Seen, standins, tokens
from tests.support.stream_chunks import CHUNK


def test_breaker_opens_after_failures_in_a_row_then_allows_one_trial():
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown_s=10, clock=clock)
    breaker.failed(), breaker.failed(), breaker.succeeded(), breaker.failed(), breaker.failed()
    assert breaker.admits() and not breaker.benched  # a success in between: not in a row
    assert breaker.failed() and breaker.benched and not breaker.admits()
    clock.now += 9.9
    assert not breaker.admits()
    clock.now += 0.1
    assert breaker.admits()
    breaker.dispatched()  # the trial
    assert not breaker.admits()  # only one
    assert breaker.failed() and not breaker.admits() and breaker.cooldown_left_s() == 10  # benched again
    clock.now += 10
    breaker.dispatched()
    breaker.no_verdict()  # the trial's client left: another may try
    assert breaker.admits()
    breaker.dispatched()
    breaker.succeeded()
    assert breaker.admits() and not breaker.benched and breaker.failures == 0
    assert not any(Breaker(threshold=0).failed() for _ in range(10))  # 0: never benched


async def test_a_failing_worker_costs_no_request_an_attempt_once_benched():
    clock = Clock()
    async with LoopbackWorkers() as workers:
        registry = Registry(expiry_s=600, clock=clock, breaker_failures=2, breaker_cooldown_s=30)
        urls = {}
        for name, behaviour in {"bad": status(ErrorCode.ENGINE_ERROR), "good": stream(CHUNK, "[DONE]")}.items():
            urls[name] = await workers.start(behaviour)
            registry.register(WorkerRegistration(worker_id=name, url=urls[name], models=[ModelCard(id="m")],
                                                 max_concurrency=4))
        settings = ControllerSettings(first_token_timeout_s=2, token_timeout_s=2)
        async with worker_client(settings) as client:
            dispatcher = Dispatcher(registry, ShortestQueue(random.Random(1)), client, settings)

            async def answer() -> str:
                up = await dispatcher.open(b'{"model": "m"}', "m", "rid")
                assert [e async for e in payloads(dispatcher.relay(up))] == [CHUNK, "[DONE]"]
                return up.worker.worker_id

            bad = registry.get("bad")
            while not bad.breaker.benched:
                assert await answer() == "good"  # failed over when it went to "bad" first
            paid = workers.calls[urls["bad"]]
            assert paid == 2
            registry.heartbeat(WorkerHeartbeat(worker_id="bad"))  # it beats, and registers again:
            registry.register(WorkerRegistration(worker_id="bad", url=urls["bad"], models=[ModelCard(id="m")],
                                                 max_concurrency=4))
            for _ in range(20):
                assert await answer() == "good"
            assert workers.calls[urls["bad"]] == paid  # no request paid an attempt on it
            assert registry.status()[0].benched and registry.status()[0].benched_for_s == 30

            clock.now += 30  # the cool-down is over: one trial, which fails, and it is benched again
            for _ in range(20):
                assert await answer() == "good"
            assert workers.calls[urls["bad"]] == paid + 1 and bad.breaker.benched


@pytest.fixture(scope="module")
def controller(log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=600.0, breaker_failures=2, breaker_cooldown_s=1.5,
                           dispatch_policy="shortest_queue")
    yield ctl
    ctl.stop()


def broken(fixed: dict[str, bool]):
    """Answers 500 engine_error until fixed["now"] is set, then one token."""
    answer_ok = tokens(1, 0)

    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        if fixed["now"]:
            return await answer_ok(request, seen)
        return web.json_response(error_body(ErrorCode.ENGINE_ERROR, "broken GPU"), status=500)

    return answer


async def test_workers_list_shows_benched_and_heartbeats_do_not_unbench(controller):
    fixed = {"now": False}
    async with standins(controller.url, {"bad": broken(fixed), "good": tokens(1, 0)}) as started, \
            httpx.AsyncClient(base_url=controller.url, timeout=30) as http:
        def workers() -> dict[str, dict]:
            return {w["worker_id"]: w for w in httpx.get(controller.url + "/workers").json()["workers"]}

        # the policy breaks ties at random: send until it has picked "bad" twice (8 tries missed that 3.5% of runs)
        for i in range(64):
            r = await http.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": f"q{i}"}]})
            assert r.status_code == 200 and r.headers["x-worker-id"] == "good", r.text
            if workers()["bad"]["benched"]:
                break
        assert len(started["bad"].seen) == 2
        state = workers()["bad"]
        assert state["benched"] and 0 < state["benched_for_s"] <= 1.5 and state["healthy"]
        await started["bad"].register(controller.url)  # registers and beats again: still benched
        assert workers()["bad"]["benched"] and not workers()["good"]["benched"]
        from app.client import ControllerClient  # the web UI's model panel says so (imports gradio: here only)
        from app.models_panel import describe_model, model_overview
        ui_client = ControllerClient(controller.url)
        cards, error = await model_overview(ui_client)
        await ui_client.aclose()
        info, _ = describe_model(cards, "m", error)
        assert "`bad` benched (failing; retried in" in info and "`good` up" in info, info
        fixed["now"] = True
        deadline = time.monotonic() + 10
        while workers()["bad"]["benched"]:  # after the cool-down a request is its trial, which now works
            assert time.monotonic() < deadline, "never tried again"
            r = await http.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": "again"}]})
            assert r.status_code == 200
            await asyncio.sleep(0.1)
        assert len(started["bad"].seen) == 3
