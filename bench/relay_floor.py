"""How much of the controller's CPU per request is its own work, and how much the Python relay under it costs at
the least: the controller, a minimal relay on the same stack (bench/minimal_relay.py: uvicorn with the controller's
protocol, aiohttp, no routing or checks) and vLLM's Rust router, in front of the same scripted worker, sequential
4-token streams, interleaved in rounds so drift in machine load hits all three alike (issue 26).

    .venv/bin/python bench/relay_floor.py                 # ~1 minute
    .venv/bin/python bench/relay_floor.py --requests 3000 --rounds 5

CPU time is the scheduler's own count (bench/harness.py ProcSampler: ns, not 10 ms ticks), user and system.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (BENCH_KEY, ProcSampler, Stack, build_checkpoint, chat_body, client,  # noqa: E402
                           free_port, machine, scripted_env, stream_chat)
from bench.overhead_bench import BIG_CONTEXT, TTFT_TOKENS  # noqa: E402
from bench.versus_routers import versions  # noqa: E402
from tests.support.stack import Proc  # noqa: E402


def wait_listening(port: int, popen: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the minimal relay did not start") from None
            time.sleep(0.05)


async def requests(url: str, n: int) -> None:
    async with client(max_connections=4) as http:
        for _ in range(n):
            r = await stream_chat(http, url, chat_body(TTFT_TOKENS, model="fast"))
            if r.error:
                raise SystemExit(f"{url}: {r.error}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1500, help="requests per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        ctl = stack.controller()
        (fast,) = stack.workers(checkpoint, ctl, {"fast": scripted_env(BIG_CONTEXT, 0, context_length=BIG_CONTEXT)},
                                max_concurrency=64)
        port = free_port()
        minimal = subprocess.Popen([sys.executable, str(Path(__file__).with_name("minimal_relay.py")), str(port),
                                    fast.url], env={**os.environ, "MINIMAL_RELAY_WORKER_KEY": BENCH_KEY})
        relay = stack._keep("minimal-relay", Proc("minimal-relay", minimal, f"http://127.0.0.1:{port}",
                                                    stack.logs / "minimal-relay.log"))
        wait_listening(port, minimal)
        paths = {"controller": ctl, "minimal relay": relay}
        if shutil.which("vllm-router", path=str(Path(sys.executable).parent)):
            paths["vllm-router"] = stack.rust_router("vllm-router", "vllm-router", [fast])
        else:
            print("  vllm-router is not installed: pip install -r requirements-test.txt", file=sys.stderr)
        sampler = ProcSampler({name: p.popen.pid for name, p in paths.items()})
        for p in paths.values():
            asyncio.run(requests(p.url, 200))  # warm: connections, imports, caches
        per_request: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, p in paths.items():
                before = sampler.snapshot()
                asyncio.run(requests(p.url, args.requests))
                used = sampler.usage_since(before, 1.0)[name].cpu_seconds
                per_request[name].append(used / args.requests * 1e6)
        sampler.close()
    print(f"\nCPU per request, {args.requests} sequential 4-token streams per path per round, median of {args.rounds}:")
    base = statistics.median(per_request.get("vllm-router") or per_request["minimal relay"])
    for name, values in per_request.items():
        m = statistics.median(values)
        print(f"  {name:14s} {m:6.0f} us   ({m / base:.2f}x)   rounds: {', '.join(f'{v:.0f}' for v in values)}")
    own = statistics.median(per_request["controller"]) - statistics.median(per_request["minimal relay"])
    print(f"  the controller's own work (controller - minimal relay): {own:.0f} us per request")


if __name__ == "__main__":
    main()
