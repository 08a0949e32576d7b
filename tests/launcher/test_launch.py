"""launch.sh end to end. It runs launch.sh as a subprocess in a fresh copy of the repository
(the files git tracks or would track: what a `git clone` of this working tree gives), with the test's virtualenv
(INTERNVL_VENV, so nothing is installed) and no model hub: it must serve the demo checkpoint, report healthy
services, answer a chat through the web UI's API, count it in /metrics, and leave no process behind on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import launched as launched_process
from tests.support.stack import ROOT, free_port

# ------------------------------------------------------------------------------------ the whole stack, started


def copy_checkout(dest: Path) -> Path:
    """The files a clone of this working tree has (tracked, plus new files not ignored): no .venv, logs, caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive): skip the usual
        skip = shutil.ignore_patterns(".git", ".venv", "logs", "checkpoints", "__pycache__", ".pytest_cache")
        shutil.copytree(ROOT, dest, ignore=skip, dirs_exist_ok=True)
        return dest
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


class Launched(launched_process.Launched):
    """`./launch.sh` in a copy of the checkout: the support reader, plus the ports it was given."""

    def __init__(self, popen: subprocess.Popen, root: Path, ports: dict[str, int]):
        super().__init__(popen, root / "logs")
        self.root, self.ports = root, ports

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


@pytest.fixture(scope="module")
def launched(tmp_path_factory, demo_checkpoint):
    root = copy_checkout(tmp_path_factory.mktemp("checkout"))
    # The demo checkpoint goes where launch.sh builds it; an existing build is reused (building takes seconds more).
    shutil.copytree(demo_checkpoint, root / "checkpoints" / "demo")
    ports = {"ui": free_port(), "controller": free_port(), "worker": free_port()}
    env = {**os.environ, "INTERNVL_VENV": sys.prefix, "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path_factory.mktemp("hf")), "PYTHONPATH": ""}
    popen = subprocess.Popen(["./launch.sh", "--port", str(ports["ui"]), "--controller-port", str(ports["controller"]),
                              "--worker-port", str(ports["worker"]), "--", "--api-keys", "scrape-key"],
                             cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stack = Launched(popen, root, ports)
    try:
        stack.wait_ready(timeout=240)
        yield stack
    finally:
        if popen.poll() is None:  # the SIGTERM test did not run or failed: clean up regardless
            for child in psutil.Process(popen.pid).children(recursive=True):
                child.kill()
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)


def test_launch_serves_the_demo_checkpoint_loudly_and_healthy(launched):
    assert "RANDOM WEIGHTS" in launched.output
    assert f"Web UI:   http://127.0.0.1:{launched.ports['ui']}" in launched.output
    assert f"API:      http://127.0.0.1:{launched.ports['controller']}/v1" in launched.output
    for name in ("controller", "worker"):
        assert httpx.get(launched.url(name) + "/health", timeout=5).json()["status"] == "ok"
    assert httpx.get(launched.url("ui"), timeout=5).status_code == 200
    models = httpx.get(launched.url("controller") + "/v1/models", timeout=5).json()["data"]
    assert [m["id"] for m in models] == ["demo"] and models[0]["random_weights"]
    assert {p.name for p in (launched.root / "logs").glob("*.log")} == {"controller.log", "worker-0.log", "ui.log"}


def test_everything_listens_on_loopback_only(launched):
    children = psutil.Process(launched.popen.pid).children(recursive=True)
    listening = {c.laddr.ip for p in children for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_chat_round_trips_through_the_ui_api_and_is_counted(launched):
    from gradio_client import Client

    client = Client(launched.url("ui"), verbose=False)
    history, _ = client.predict(box={"text": "Hello there", "files": []}, history=[], model="demo",
                                system_prompt="", max_new_tokens=16, api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"][0]["text"].strip()
    metrics = httpx.get(launched.url("controller") + "/metrics", timeout=5).text
    assert 'internvl_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in metrics
    assert 'internvl_workers{state="healthy"} 1.0' in metrics
    assert httpx.get(launched.url("worker") + "/metrics", timeout=5).status_code == 401  # workers need a credential
    worker_metrics = httpx.get(launched.url("worker") + "/metrics", headers={"Authorization": "Bearer scrape-key"},
                               timeout=5).text
    assert "internvl_time_to_first_token_seconds_count 1.0" in worker_metrics


def test_request_id_travels_from_controller_to_worker_logs(launched):
    r = httpx.post(launched.url("controller") + "/v1/chat/completions", headers={"X-Request-ID": "trace-me-42"},
                   json={"model": "demo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
                   timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-42"
    logs = launched.root / "logs"
    deadline = time.monotonic() + 10  # a server writes its access line once its response is fully sent
    for name in ("controller.log", "worker-0.log"):
        while "request_id=trace-me-42" not in (logs / name).read_text():
            assert time.monotonic() < deadline, f"request id not in {name}"
            time.sleep(0.1)


def test_remote_media_urls_are_off_by_default(launched):
    r = httpx.post(launched.url("controller") + "/v1/chat/completions", timeout=30, json={
        "model": "demo", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "remote_url_forbidden"


def test_sigterm_stops_everything_it_started(launched):
    """Keep last: it stops the stack."""
    started = psutil.Process(launched.popen.pid).children(recursive=True)
    assert len(started) >= 3
    launched.popen.send_signal(signal.SIGTERM)
    assert launched.popen.wait(timeout=30) != 0
    gone, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left behind: {[p.info if hasattr(p, 'info') else p for p in alive]}"
    assert "Stopping" in launched.output
    for port in launched.ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
