"""Security defaults through the public HTTP surfaces of real processes: registration secret, reachability check of
the advertised worker URL, API keys, body size limit, loopback binding, and SSRF refusal of remote media URLs
(enforced by workers/media.py; tested here end to end through the controller)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from common.protocol import ModelCard
from tests.support.stack import free_port, start_controller, start_worker

SECRET = "s3cret-for-tests"
KEY = "key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir, registration_secret=SECRET, api_keys=[KEY], max_body_bytes=MAX_BODY)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, registration_secret=SECRET,
                          allow_remote_media=True, wait_registered=False)
    try:
        deadline = time.monotonic() + 30
        while not httpx.get(controller.url + "/v1/models", headers=AUTH).json()["data"]:
            assert time.monotonic() < deadline, "worker did not register:\n" + worker.log()[-2000:]
            time.sleep(0.1)
        model = httpx.get(controller.url + "/v1/models", headers=AUTH).json()["data"][0]["id"]
        yield controller, worker, model
    finally:
        worker.stop()
        controller.stop()


def registration(url: str, worker_id: str = "intruder") -> dict:
    return {"worker_id": worker_id, "url": url, "models": [{"id": "fake"}], "max_concurrency": 1}


@pytest.mark.parametrize("headers", [{}, {"X-Registration-Secret": "wrong"}])
def test_registration_without_the_secret_is_refused(stack, headers):
    controller, worker, _ = stack
    r = httpx.post(controller.url + "/workers/register", json=registration(worker.url), headers=headers)
    assert r.status_code == 403
    assert "registration secret" in r.json()["error"]["message"]
    r = httpx.post(controller.url + "/workers/heartbeat", json={"worker_id": "intruder"}, headers=headers)
    assert r.status_code == 403
    models = httpx.get(controller.url + "/v1/models", headers=AUTH).json()["data"]
    assert all("intruder" not in m["workers"] for m in models)


def test_unreachable_advertised_url_is_refused_with_the_fix(stack):
    controller, _, _ = stack
    url = f"http://127.0.0.1:{free_port()}"
    r = httpx.post(controller.url + "/workers/register", json=registration(url),
                   headers={"X-Registration-Secret": SECRET})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert url in message and "--worker-url" in message


def test_advertised_url_that_is_not_a_worker_is_refused(stack):
    controller, worker, _ = stack
    url = worker.url + "/not-a-worker"  # reachable, but its /health is a 404
    r = httpx.post(controller.url + "/workers/register", json=registration(url),
                   headers={"X-Registration-Secret": SECRET})
    assert r.status_code == 400
    assert "HTTP 404" in r.json()["error"]["message"]


async def _serve_health(port: int) -> asyncio.Server:
    """A bare HTTP server answering every request as the worker 'late-worker' would answer /health: stands for a
    worker that comes up late."""
    body = b'{"status": "ok", "worker_id": "late-worker", "model": "late-model"}'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_worker_registration_loop_reports_refusal_and_recovers(stack):
    from workers.registration import Registrar
    from workers.settings import WorkerSettings

    controller, _, _ = stack
    port = free_port()
    settings = WorkerSettings(model_path="unused", controller_url=controller.url, registration_secret=SECRET,
                              worker_url=f"http://127.0.0.1:{port}", worker_id="late-worker")
    async with httpx.AsyncClient() as client:
        registrar = Registrar(settings, client, ModelCard(id="late-model"), lambda: (0, 0))
        await registrar.beat()
        assert not registrar.registered
        assert "--worker-url" in registrar.problem and str(port) in registrar.problem
        server = await _serve_health(port)
        try:
            await registrar.beat()
            assert registrar.registered and registrar.problem is None
            models = (await client.get(controller.url + "/v1/models", headers=AUTH)).json()["data"]
            assert "late-model" in [m["id"] for m in models]
            await registrar.unregister()
        finally:
            server.close()
            await server.wait_closed()

        wrong = Registrar(settings.model_copy(update={"registration_secret": "nope", "worker_id": "w2"}),
                          client, ModelCard(id="x"), lambda: (0, 0))
        await wrong.beat()
        assert not wrong.registered and "registration secret" in wrong.problem


def test_api_key_is_required_on_the_public_api(stack):
    controller, _, model = stack
    for path in ("/v1/models", "/workers", "/metrics"):
        r = httpx.get(controller.url + path)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(controller.url + "/v1/chat/completions", headers={"Authorization": "Bearer nope"},
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401
    assert httpx.get(controller.url + "/health").status_code == 200  # probes stay open


def test_request_body_over_the_limit_is_refused(stack):
    controller, _, model = stack
    big = "x" * (MAX_BODY + 1)
    r = httpx.post(controller.url + "/v1/chat/completions", headers=AUTH,
                   json={"model": model, "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_servers_bind_loopback_unless_told_otherwise(stack):
    import psutil

    from app.settings import UISettings
    from controller.settings import ControllerSettings
    from workers.settings import WorkerSettings

    assert ControllerSettings().host == WorkerSettings(model_path="x").host == UISettings().host == "127.0.0.1"
    controller, worker, _ = stack
    for proc in (controller, worker):
        listening = [c.laddr.ip for c in psutil.Process(proc.popen.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and set(listening) == {"127.0.0.1"}


PRIVATE_URLS = [
    "http://127.0.0.1:{port}/health",  # loopback: the controller itself
    "http://localhost/cat.png",
    "http://10.1.2.3/cat.png",
    "http://192.168.0.10/cat.png",
    "http://172.16.5.5/cat.png",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://[::1]/cat.png",
    "http://0.0.0.0/cat.png",
    "http://[::ffff:127.0.0.1]/cat.png",  # IPv4-mapped IPv6 loopback
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_remote_media_to_private_addresses_is_refused(stack, url):
    controller, _, model = stack
    url = url.format(port=controller.url.rsplit(":", 1)[1])
    r = httpx.post(controller.url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "remote_url_forbidden"
    assert "private" in error["message"] or "loopback" in error["message"]
