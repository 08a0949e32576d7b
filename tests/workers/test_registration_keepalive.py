"""The worker's heartbeats and a controller closing idle connections (workers/registration.py KEEPALIVE_S).

uvicorn closes a kept-alive connection 5 s after its last response; the worker heartbeats every 5 s by default. A
heartbeat sent on a connection just as the controller's timer closed it was lost (ReadError); the worker then
registered again, which gives it a new relay token, and a request the controller relayed to it between the two
tokens failed (503 with one worker). Now the controller keeps a registered worker's connection open longer
(REGISTRANT_KEEP_ALIVE_S) than the worker's client keeps it idle (KEEPALIVE_S), and heartbeats reuse it.

The fake controller here closes a connection, unanswered, whenever a second request comes on it: what a server does
when its keep-alive timer fires as a request arrives. With an interval longer than the client keeps a connection
idle, the worker must keep its registration: each heartbeat goes on a new connection. The real controller keeps a
registrant's connection past its default keep-alive, and only a registrant's (tests/controller/
test_registration_guard.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from common.protocol import REGISTRANT_IDLE_S, REGISTRANT_KEEP_ALIVE_S, ModelCard
from workers import registration
from tests.support.raw_worker import read_request
from tests.support.stack import free_port
from tests.support.waiting import wait_until_async
from workers.registration import Registrar, controller_client
from workers.settings import WorkerSettings


@contextlib.asynccontextmanager
async def closing_controller():
    """-> (url, paths of the requests answered): a controller that answers one request per connection, and closes
    the connection without an answer when a second comes on it."""
    answered: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await read_request(reader)
                if served:
                    break  # the keep-alive timer fired as this request came: closed, unanswered
                path = head.split(b" ")[1].decode()
                answered.append(path)
                body = json.dumps({"registered": "w", "heartbeat_expiry_s": 30, "relay_token": "t"}
                                  if path == "/workers/register" else {"ok": True}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                             % (len(body), body))
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", free_port())
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", answered


def test_heartbeats_reuse_a_connection_the_controller_keeps_longer_than_the_worker():
    default_interval = WorkerSettings.model_fields["heartbeat_interval_s"].default
    assert default_interval < registration.KEEPALIVE_S == REGISTRANT_IDLE_S <= REGISTRANT_KEEP_ALIVE_S / 2


async def test_heartbeats_after_an_idle_interval_never_go_on_a_connection_being_closed(monkeypatch):
    monkeypatch.setattr(registration, "KEEPALIVE_S", 1.0)  # (short, for the test's time)
    interval = registration.KEEPALIVE_S + 0.3  # idle longer than the client keeps a connection
    async with closing_controller() as (url, answered), controller_client() as client:
        settings = WorkerSettings(model_path="unused", controller_url=url, heartbeat_interval_s=interval)
        registrar = Registrar(settings, client, ModelCard(id="m"), lambda: (0, 0))
        task = asyncio.create_task(registrar.run())
        try:
            await wait_until_async(lambda: answered.count("/workers/heartbeat") >= 3
                                   or answered.count("/workers/register") > 1, 20, "three heartbeats answered")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert answered.count("/workers/register") == 1, f"the worker registered again: {answered}"
    assert registrar.registered and registrar.problem is None
