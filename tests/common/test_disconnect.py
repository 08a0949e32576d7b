"""common/disconnect.py: the one disconnect helper and the one ClientGone, with the error handler both apps install
(common/http.py `install_error_handlers`). Real uvicorn servers on loopback, clients on raw sockets that leave.

- The controller's way: a route awaits its work through the helper; the client leaves; the work is cancelled and
  the one ClientGone reaches the handler: a 499 in the access log at info, no error, no traceback.
- The worker's way: the work runs in a thread under a request slot; ClientGone is raised only once the thread is
  out, and the slot and its pixels are back. In the real worker app the response logs "client left" and answers 499.
- A client that leaves a relayed stream (SSEBytesResponse) ends it at once and closes what it relays.
- One ClientWatch guards the steps of a request (the controller's wait for a worker, then the stream): a client that
  leaves between two steps makes the next one end at once, without running it. Under uvicorn's own protocol the watch
  waits for the ASGI disconnect; under the controller's (common/bounded_http.py) it takes the connection's word.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings

import pytest
from fastapi import FastAPI, Request, Response

from common.bounded_http import bounded_http
from common.disconnect import LEFT, ClientGone, ClientWatch, until_client_leaves
from common.http import install_error_handlers, read_body
from common.logging_setup import install_request_ids
from common.sse import SSEBytesResponse, sse_event
from launcher.compose import free_port
from tests.support.raw_http import LeavingClient, connect
from tests.support.scripted_engine import ScriptedEngine
from tests.support.served_app import served, until
from workers.app import create_app
from workers.model_spec import detect_model_spec
from workers.settings import WorkerSettings
from workers.slots import PixelPool, RequestSlots

LEFT_S = 2.0  # how soon after the client left its work must be stopped
SERVERS = {"uvicorn": "auto", "ours": bounded_http()}  # a watch waits for the ASGI disconnect / takes the server's word


def app_with_handlers() -> FastAPI:
    """A FastAPI app with the installers the controller's and the worker's `create_app` both call."""
    app = FastAPI()
    install_error_handlers(app)
    install_request_ids(app)
    return app


def access_lines(caplog, path: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "internvl.access" and r.getMessage().startswith(f"POST {path} ")]


def assert_one_quiet_499(caplog, path: str) -> None:
    lines = access_lines(caplog, path)
    assert [(r.levelno, r.status) for r in lines] == [(logging.INFO, 499)], caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def until_logged(caplog, path: str) -> None:
    await until(lambda: access_lines(caplog, path), 10, f"the access line of {path} is written")


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO)


async def test_the_controllers_way_a_leaving_client_cancels_the_work_and_is_a_quiet_499(caplog):
    started, raised, cancelled = asyncio.Event(), [], []

    async def dispatch() -> None:  # stands for the controller's wait for a worker's first token
        started.set()
        try:
            await asyncio.Event().wait()  # no answer ever comes
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise

    app = app_with_handlers()

    @app.post("/chat")
    async def chat(request: Request):
        await read_body(request, 1000)
        try:
            await until_client_leaves(request.receive, dispatch())
        except BaseException as exc:
            raised.append(exc)
            raise

    async with served(app) as url:
        client = LeavingClient(url, "/chat", {"hello": "world"})
        await asyncio.wait_for(started.wait(), 10)
        left = time.monotonic()
        client.close()
        await until_logged(caplog, "/chat")
    assert cancelled and cancelled[0] - left < LEFT_S
    assert [type(e) for e in raised] == [ClientGone]
    assert_one_quiet_499(caplog, "/chat")


@pytest.mark.parametrize("server", SERVERS)
async def test_one_watch_guards_each_step_and_a_client_gone_between_steps_ends_the_next_at_once(caplog, server):
    steps, raised = [], []
    between = asyncio.Event()

    async def step(name: str) -> str:
        steps.append(name)
        return name

    app = app_with_handlers()

    @app.post("/steps")
    async def two_steps(request: Request):
        await read_body(request, 1000)
        assert (LEFT in request.scope.get("extensions", {})) == (server == "ours")
        watch = ClientWatch(request.receive, request.scope)
        try:
            assert await watch.guard(step("first")) == "first"
            between.set()
            await until(lambda: watch.gone, 10, "the watch sees the client leave")  # outside any step
            await watch.guard(step("second"))
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            watch.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second step, never run, is closed: no "never awaited" warning
        async with served(app, SERVERS[server]) as url:
            client = LeavingClient(url, "/steps", {})
            await asyncio.wait_for(between.wait(), 10)
            client.close()
            await until_logged(caplog, "/steps")
    assert steps == ["first"]
    assert [type(e) for e in raised] == [ClientGone]
    assert_one_quiet_499(caplog, "/steps")


async def test_a_client_leaving_while_it_sends_the_body_is_the_same_quiet_499(caplog):
    reading = asyncio.Event()
    app = app_with_handlers()

    @app.post("/body")
    async def body(request: Request):
        reading.set()
        await read_body(request, 100_000)  # raises ClientGone when the body is cut short

    async with served(app) as url:
        sock = connect(url)
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50000\r\n\r\n" + b'{"messages": [{"role": "u')
        await asyncio.wait_for(reading.wait(), 10)  # the declared 50,000 bytes never come
        sock.close()
        await until_logged(caplog, "/body")
    assert_one_quiet_499(caplog, "/body")


class SlotHeld(Response):
    """The worker's way (workers/chat_response.py): the work runs under a request slot, in a thread that checks the
    slot's cancel flag; ClientGone is not caught here, so the installed handler answers."""

    def __init__(self, slots: RequestSlots, seen: dict):
        self.slots, self.seen, self.background = slots, seen, None

    async def __call__(self, scope, receive, send) -> None:
        async with self.slots.hold("client-1") as slot:
            def decode() -> None:  # stands for media decoding or tokenizing
                try:
                    while True:
                        self.seen["running"].set()
                        slot.check()
                        time.sleep(0.005)
                finally:
                    time.sleep(0.1)  # a thread that takes its time to get out
                    self.seen["thread_out"] = time.monotonic()

            try:
                await until_client_leaves(receive, slot.in_thread(decode, pixels=100))
            except ClientGone:
                self.seen["gone"] = time.monotonic()
                self.seen["pixels_then"] = self.slots.pixels.in_use
                raise


async def test_the_workers_way_client_gone_comes_once_its_threads_are_out_and_the_slot_goes(caplog):
    slots = RequestSlots(max_concurrency=2, pixels=PixelPool(1000))
    seen: dict = {"running": threading.Event()}
    app = app_with_handlers()
    app.post("/work")(lambda: SlotHeld(slots, seen))

    async with served(app) as url:
        client = LeavingClient(url, "/work", {})
        await until(lambda: seen["running"].is_set() and len(slots) == 1, 10, "the thread works")
        left = time.monotonic()
        client.close()
        await until_logged(caplog, "/work")
    assert seen["thread_out"] <= seen["gone"] < left + LEFT_S  # ClientGone only once the thread was out
    assert seen["pixels_then"] == 0 and slots.pixels.in_use == 0 and len(slots) == 0
    assert_one_quiet_499(caplog, "/work")


async def test_the_real_worker_logs_the_leaving_client_and_answers_499(demo_checkpoint, caplog):
    settings = WorkerSettings(model_path=str(demo_checkpoint), port=free_port(), controller_url="", body_parsers=0,
                              model_name="demo", worker_id="w1")
    engine = ScriptedEngine(settings, detect_model_spec(demo_checkpoint))
    app = create_app(settings, engine)
    service = app.state.service
    async with served(app) as url:
        client = LeavingClient(url, "/v1/chat/completions", {
            "model": "demo", "messages": [{"role": "user", "content": "scripted:hang=w1"}], "stream": True})
        await until(lambda: service.slots.stages() == {"engine": 1}, 10, "the engine works on the request")
        client.close()
        await until_logged(caplog, "/v1/chat/completions")
        assert len(service.slots) == 0 and engine.running == 0
    assert [r.getMessage() for r in caplog.records if "client left" in r.getMessage()] != []
    lines = access_lines(caplog, "/v1/chat/completions")
    assert [r.status for r in lines] == [499], caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("server", SERVERS)
async def test_a_client_leaving_a_relayed_stream_ends_it_and_closes_the_relay(caplog, server):
    sent, closed = asyncio.Event(), []

    async def blocks():  # stands for the controller's relay of a worker's stream
        try:
            yield sse_event('{"choices": []}')
            sent.set()
            await asyncio.Event().wait()  # the worker goes quiet
        finally:
            closed.append(time.monotonic())

    app = app_with_handlers()
    app.post("/stream")(lambda: SSEBytesResponse(blocks()))
    async with served(app, SERVERS[server]) as url:
        client = LeavingClient(url, "/stream", {})
        assert b"200 OK" in await asyncio.to_thread(client.read_some)
        await asyncio.wait_for(sent.wait(), 10)
        left = time.monotonic()
        client.close()
        await until(lambda: closed, 10, "the relay is closed")
        await until_logged(caplog, "/stream")
    assert closed[0] - left < LEFT_S
    assert [r.status for r in access_lines(caplog, "/stream")] == [200]  # begun as 200: the client ended it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("server", SERVERS)
async def test_a_client_gone_before_the_relayed_stream_begins_is_a_quiet_499_and_the_relay_is_closed(caplog, server):
    """The controller hands its request's watch to the response; a client it saw leave before then gets nothing,
    the relay is closed, and the access line reads 499 as for any client that left."""
    closed, reading = [], asyncio.Event()

    async def blocks():
        try:
            yield sse_event('{"choices": []}')
        finally:
            closed.append(True)

    app = app_with_handlers()

    @app.post("/late")
    async def late(request: Request):
        await read_body(request, 1000)
        watch = ClientWatch(request.receive, request.scope)
        reading.set()
        await until(lambda: watch.gone, 10, "the watch sees the client leave")
        relay = blocks()
        await relay.__anext__()  # the relay has begun (as the controller's has its first event)
        return SSEBytesResponse(relay, watch=watch)

    async with served(app, SERVERS[server]) as url:
        client = LeavingClient(url, "/late", {})
        await asyncio.wait_for(reading.wait(), 10)
        client.close()
        await until_logged(caplog, "/late")
    assert closed == [True]
    assert_one_quiet_499(caplog, "/late")
