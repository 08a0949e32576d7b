"""Prometheus metrics and request ids: a real worker app (in-process, scripted engine, the real pipeline on the demo
checkpoint's spec) and the real dispatcher with scripted worker answers. The log formatters on their own:
tests/common/test_logging_setup.py."""

from __future__ import annotations

import contextlib
import json
import random

import pytest
from fastapi.testclient import TestClient

from common import sse
from common.errors import ErrorCode, error_body
from common.metrics import Metrics
from common.protocol import ModelCard, WorkerRegistration
from controller.app import worker_client
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.relay import Dispatcher
from controller.settings import ControllerSettings
from tests.support.chat_http import body
from tests.support.loopback_workers import LoopbackWorkers, stream
from tests.support.metrics_text import samples
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stream_chunks import CHUNK, USAGE


@pytest.fixture(scope="module")
def worker(demo_checkpoint, monkeypatch_module):
    from workers.app import create_app
    from workers.model_spec import detect_model_spec
    from workers.settings import WorkerSettings

    monkeypatch_module.setenv("SCRIPTED_TOKENS", "6")
    monkeypatch_module.setenv("SCRIPTED_RATE", "2000")
    settings = WorkerSettings(model_path=str(demo_checkpoint), controller_url="", api_keys=["k1"])
    engine = ScriptedEngine(settings, detect_model_spec(demo_checkpoint))
    with TestClient(create_app(settings, engine), headers={"Authorization": "Bearer k1"}) as client:
        yield client, engine.model_id


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_worker_metrics_count_requests_errors_and_time_generations(worker):
    client, model = worker
    before = samples(client.get("/metrics").text)
    with client.stream("POST", "/v1/chat/completions", json=body(model, max_tokens=None, stream=True)) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert client.post("/v1/chat/completions", json=body(model, max_tokens=None)).status_code == 200
    assert client.post("/v1/chat/completions", json=body("no-such-model", max_tokens=None)).status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = samples(client.get("/metrics").text)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/v1/chat/completions"
    assert delta("internvl_http_requests_total", route=route, method="POST", status="200") == 2
    assert delta("internvl_http_requests_total", route=route, method="POST", status="404") == 1
    assert delta("internvl_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("internvl_errors_total", code="model_not_found") == 1
    assert delta("internvl_time_to_first_token_seconds_count") == 2
    assert delta("internvl_generation_tokens_per_second_count") == 2
    assert after[("internvl_requests_in_flight", ())] == 0
    assert ("internvl_requests_queued", ()) in after
    assert not any(name.endswith("_created") for name, _ in after)


def test_metrics_need_the_api_key_when_keys_are_set(worker):
    client, _ = worker
    r = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


def test_request_id_is_taken_from_the_header_or_made_and_echoed(worker):
    client, model = worker
    r = client.post("/v1/chat/completions", json=body(model, max_tokens=None), headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/health").headers["x-request-id"]
    # An id that could break a log line is replaced, not echoed.
    assert client.get("/health", headers={"X-Request-ID": 'x" level=error'}).headers["x-request-id"] != 'x" level=error'


# ------------------------------------------------------------------------------------------- controller side

@contextlib.asynccontextmanager
async def dispatcher(payloads: list[str]):
    """A dispatcher whose one worker, a loopback server, sends these events one per network write, a moment apart."""
    async with LoopbackWorkers() as workers:
        registry = Registry(expiry_s=60)
        registry.register(WorkerRegistration(worker_id="w", url=await workers.start(stream(*payloads, gap_s=0.002)),
                                             models=[ModelCard(id="m")], max_concurrency=2))
        metrics = Metrics()
        settings = ControllerSettings(first_token_timeout_s=2, token_timeout_s=2)
        async with worker_client(settings) as session:
            yield Dispatcher(registry, ShortestQueue(random.Random(0)), session, settings, metrics), metrics


async def relay_all(d: Dispatcher) -> list[str]:
    up = await d.open(b'{"model": "m"}', "m", "rid")
    return [e async for e in sse.payloads(d.relay(up))]


async def test_controller_times_first_token_and_speed_from_the_usage_chunk():
    async with dispatcher([CHUNK, CHUNK, USAGE, "[DONE]"]) as (d, metrics):
        await relay_all(d)
    s = samples(metrics.render().decode())
    assert s[("internvl_time_to_first_token_seconds_count", ())] == 1
    assert s[("internvl_generation_tokens_per_second_count", ())] == 1


@pytest.mark.parametrize("payloads, code", [
    ([CHUNK, json.dumps(error_body(ErrorCode.ENGINE_ERROR, "boom")), "[DONE]"], "engine_error"),
    ([CHUNK], "worker_lost"),  # the worker's stream ends without the end marker
])
async def test_controller_counts_mid_stream_errors_by_code(payloads, code):
    async with dispatcher(payloads) as (d, metrics):
        events = await relay_all(d)
    assert events[-1] == "[DONE]"
    assert samples(metrics.render().decode())[("internvl_errors_total", (("code", code),))] == 1
