"""launch.sh and its helpers. The integration part runs launch.sh as a subprocess in a fresh copy of the repository
(the files git tracks or would track: what a `git clone` of this working tree gives), with the test's virtualenv
(INTERNVL_VENV, so nothing is installed) and no model hub: it must serve the demo checkpoint, report healthy
services, answer a chat through the web UI's API, count it in /metrics, and leave no process behind on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from scripts.plan_gpus import Gpu, PlanError, parse_nvidia_smi, plan, select
from scripts.resolve_model import ResolveError, resolve
from tests.support.stack import ROOT, free_port

GIB = 2**30


# ------------------------------------------------------------------------------------------ GPU grouping


def gpus(n: int, gib: int) -> list[Gpu]:
    return [Gpu(str(i), gib * 1024) for i in range(n)]


def test_no_gpu_means_cpu_workers():
    assert plan([], 5 * GIB).groups == [[]]
    assert plan([], 5 * GIB, workers=2).groups == [[], []]
    with pytest.raises(PlanError, match="needs GPUs"):
        plan([], GIB, tp=2)


def test_small_model_gets_one_worker_per_gpu():
    p = plan(gpus(4, 80), 2 * GIB)
    assert p.tp == 1 and p.groups == [["0"], ["1"], ["2"], ["3"]]


def test_tp_grows_until_the_weights_fit():
    # 40 GiB of weights on 24 GiB GPUs: one or two GPUs hold too little next to the cache; four do.
    p = plan(gpus(8, 24), 40 * GIB)
    assert p.tp == 4 and p.groups == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]


def test_explicit_tp_and_workers():
    assert plan(gpus(4, 80), GIB, tp=2, workers=1).groups == [["0", "1"]]
    with pytest.raises(PlanError, match="need 6 GPUs"):
        plan(gpus(4, 80), GIB, tp=2, workers=3)
    with pytest.raises(PlanError, match="--tp 8 needs 8 GPUs"):
        plan(gpus(4, 80), GIB, tp=8)


def test_gpu_selection_and_nvidia_smi_parsing():
    found = parse_nvidia_smi("0, 81559\n1, 81559\nNo devices were found\n")
    assert found == [Gpu("0", 81559), Gpu("1", 81559)]
    assert select(found, "1") == [Gpu("1", 81559)]
    with pytest.raises(PlanError, match="visible GPUs are: 0,1"):
        select(found, "0,5")


# -------------------------------------------------------------------------------------------- model choice


def test_model_folder_must_be_a_checkpoint(tmp_path):
    with pytest.raises(ResolveError, match="no config.json"):
        resolve(str(tmp_path), tmp_path / "demo")
    with pytest.raises(ResolveError, match="no such folder"):
        resolve(str(tmp_path / "missing"), tmp_path / "demo")


def test_named_hub_model_is_never_replaced_by_the_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ResolveError, match="--model /path/to/checkpoint"):
        resolve("OpenGVLab/InternVL3-1B-hf", tmp_path / "demo")


def test_no_model_and_no_hub_serves_the_demo_checkpoint(tmp_path, monkeypatch, demo_checkpoint):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder, random_weights = resolve(None, demo_checkpoint)  # an existing build is reused, not rebuilt
    assert folder == demo_checkpoint.resolve() and random_weights
    assert resolve(str(demo_checkpoint), tmp_path / "unused") == (demo_checkpoint.resolve(), True)


# ------------------------------------------------------------------------------------------ flag handling


def launch(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = {**os.environ, "INTERNVL_VENV": sys.prefix}
    return subprocess.run(["bash", str(ROOT / "launch.sh"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/")


def test_help_and_clear_errors_for_bad_flags(tmp_path):
    assert launch("--help").returncode == 0 and "./launch.sh worker" in launch("--help").stdout
    for args, message in [(["--bogus"], "unknown argument '--bogus'"), (["--tp", "two"], "--tp takes a number"),
                          (["--port"], "--port needs a value"), (["--engine", "vllm"], "--engine takes"),
                          (["worker"], "needs --controller-url"),
                          (["worker", "--controller-url", "http://10.0.0.1:21001", "--host", "0.0.0.0",
                            "--log-dir", str(tmp_path)], "also pass --worker-url")]:
        r = launch(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)


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


class Launched:
    def __init__(self, popen: subprocess.Popen, root: Path, ports: dict[str, int]):
        self.popen, self.root, self.ports = popen, root, ports
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("==> Ready") for line in self.lines):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in (self.root / "logs").glob("*.log"))
                raise AssertionError(f"launch.sh not ready (exit {self.popen.poll()}):\n{self.output}{logs}")
            time.sleep(0.2)
        time.sleep(0.3)  # the rest of the ready block


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


# ------------------------------------------------------------------------------------ the Hugging Face Space


def test_space_mode_follows_the_controller_variable():
    from space.app import mode

    assert mode({"INTERNVL_UI_CONTROLLER_URL": "https://api.example.org"}) == "ui-only"
    assert mode({"INTERNVL_UI_CONTROLLER_URL": " "}) == mode({}) == "all-in-one"


@pytest.mark.slow
def test_space_entry_point_serves_a_chat_in_one_process(tmp_path, demo_checkpoint):
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "INTERNVL_MODEL": str(demo_checkpoint), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "INTERNVL_UI_LOG_DIR": str(tmp_path / "conversations")}
    log_path = tmp_path / "space.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen([sys.executable, "space/app.py"], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert popen.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert len(psutil.Process(popen.pid).children(recursive=True)) == 0  # one process: worker in-process
        history, _ = Client(f"http://127.0.0.1:{port}", verbose=False).predict(
            box={"text": "Hi", "files": []}, history=[], model=demo_checkpoint.name, system_prompt="",
            max_new_tokens=16, api_name="/chat")
        assert history[-1]["role"] == "assistant" and history[-1]["content"][0]["text"].strip()
    finally:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(20)
