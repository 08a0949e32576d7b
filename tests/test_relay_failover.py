"""Dispatcher failover and stream relay, with worker HTTP answers scripted through httpx.MockTransport.
(End-to-end versions with real worker processes are in test_stack_integration.py and test_faults.py.)"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from common.errors import ErrorCode, ServingError, error_body
from common.protocol import ModelCard, WorkerRegistration
from controller.aggregate import payloads
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.relay import Dispatcher
from controller.settings import ControllerSettings

CHUNK = json.dumps({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]})


def sse(*payloads: str) -> bytes:
    return "".join(f"data: {p}\r\n\r\n" for p in payloads).encode()


def make(handlers: dict[str, object]) -> tuple[Dispatcher, Registry]:
    registry = Registry(expiry_s=60)
    for name in handlers:
        registry.register(WorkerRegistration(worker_id=name, url=f"http://{name}", models=[ModelCard(id="m")],
                                             max_concurrency=2))

    def route(request: httpx.Request) -> httpx.Response:
        behaviour = handlers[request.url.host]
        if isinstance(behaviour, Exception):
            raise behaviour
        return behaviour(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(route))
    settings = ControllerSettings(first_token_timeout_s=2, token_timeout_s=2)
    # Deterministic order: shortest-queue with a seeded rng over equal loads.
    return Dispatcher(registry, ShortestQueue(random.Random(3)), client, settings), registry


def stream(*payloads: str) -> httpx.Response:
    return httpx.Response(200, content=sse(*payloads), headers={"content-type": "text/event-stream"})


def ok(_: httpx.Request) -> httpx.Response:
    return stream(CHUNK, CHUNK, "[DONE]")


def status(code: ErrorCode):
    return lambda _: httpx.Response(error_status(code), json=error_body(code, f"{code.value} here"))


def error_status(code: ErrorCode) -> int:
    return ServingError(code, "").status


async def drain(dispatcher: Dispatcher) -> tuple[str, list[str]]:
    up = await dispatcher.open({"model": "m"}, "m", "rid")
    return up.worker.worker_id, [e async for e in payloads(dispatcher.relay(up))]


@pytest.mark.parametrize("failure", [status(ErrorCode.WORKER_BUSY), status(ErrorCode.ENGINE_ERROR),
                                     httpx.ConnectError("refused")])
async def test_fails_over_before_first_token(failure):
    dispatcher, registry = make({"bad": failure, "good": ok})
    served = set()
    for _ in range(4):
        worker, events = await drain(dispatcher)
        served.add(worker)
        assert events == [CHUNK, CHUNK, "[DONE]"]
    assert served == {"good"}
    assert all(w.in_flight == 0 for w in registry.all())
    assert registry.get("bad").failures >= 1


async def test_client_errors_are_not_retried_elsewhere():
    calls = []

    def bad_image(request):
        calls.append(request.url.host)
        return status(ErrorCode.INVALID_IMAGE)(request)

    dispatcher, registry = make({"a": bad_image, "b": bad_image})
    with pytest.raises(ServingError) as err:
        await drain(dispatcher)
    assert err.value.code == ErrorCode.INVALID_IMAGE and len(calls) == 1
    assert all(w.in_flight == 0 for w in registry.all())


async def test_all_workers_failing_gives_no_worker_with_last_reason():
    dispatcher, _ = make({"a": status(ErrorCode.ENGINE_ERROR), "b": httpx.ConnectError("refused")})
    with pytest.raises(ServingError) as err:
        await drain(dispatcher)
    assert err.value.code == ErrorCode.NO_WORKER and "2 tried" in err.value.message


async def test_error_event_before_first_token_fails_over():
    first_error = lambda _: stream(json.dumps(error_body(ErrorCode.WORKER_LOST, "x")), "[DONE]")
    dispatcher, _ = make({"a": first_error, "b": ok})
    worker, events = await drain(dispatcher)
    assert worker == "b" and events[-1] == "[DONE]"


async def test_stream_cut_mid_answer_becomes_one_error_event_then_done():
    cut = lambda _: stream(CHUNK, CHUNK)  # no [DONE]: the worker vanished
    dispatcher, registry = make({"a": cut})
    _, events = await drain(dispatcher)
    assert events[:2] == [CHUNK, CHUNK] and events[-1] == "[DONE]" and len(events) == 4
    assert json.loads(events[2])["error"]["code"] == ErrorCode.WORKER_LOST
    assert registry.get("a").in_flight == 0


async def test_unknown_model_and_no_workers_are_told_apart():
    dispatcher, _ = make({"a": ok})
    with pytest.raises(ServingError) as err:
        await dispatcher.open({}, "other", "rid")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and "available: m" in err.value.message
    empty, _ = make({})
    with pytest.raises(ServingError) as err:
        await empty.open({}, "m", "rid")
    assert err.value.code == ErrorCode.NO_WORKER and "python -m workers" in err.value.message


async def test_full_workers_answer_busy_not_hang():
    dispatcher, registry = make({"a": ok})
    registry.get("a").in_flight = 2
    with pytest.raises(ServingError) as err:
        await drain(dispatcher)
    assert err.value.code == ErrorCode.WORKER_BUSY and err.value.status == 429
