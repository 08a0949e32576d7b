"""Shared pieces of the benchmark scripts: a stack of real processes (controller, scripted workers, lmdeploy's proxy),
a streaming client that times the first token, percentiles, and a psutil sampler for CPU and memory.

The workers run the scripted engine from tests/support (tokens at a set rate): the figures are about the layers
above the engine, which is why no model is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.stack import (SCRIPTED, Proc, add_proxy_node, free_port, spawn_worker,  # noqa: E402
                                 start_controller, start_lmdeploy_proxy, start_rust_router, wait_worker)

BENCH_KEY = "bench-key"  # workers' own key: the benchmarks also call them directly, not only through the controller
QUIET = "warning"  # every server logs at the same level (no access log lines), so no path pays for logging alone


def measure(phase):
    """Run a measured phase (a coroutine) with this client's cycle collector off, after one collection. The client
    is the instrument: its full collections, over the results it keeps, stopped it for up to 170 ms under 500
    streams and fell on whichever path was being measured (issue 26, the 500-stream p99)."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(phase)
    finally:
        gc.enable()


def build_checkpoint(work: Path) -> Path:
    """The demo checkpoint gives the scripted engine a real spec (template, context) to serve under."""
    from workers.demo_checkpoint import build_demo_checkpoint

    return build_demo_checkpoint(work / "internvl-demo", seed=0)


def scripted_env(tokens: int, rate: float, **extra: object) -> dict[str, str]:
    env = {"SCRIPTED_TOKENS": str(tokens), "SCRIPTED_RATE": str(rate)}
    env.update({f"SCRIPTED_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class Stack(contextlib.ExitStack):
    """Processes started through it are stopped when the `with` block ends, whatever happens inside."""

    def __init__(self, work: Path | None = None):
        super().__init__()
        self.work = work or Path(tempfile.mkdtemp(prefix="internvl-bench-"))
        self.logs = self.work / "logs"
        self.procs: dict[str, Proc] = {}

    def __enter__(self) -> Stack:
        # A SIGTERM (pkill, a job's time limit) ends the script as Ctrl-C does, through this block, so that its
        # processes stop with it: by default Python dies at once and leaves them running.
        self.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, _exit_on_sigterm))
        return super().__enter__()

    def _keep(self, name: str, proc: Proc) -> Proc:
        self.procs[name] = proc
        self.callback(proc.stop)
        return proc

    def controller(self, name: str = "controller", **options) -> Proc:
        options.setdefault("log_level", QUIET)
        options.setdefault("heartbeat_expiry_s", 30.0)
        return self._keep(name, start_controller(self.logs, **options))

    def workers(self, checkpoint: Path, controller: Proc | None, kinds: dict[str, dict[str, str]],
                each: int = 1, **options) -> list[Proc]:
        """Scripted workers, `each` per kind; a kind is a served model name with its SCRIPTED_* environment.
        All are spawned before any is waited for, so their imports overlap."""
        options.setdefault("log_level", QUIET)
        options.setdefault("heartbeat_interval_s", 2.0)
        options.setdefault("api_keys", [BENCH_KEY])  # the direct and lmdeploy-proxy paths call workers themselves
        url = controller.url if controller else None
        procs = []
        for kind, env in kinds.items():
            for i in range(each):
                proc = spawn_worker(self.logs, checkpoint, url, SCRIPTED, env=env, model_name=kind, **options)
                procs.append(self._keep(f"worker-{kind}" + (f"-{i + 1}" if each > 1 else ""), proc))
        return [wait_worker(p, url) for p in procs]

    def lmdeploy_proxy(self, workers: list[Proc]) -> Proc:
        proxy = self._keep("lmdeploy-proxy", start_lmdeploy_proxy(self.logs))
        for w in workers:
            add_proxy_node(proxy.url, w.url)
        return proxy

    def rust_router(self, kind: str, name: str, workers: list[Proc], flags: list[str] | None = None) -> Proc:
        """`kind`: "sglang-router" or "vllm-router" (tests/support/stack.py says with which flags)."""
        return self._keep(name, start_rust_router(kind, self.logs, [w.url for w in workers], flags=flags))


def chat_body(max_tokens: int, text: str = "Describe the weather in one sentence.", model: str = "scripted",
              history: list[dict] | None = None) -> dict:
    return {"model": model, "messages": [*(history or []), {"role": "user", "content": text}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0.0}


@dataclass
class StreamResult:
    ttft: float | None = None  # seconds from sending the request to the first token event
    total: float | None = None
    tokens: int = 0
    text: str = ""
    error: str | None = None
    status: int | None = None
    worker: str | None = None  # X-Worker-ID: the worker that answered (through the controller)
    retry_after: str | None = None


async def stream_chat(http: aiohttp.ClientSession, url: str, body: dict, keep_text: bool = False,
                      headers: dict[str, str] | None = None) -> StreamResult:
    """POST a streaming chat and read it to the end marker. Any HTTP error, error event or missing end is an error.
    The load generator is aiohttp (installed with lmdeploy): its C parser keeps the client's own cost per token low,
    so that the client is not what limits the figures."""
    out = StreamResult()
    start = time.perf_counter()
    try:
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
            out.status, out.worker = response.status, response.headers.get("x-worker-id")
            out.retry_after = response.headers.get("retry-after")
            if response.status != 200:
                out.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return out
            done = False
            async for raw in response.content:
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip().decode()
                if data == "[DONE]":
                    done = True
                    break
                if data.startswith('{"error"'):
                    out.error = data[:300]
                    continue
                if '"content"' not in data:  # the finish and usage chunks carry no token
                    continue
                if out.ttft is None:
                    out.ttft = time.perf_counter() - start
                out.tokens += 1
                if keep_text:
                    out.text += _delta_text(data)
            if not done and out.error is None:
                out.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.total = time.perf_counter() - start
    return out


def _delta_text(data: str) -> str:
    import json

    chunk = json.loads(data)
    return "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])


def summary(values_s: list[float]) -> dict[str, float]:
    """Percentiles in milliseconds."""
    if not values_s:
        return {"n": 0}
    a = np.asarray(values_s) * 1000.0
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def fmt_ms(s: dict[str, float]) -> str:
    if not s.get("n"):
        return "no samples"
    return f"p50 {s['p50']:7.2f} ms   p90 {s['p90']:7.2f} ms   p99 {s['p99']:7.2f} ms   max {s['max']:7.2f} ms"


@dataclass
class Usage:
    cpu_percent: float  # average over the window, 100 = one full core
    cpu_seconds: float
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_mb - self.rss_start_mb) / self.rss_start_mb if self.rss_start_mb else 0.0


class ProcSampler:
    """CPU time and RSS of some processes; a background thread tracks peak RSS between `snapshot()` and
    `usage_since(snapshot, wall_s)`."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2):
        self._ps = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._peak: dict[str, int] = {}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._read()

    def _read(self) -> dict[str, tuple[float, int]]:
        """name -> (cpu seconds so far, rss bytes now); also raises the peaks."""
        out = {}
        for name, p in self._ps.items():
            with contextlib.suppress(psutil.Error):
                t, rss = p.cpu_times(), p.memory_info().rss
                out[name] = (_on_cpu_s(p.pid) or t.user + t.system, rss)
                self._peak[name] = max(self._peak.get(name, 0), rss)
        return out

    def snapshot(self) -> dict[str, tuple[float, int]]:
        self._peak.clear()
        return self._read()

    def usage_since(self, before: dict[str, tuple[float, int]], wall_s: float) -> dict[str, Usage]:
        after = self._read()
        return {name: Usage(cpu_percent=100.0 * (after[name][0] - cpu0) / wall_s, cpu_seconds=after[name][0] - cpu0,
                            rss_start_mb=rss0 / 2**20, rss_end_mb=after[name][1] / 2**20,
                            rss_peak_mb=self._peak[name] / 2**20)
                for name, (cpu0, rss0) in before.items() if name in after}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _on_cpu_s(pid: int) -> float | None:
    """CPU time of a process's live threads in ns resolution (the scheduler's own count, /proc/PID/task/*/schedstat).
    The usual CPU times are counted in 10 ms ticks: a Rust router relays 20,000 tokens within one tick, so its figure
    per token was 0 or 10 ms by chance. Threads that ended are not counted: every process measured here keeps its
    threads for its life. None where schedstat is missing (psutil's ticks then)."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"{task.path}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        return None
    return total / 1e9 if total else None


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, Python {sys.version.split()[0]}, "
            f"{os.uname().sysname} {os.uname().release}")


def client(max_connections: int | None = None, timeout: float = 120.0) -> aiohttp.ClientSession:
    # Idle connections are let go after 4 s: sooner than uvicorn's servers drop theirs (keep-alive 5 s), so no request
    # goes out on a connection its server is closing (aiohttp keeps them 15 s: the relay phase, whose paths take
    # turns for longer than 5 s, once met a reset on the direct path that way).
    connector = aiohttp.TCPConnector(limit=max_connections or 0, force_close=False, keepalive_timeout=4.0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout, connect=30.0),
                                 headers={"Authorization": f"Bearer {BENCH_KEY}"})  # the controller has no keys


__all__ = ["Stack", "ProcSampler", "StreamResult", "Usage", "build_checkpoint", "chat_body", "client", "fmt_ms",
           "free_port", "machine", "scripted_env", "stream_chat", "summary"]
