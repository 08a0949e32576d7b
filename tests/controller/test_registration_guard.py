"""Who may register, and which URLs become workers (issue 15, item 4), against real controller and worker processes
on loopback: a URL must answer /health as that very worker, the controller's own address and absurd concurrency are
refused, a controller without a secret takes registrations from its own machine only (and probes nothing for anyone
else), and a worker URL that leads back to a controller is caught at the first nested request."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.stack import SCRIPTED, free_port, start_controller, start_worker
from tests.support.waiting import holds_for_async


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir, host="0.0.0.0", first_token_timeout_s=10)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, SCRIPTED, model_name="scripted")
    try:
        yield controller, worker, worker.extra["worker_id"]
    finally:
        worker.stop()
        controller.stop()


def registration(url: str, worker_id: str, model: str = "scripted", **extra) -> dict:
    return {"worker_id": worker_id, "url": url, "models": [{"id": model}], "max_concurrency": 1, **extra}


def refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    for word in words:
        assert word in message, message


def test_a_url_that_answers_as_another_worker_is_refused(stack):
    controller, worker, worker_id = stack
    r = httpx.post(controller.url + "/workers/register", json=registration(worker.url, "impostor"))
    refused(r, 400, worker_id, "impostor")
    r = httpx.post(controller.url + "/workers/register", json=registration(worker.url, worker_id, model="other"))
    refused(r, 400, "other")
    assert "impostor" not in httpx.get(controller.url + "/workers").text


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_the_controllers_own_address_is_refused(stack, host):
    controller, _, _ = stack
    url = controller.url.replace("127.0.0.1", host)
    r = httpx.post(controller.url + "/workers/register", json=registration(url, "myself"))
    refused(r, 400, "own address")


def test_absurd_max_concurrency_is_refused(stack):
    controller, worker, worker_id = stack
    r = httpx.post(controller.url + "/workers/register",
                   json=registration(worker.url, worker_id) | {"max_concurrency": 10**9})
    refused(r, 400, "max_concurrency")


def test_the_controller_says_at_start_how_to_let_other_hosts_register(stack):
    controller, _, _ = stack
    assert "--registration-secret" in controller.log()


def _non_loopback_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_without_a_secret_only_this_machine_may_register_and_nothing_is_probed(stack):
    controller, _, _ = stack
    address = _non_loopback_address()
    assert address, "this test needs a non-loopback IPv4 address on the machine"
    probed = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)

    def accept() -> None:
        try:
            probed.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        port = controller.url.rsplit(":", 1)[1]
        target = f"http://127.0.0.1:{listener.getsockname()[1]}"
        r = httpx.post(f"http://{address}:{port}/workers/register", json=registration(target, "outsider"))
        refused(r, 403, "--registration-secret", "own machine")
        r = httpx.post(f"http://{address}:{port}/workers/heartbeat", json={"worker_id": "outsider"})
        assert r.status_code == 403
    finally:
        thread.join()
        listener.close()
    assert not probed, "the controller connected to a URL named by a caller it does not trust"


def test_a_registration_a_local_proxy_forwards_counts_as_from_the_client_it_names(stack):
    """A proxy on this machine (trusted for its X-Forwarded-For, as uvicorn trusts loopback by default) that forwards
    another host's registration does not make it this machine's: the controller applies the proxy headers itself, on the
    routes it serves ahead of FastAPI (the heartbeat's, controller/direct_routes.py) as on the others."""
    controller, worker, worker_id = stack
    r = httpx.post(controller.url + "/workers/register", json=registration(worker.url, worker_id),
                   headers={"X-Forwarded-For": "203.0.113.7"})
    refused(r, 403, "own machine")
    r = httpx.post(controller.url + "/workers/heartbeat", json={"worker_id": worker_id},
                   headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 403


async def test_a_worker_url_that_leads_back_to_a_controller_is_caught_at_once(stack):
    """A stand-in that answers /health as a worker but forwards chats to the controller: without the loop guard each
    relayed chat comes back as a new chat, nesting without end."""
    controller, _, _ = stack
    forwarded = 0

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker_id": "looper", "model": "loop-model"})

    async def chat(request: web.Request) -> web.Response:
        nonlocal forwarded
        forwarded += 1
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(controller.url + "/v1/chat/completions", content=await request.read(),
                                  headers={k: v for k, v in request.headers.items()
                                           if k.lower() in ("content-type", "x-worker-token")})
        return web.Response(body=r.content, status=r.status_code, content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(controller.url + "/workers/register", json=registration(url, "looper", "loop-model"))
            assert r.status_code == 200, r.text
            started = time.monotonic()
            r = await client.post(controller.url + "/v1/chat/completions",
                                  json={"model": "loop-model", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code >= 400
            await holds_for_async(lambda: forwarded == 1, 0.2, "one request forwarded, none nested")
            assert time.monotonic() - started < 10
            workers = (await client.get(controller.url + "/workers")).json()["workers"]
            assert "looper" not in [w["worker_id"] for w in workers]  # dropped: it is no worker
    finally:
        await server.close()


def _ask(sock: socket.socket, method: str, path: str, body: bytes = b"") -> bytes:
    """One request on a kept connection; its answer's status line (b"closed" when the server closed it)."""
    sock.settimeout(20)
    try:
        sock.sendall(b"%s %s HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                     % (method.encode(), path.encode(), len(body), body))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += (chunk := sock.recv(65536))
            if not chunk:
                return b"closed"
    except ConnectionError:
        return b"closed"
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.split(b"\r\n")[0]


def test_a_registered_workers_connection_is_kept_past_the_keep_alive_and_no_one_elses(stack):
    """Heartbeats reuse one connection (common/protocol.py REGISTRANT_KEEP_ALIVE_S): the controller keeps a
    registrant's connection open past uvicorn's 5 s keep-alive; anyone else's closes after 5 s idle."""
    controller, _, worker_id = stack
    port = int(controller.url.rsplit(":", 1)[1])
    beat = json.dumps({"worker_id": worker_id}).encode()
    with socket.create_connection(("127.0.0.1", port)) as kept, socket.create_connection(("127.0.0.1", port)) as other:
        assert _ask(kept, "POST", "/workers/heartbeat", beat).endswith(b" 200 OK")
        assert _ask(other, "GET", "/health").endswith(b" 200 OK")
        idle_since = time.monotonic()
        other.settimeout(20)
        assert other.recv(1) == b"", "an ordinary client's idle connection is closed"
        assert time.monotonic() - idle_since >= 4.5  # (after uvicorn's 5 s, not before)
        assert _ask(kept, "POST", "/workers/heartbeat", beat).endswith(b" 200 OK"), "the worker's stays open"
