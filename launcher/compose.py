"""Which processes make up the stack and how each is started: command line, environment (secrets go there, not
on command lines that `ps` shows to every user), log file and health URL."""

from __future__ import annotations

import json
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.supervisor import ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def local_host(host: str) -> str:
    """How this machine reaches something bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def shown_host(host: str) -> str:
    """What to print in URLs for people."""
    if host not in ("0.0.0.0", "::"):
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return host


def free_port() -> int:
    """A loopback port nobody listens on right now (the in-process stack, tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((local_host(host), port)) == 0


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Stack:
    """Where the stack's processes log, and which interpreter and folder they run from."""

    log_dir: Path

    def spec(self, name: str, argv: list[str], env: dict[str, str], health_url: str | None,
             registers: bool = False) -> ServiceSpec:
        return ServiceSpec(name, argv, self.log_dir / f"{name}.log", env, health_url, registers, ROOT)

    def controller(self, host: str, port: int, registration_secret: str | None, api_key: str | None) -> ServiceSpec:
        env = {}
        if registration_secret:
            env["INTERNVL_CONTROLLER_REGISTRATION_SECRET"] = registration_secret
        if api_key:
            env["INTERNVL_CONTROLLER_API_KEYS"] = json.dumps([api_key])
        argv = python_module("controller", "--host", host, "--port", str(port))
        return self.spec("controller", argv, env, f"http://{local_host(host)}:{port}/health")

    def ui(self, host: str, port: int, controller_url: str, api_key: str | None) -> ServiceSpec:
        env = {"INTERNVL_UI_API_KEY": api_key} if api_key else {}
        argv = python_module("app", "--controller-url", controller_url, "--host", host, "--port", str(port))
        return self.spec("ui", argv, env, f"http://{local_host(host)}:{port}/")

    def worker(self, index: int, *, model_path: Path, engine: str, tp: int, gpus: list[str], host: str, port: int,
               controller_url: str, advertised_base: str, registration_secret: str | None,
               allow_unauthenticated: bool, extra_args: list[str]) -> ServiceSpec:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}  # empty: a CPU worker sees no GPU
        if registration_secret:
            env["INTERNVL_WORKER_REGISTRATION_SECRET"] = registration_secret
        argv = python_module("workers", "--model-path", str(model_path), "--engine", engine, "--tp", str(tp),
                             "--host", host, "--port", str(port), "--controller-url", controller_url,
                             "--worker-url", f"{advertised_base}:{port}",
                             "--worker-id", f"{socket.gethostname().split('.')[0] or 'host'}-{port}")
        if allow_unauthenticated:
            argv.append("--allow-unauthenticated")
        argv += extra_args
        return self.spec(f"worker-{index}", argv, env, f"http://{local_host(host)}:{port}/health", registers=True)


def split_worker_url(url: str) -> tuple[str, int | None]:
    """`http://HOST:PORT` -> ("http://HOST", PORT); `http://HOST` -> ("http://HOST", None)."""
    m = re.fullmatch(r"(https?://[^/:]+|https?://\[[^\]]+\])(?::(\d+))?", url)
    if not m:
        raise ValueError(f"--worker-url must look like http://HOST:PORT, not {url!r}")
    return m.group(1), int(m.group(2)) if m.group(2) else None
