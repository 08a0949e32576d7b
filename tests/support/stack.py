"""Start real controller and worker processes on free loopback ports, wait until they are healthy, stop them.

Built on the launcher's own process handling (launcher/supervisor.py: own process group, log file) and readiness
probe (launcher/health.py), so tests start processes the way `./launch.sh` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from launcher.compose import ROOT, free_port, python_module
from launcher.health import Probe
from launcher.supervisor import ServiceSpec, signal_group, spawn

SCRIPTED = "tests.support.scripted_engine:ScriptedEngine"
DEMO_MODEL = "internvl-demo"  # the name a worker serves the demo checkpoint under (its folder's name)
# a worker API key for tests that call a registered worker directly (it takes the controller's relay token, or its keys)
DIRECT_KEY = "direct-use-key"
EXAMPLES = ROOT / "static" / "examples"  # the example files the UI offers: a photo, a chart, a video


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    url: str
    log_path: Path
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        signal_group(self.popen.pid, signal.SIGKILL)  # anything it started (its own process group)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(map(str, value))] if value else []
        else:
            out += [flag, str(value)]
    return out


def _spawn(name: str, module: str, options: dict, log_dir: Path, env: dict | None,
           root: Path = ROOT) -> tuple[subprocess.Popen, Path]:
    log_path = log_dir / f"{name}.log"
    pythonpath = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    spec = ServiceSpec(name, python_module(module, *_flags(options)), log_path,
                       {"PYTHONPATH": pythonpath, **(env or {})}, cwd=root)
    return spawn(spec), log_path


def wait_healthy(proc: Proc, timeout: float = 90.0, path: str = "/health") -> None:
    probe = Probe(proc.url + path)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-3000:]}")
            if probe.check(client)[0]:
                return
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} not healthy after {timeout} s:\n{proc.log()[-3000:]}")


def start_controller(log_dir: Path, port: int | None = None, env: dict | None = None, root: Path = ROOT,
                     **options) -> Proc:
    """`root`: the checkout whose controller runs (benchmarks compare two)."""
    port = port or free_port()
    options.setdefault("heartbeat_expiry_s", 3.0)
    popen, log_path = _spawn(f"controller-{port}", "controller", {"port": port, **options}, log_dir, env, root)
    proc = Proc("controller", popen, f"http://127.0.0.1:{port}", log_path)
    wait_healthy(proc)
    return proc


def start_worker(log_dir: Path, model_path: str | Path, controller_url: str | None, engine: str = "transformers",
                 port: int | None = None, env: dict | None = None, wait_registered: bool = True,
                 **options) -> Proc:
    proc = spawn_worker(log_dir, model_path, controller_url, engine, port, env, **options)
    wait_worker(proc, controller_url if wait_registered else None)
    return proc


def spawn_worker(log_dir: Path, model_path: str | Path, controller_url: str | None, engine: str = "transformers",
                 port: int | None = None, env: dict | None = None, **options) -> Proc:
    """Start a worker without waiting for it: spawn several, then `wait_worker` each, so their (seconds-long)
    imports overlap."""
    port = port or free_port()
    options.setdefault("heartbeat_interval_s", 0.5)
    opts = {"model_path": str(model_path), "engine": engine, "port": port,
            "controller_url": controller_url or "", **options}
    popen, log_path = _spawn(f"worker-{port}", "workers", opts, log_dir, env)
    return Proc("worker", popen, f"http://127.0.0.1:{port}", log_path, extra={"options": opts, "env": env})


def wait_worker(proc: Proc, controller_url: str | None = None, timeout: float = 120.0) -> Proc:
    wait_healthy(proc, timeout=timeout)
    if controller_url:
        proc.extra["worker_id"] = wait_registered_at(controller_url, proc.url)
    return proc


def start_lmdeploy_proxy(log_dir: Path, port: int | None = None) -> Proc:
    """lmdeploy's own `lmdeploy serve proxy`, for side-by-side overhead figures (bench/overhead_bench.py)."""
    port = port or free_port()
    lmdeploy = str(Path(sys.executable).with_name("lmdeploy"))
    cmd = [lmdeploy, "serve", "proxy", "--server-name", "127.0.0.1", "--server-port", str(port),
           "--routing-strategy", "random", "--disable-cache-status", "--log-level", "WARNING"]
    spec = ServiceSpec(f"lmdeploy-proxy-{port}", cmd, log_dir / f"lmdeploy-proxy-{port}.log",
                       {"UVICORN_LOG_LEVEL": "warning"}, cwd=ROOT)
    proc = Proc("lmdeploy-proxy", spawn(spec), f"http://127.0.0.1:{port}", spec.log_path)
    wait_healthy(proc, path="/v1/models")
    return proc


# The Rust routers' flags for a fair comparison with the controller: the same job (one pool per model, no
# cache-aware prefix tree, which the controller does not build either), retries before the first token and the
# circuit breaker left at their defaults (on), no rate limit, metrics on a free loopback port (both default to 29000
# on every interface). bench/overhead_bench.py prints them; BENCHMARKS.md says why each.
ROUTER_FLAGS = ["--policy", "round_robin"]


def start_rust_router(kind: str, log_dir: Path, worker_urls: list[str], port: int | None = None,
                      flags: list[str] | None = None) -> Proc:
    """The field's Rust routers in front of our workers: `kind` "vllm-router" (vLLM's router, PyPI `vllm-router`) or
    "sglang-router" (SGLang's model gateway, PyPI `sglang-router`). Both forward every request with their own fields
    added (logprobs, no_stop_trim, ignore_eos, ...)."""
    port = port or free_port()
    binary = str(Path(sys.executable).with_name(kind))
    cmd = [binary, *(["launch"] if kind == "sglang-router" else []), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning" if kind == "vllm-router" else "warn",
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
           *(ROUTER_FLAGS if flags is None else flags), "--worker-urls", *worker_urls]
    spec = ServiceSpec(f"{kind}-{port}", cmd, log_dir / f"{kind}-{port}.log", {}, cwd=ROOT)
    proc = Proc(kind, spawn(spec), f"http://127.0.0.1:{port}", spec.log_path, extra={"cmd": cmd})
    wait_healthy(proc, path="/health")
    return proc


def start_vllm_router(log_dir: Path, worker_urls: list[str], port: int | None = None) -> Proc:
    return start_rust_router("vllm-router", log_dir, worker_urls, port)


def add_proxy_node(proxy_url: str, worker_url: str) -> None:
    """Register a worker with lmdeploy's proxy; it reads the worker's /v1/models to learn the served model."""
    r = httpx.post(proxy_url + "/nodes/add", json={"url": worker_url}, timeout=10)
    r.raise_for_status()
    models = httpx.get(proxy_url + "/v1/models", timeout=5).json()["data"]
    if not models:
        raise RuntimeError(f"lmdeploy proxy did not take worker {worker_url}: {r.text}")


def wait_registered_at(controller_url: str, worker_url: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = httpx.get(controller_url + "/workers", timeout=2).json()["workers"]
        for w in workers:
            if w["url"] == worker_url and w["healthy"]:
                return w["worker_id"]
        time.sleep(0.1)
    raise RuntimeError(f"worker {worker_url} did not register with {controller_url} in {timeout} s")
