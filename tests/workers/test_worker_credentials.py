"""Worker credentials (issue 15, item 1) through real controller and worker processes on loopback.

The controller issues each worker a relay token at registration and sends it on every relayed request; a worker
takes chat and /metrics requests only with that token or one of its own --api-keys; a worker that would be open to the
network with neither refuses to start unless told --allow-unauthenticated."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.stack import ROOT, SCRIPTED, free_port, start_controller, start_worker

WORKER_KEY = "worker-own-key"
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    keyed = start_worker(log_dir, demo_checkpoint, controller.url, SCRIPTED, model_name="scripted",
                         api_keys=[WORKER_KEY])
    try:
        yield controller, keyed
    finally:
        keyed.stop()
        controller.stop()


def test_worker_with_its_own_api_keys_serves_through_the_controller(stack):
    controller, _ = stack
    r = httpx.post(controller.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/metrics"])
def test_worker_refuses_callers_without_a_credential(stack, path):
    _, worker = stack
    send = (lambda **kw: httpx.post(worker.url + path, json=CHAT, timeout=30, **kw)) if path.endswith("ions") else \
        (lambda **kw: httpx.get(worker.url + path, timeout=30, **kw))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Worker-Token": "made-up"}):
        r = send(headers=headers)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    assert send(headers={"Authorization": f"Bearer {WORKER_KEY}"}).status_code == 200
    assert httpx.get(worker.url + "/health").status_code == 200  # probes stay open


def test_registered_worker_without_keys_takes_only_the_controllers_token(stack, demo_checkpoint, log_dir):
    controller, _ = stack
    worker = start_worker(log_dir, demo_checkpoint, controller.url, SCRIPTED, model_name="open-before")
    try:
        r = httpx.post(worker.url + "/v1/chat/completions", json={**CHAT, "model": "open-before"}, timeout=30)
        assert r.status_code == 401, r.text
        assert controller.url in r.json()["error"]["message"]  # says where to send requests instead
        assert httpx.get(worker.url + "/metrics").status_code == 401
        r = httpx.post(controller.url + "/v1/chat/completions", json={**CHAT, "model": "open-before"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        worker.stop()


def _run_worker(checkpoint, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers", "--model-path", str(checkpoint), "--engine", SCRIPTED,
                             "--port", str(free_port()), *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_exposed_worker_without_credentials_refuses_to_start(demo_checkpoint):
    proc = _run_worker(demo_checkpoint, "--host", "0.0.0.0", "--controller-url", "")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "--allow-unauthenticated" in out and "--api-keys" in out and "0.0.0.0" in out


def test_allow_unauthenticated_lets_an_exposed_worker_start(demo_checkpoint, log_dir):
    port = free_port()
    worker = start_worker(log_dir, demo_checkpoint, None, SCRIPTED, port=port, host="0.0.0.0",
                          allow_unauthenticated=True, model_name="scripted")
    try:
        assert httpx.post(worker.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    finally:
        worker.stop()
