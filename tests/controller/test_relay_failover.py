"""Dispatcher failover and stream relay against small scripted HTTP servers on loopback, through the controller's
real aiohttp client. (End-to-end versions with real worker processes are in test_stack_integration.py and
test_faults.py.)"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from aiohttp import web

from common.errors import ErrorCode, ServingError, error_body
from common.protocol import ModelCard, WorkerRegistration
from common.sse import payloads
from controller.app import worker_client
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.relay import Dispatcher
from controller.settings import ControllerSettings
from tests.support.loopback_workers import REFUSED, LoopbackWorkers, status, stream
from tests.support.raw_worker import OK_HEAD, chunk, raw_server
from tests.support.stream_chunks import CHUNK
from tests.support.waiting import wait_until_async

BODY = b'{"model": "m"}'


@pytest.fixture
async def make():
    """make({name: behaviour}) -> (dispatcher, registry, workers): one loopback server per name, registered."""
    async with LoopbackWorkers() as workers:
        sessions = []

        async def build(behaviours: dict, **settings):
            registry = Registry(expiry_s=60)
            for name, behaviour in behaviours.items():
                registry.register(WorkerRegistration(worker_id=name, url=await workers.start(behaviour),
                                                     models=[ModelCard(id="m")], max_concurrency=2))
            s = ControllerSettings(**{"first_token_timeout_s": 2, "token_timeout_s": 2, **settings})
            sessions.append(worker_client(s))
            # Deterministic order: shortest-queue with a seeded rng over equal loads.
            return Dispatcher(registry, ShortestQueue(random.Random(3)), sessions[-1], s), registry, workers

        yield build
        for session in sessions:
            await session.close()


def ok():
    return stream(CHUNK, CHUNK, "[DONE]")


async def drain(dispatcher: Dispatcher, early: bool = False) -> tuple[str, list[str]]:
    """`early`: the stream is started from the dispatch's `on_first`, as the app starts a streamed answer (from the
    worker connection's callback when the first event comes with the head), instead of by its first read."""
    started: list = []
    up = await dispatcher.open(BODY, "m", "rid", on_first=starts_early(dispatcher, started) if early else None)
    assert started == ([up] if early else [])  # once, for the attempt that answered well
    return up.worker.worker_id, [e async for e in payloads(dispatcher.relay(up))]


def starts_early(dispatcher: Dispatcher, started: list):
    """An `on_first` like the app's: the stream is started from the dispatch (here into its own Relay), and noted."""
    def start(up) -> None:
        started.append(up)
        relay = dispatcher.relay(up)
        relay.pump.start(relay)

    return start


EARLY = pytest.mark.parametrize("early", [False, True], ids=["first-read", "early-start"])


@EARLY
@pytest.mark.parametrize("failure", [status(ErrorCode.WORKER_BUSY), status(ErrorCode.ENGINE_ERROR), REFUSED])
async def test_fails_over_before_first_token(make, failure, early):
    dispatcher, registry, _ = await make({"bad": failure, "good": ok()})
    served = set()
    for _ in range(4):
        worker, events = await drain(dispatcher, early)
        served.add(worker)
        assert events == [CHUNK, CHUNK, "[DONE]"]
    assert served == {"good"}
    assert all(w.in_flight == 0 for w in registry.all())
    assert registry.get("bad").failures >= 1


async def test_client_errors_are_not_retried_elsewhere(make):
    dispatcher, registry, workers = await make({"a": status(ErrorCode.INVALID_IMAGE),
                                                "b": status(ErrorCode.INVALID_IMAGE)})
    with pytest.raises(ServingError) as err:
        await drain(dispatcher)
    assert err.value.code == ErrorCode.INVALID_IMAGE and sum(workers.calls.values()) == 1
    assert all(w.in_flight == 0 for w in registry.all())


async def test_all_workers_failing_gives_no_worker_with_last_reason(make):
    dispatcher, registry, _ = await make({"a": status(ErrorCode.ENGINE_ERROR), "b": REFUSED})
    with pytest.raises(ServingError) as err:
        await drain(dispatcher)
    assert err.value.code == ErrorCode.NO_WORKER and "2 tried" in err.value.message
    # Only the worker that could not be reached is marked down; the one that answered stays up.
    assert not registry.get("b").healthy and registry.get("a").healthy


@EARLY
async def test_error_event_before_first_token_fails_over(make, early):
    dispatcher, _, _ = await make({"a": stream(json.dumps(error_body(ErrorCode.WORKER_LOST, "x")), "[DONE]"),
                                   "b": ok()})
    worker, events = await drain(dispatcher, early)
    assert worker == "b" and events[-1] == "[DONE]"


async def test_worker_silent_before_first_token_times_out_then_fails_over(make):
    async def hang(request):
        await asyncio.sleep(30)

    dispatcher, registry, _ = await make({"a": hang, "b": ok()}, first_token_timeout_s=0.3)
    served = {(await drain(dispatcher))[0] for _ in range(3)}
    assert served == {"b"} and registry.get("a").failures >= 1 and registry.get("a").in_flight == 0


@EARLY
async def test_stream_cut_mid_answer_becomes_one_error_event_then_done(make, early):
    dispatcher, registry, _ = await make({"a": stream(CHUNK, CHUNK)})  # no [DONE]: the worker vanished
    _, events = await drain(dispatcher, early)
    assert events[:2] == [CHUNK, CHUNK] and events[-1] == "[DONE]" and len(events) == 4
    assert json.loads(events[2])["error"]["code"] == ErrorCode.WORKER_LOST
    assert registry.get("a").in_flight == 0


async def test_silence_mid_answer_becomes_a_timeout_event(make):
    async def first_then_silence(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {CHUNK}\r\n\r\n".encode())
        await asyncio.sleep(30)

    dispatcher, registry, _ = await make({"a": first_then_silence}, token_timeout_s=0.3)
    _, events = await drain(dispatcher)
    assert events[0] == CHUNK and json.loads(events[1])["error"]["code"] == ErrorCode.WORKER_TIMEOUT
    assert events[-1] == "[DONE]" and registry.get("a").in_flight == 0


async def test_a_slow_reader_does_not_make_a_steady_worker_late(make):
    """Only the wait for the worker's bytes counts against token_timeout_s: a client that takes its time with each
    event (the relay waiting in a write) gets the whole answer, and the worker is not marked late."""
    async def steady(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(6):
            await response.write(f"data: {CHUNK}\r\n\r\n".encode())
            await asyncio.sleep(0.1)
        await response.write(b"data: [DONE]\r\n\r\n")
        return response

    dispatcher, registry, _ = await make({"a": steady}, token_timeout_s=0.3)
    up = await dispatcher.open(BODY, "m", "rid")
    events = []
    async for event in payloads(dispatcher.relay(up)):
        events.append(event)
        await asyncio.sleep(0.4)  # longer than the timeout, between reads
    assert events == [CHUNK] * 6 + ["[DONE]"], events
    assert registry.get("a").in_flight == 0 and registry.get("a").healthy


@EARLY
async def test_finished_streams_reuse_one_connection(make, early):
    seen = set()

    async def remember(request):
        seen.add(request.transport.get_extra_info("peername"))
        return await ok()(request)

    dispatcher, _, _ = await make({"a": remember})
    for _ in range(5):
        await drain(dispatcher, early)
    assert len(seen) == 1  # drained to the end of the body, so each connection went back to the pool


async def test_unknown_model_and_no_workers_are_told_apart(make):
    dispatcher, _, _ = await make({"a": ok()})
    with pytest.raises(ServingError) as err:
        await dispatcher.open(BODY, "other", "rid")
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND and "available: m" in err.value.message
    empty, _, _ = await make({})
    with pytest.raises(ServingError) as err:
        await empty.open(BODY, "m", "rid")
    assert err.value.code == ErrorCode.NO_WORKER and "python -m workers" in err.value.message


async def test_full_workers_answer_busy_not_hang(make):
    dispatcher, registry, _ = await make({"a": ok()}, queue_size=0)  # no waiting line (tests/controller/test_queue.py)
    registry.acquire(registry.get("a"))
    registry.acquire(registry.get("a"))
    with pytest.raises(ServingError) as err:
        await drain(dispatcher)
    assert err.value.code == ErrorCode.WORKER_BUSY and err.value.status == 429


async def test_a_relay_closed_before_its_first_block_still_releases(make):
    # The client left between dispatch and the first write: the relay is closed without ever being iterated.
    dispatcher, registry, _ = await make({"a": ok()})
    up = await dispatcher.open(BODY, "m", "rid")
    assert registry.get("a").in_flight == 1
    await dispatcher.relay(up).aclose()
    assert registry.get("a").in_flight == 0 and up.response.closed


async def test_a_stream_started_early_then_left_at_once_is_the_clients_leaving_not_the_workers_failure():
    """The stream starts from the worker connection's callback (its first event came with the head), and the client
    leaves before the request's task has woken: the attempt ends as a client's leaving does. The worker stays healthy,
    its lease goes back, and its connection is closed (which is how a worker learns its client left)."""
    readers: list[asyncio.StreamReader] = []

    async def first_event_then_more_later(reader, writer) -> None:
        readers.append(reader)
        writer.write(OK_HEAD + chunk(f"data: {CHUNK}\r\n\r\n".encode()))  # the head and the first event, one write
        await writer.drain()
        await asyncio.sleep(30)

    async with raw_server(first_event_then_more_later) as (url, _):
        registry = Registry(expiry_s=60)
        registry.register(WorkerRegistration(worker_id="a", url=url.removesuffix("/v1/chat/completions"),
                                             models=[ModelCard(id="m")], max_concurrency=2))
        settings = ControllerSettings(first_token_timeout_s=5, token_timeout_s=5)
        async with worker_client(settings) as session:
            dispatcher = Dispatcher(registry, ShortestQueue(random.Random(0)), session, settings)
            started: list = []
            start_early = starts_early(dispatcher, started)

            def start(up) -> None:
                start_early(up)
                opening.cancel()  # the client left, before the task has woken

            opening = asyncio.create_task(dispatcher.open(BODY, "m", "rid", on_first=start))
            with pytest.raises(asyncio.CancelledError):
                await opening
            assert len(started) == 1 and started[0].response.closed
            await wait_until_async(lambda: readers and readers[0].at_eof(), 5, "the worker's connection to close")
            worker = registry.get("a")
            assert worker.in_flight == 0 and worker.healthy, "the client's leaving was taken for the worker's failure"


async def test_a_first_event_that_comes_as_the_first_token_deadline_ends_is_the_answer_not_a_failover():
    """The first event and the first-token deadline come due in the same turn of the event loop (a controller that
    was paused, or very busy): the stream started from the connection's callback, and its head may be out, so the
    request goes on with it. A failover then began a second response on the first (chaos test: the client read a
    response cut short)."""
    def late_first_event(timeout_s: float):
        async def answer(reader, writer) -> None:
            writer.write(OK_HEAD + chunk(f"data: {CHUNK}\r\n\r\n".encode()))
            time.sleep(timeout_s + 0.2)  # the whole loop paused: on waking, the deadline is due and the bytes are in
            await asyncio.sleep(0.1)
            writer.write(chunk(f"data: {CHUNK}\r\n\r\n".encode()) + chunk(b"data: [DONE]\r\n\r\n") + b"0\r\n\r\n")
        return answer

    timeout_s = 0.3
    async with raw_server(late_first_event(timeout_s)) as (late_url, _), LoopbackWorkers() as others:
        registry = Registry(expiry_s=60)
        for name, url in (("late", late_url.removesuffix("/v1/chat/completions")), ("other", await others.start(ok()))):
            registry.register(WorkerRegistration(worker_id=name, url=url, models=[ModelCard(id="m")],
                                                 max_concurrency=2))
        registry.acquire(registry.get("other"))  # busier: the request goes to "late" first, "other" is the failover
        settings = ControllerSettings(first_token_timeout_s=timeout_s, token_timeout_s=5)
        async with worker_client(settings) as session:
            dispatcher = Dispatcher(registry, ShortestQueue(random.Random(0)), session, settings)
            started: list = []
            up = await dispatcher.open(BODY, "m", "rid", on_first=starts_early(dispatcher, started))
            events = [e async for e in payloads(dispatcher.relay(up))]
    assert up.worker.worker_id == "late" and started == [up]
    assert sum(others.calls.values()) == 0, "the request failed over after its stream had started"
    assert events == [CHUNK, CHUNK, "[DONE]"], events  # the stream goes on: its connection was not cut
    assert registry.get("late").healthy

