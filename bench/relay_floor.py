"""How much of the controller's CPU per request is its own work, and how much the Python relay under it costs at
the least: the controller, a minimal relay on the same stack (bench/minimal_relay.py: uvicorn with the controller's
protocol and its client to the workers, no routing or checks), a relay on raw protocols (bench/protocol_relay.py: no
ASGI, no task per request) and vLLM's Rust router, each in front of a scripted worker of its own, sequential 4-token
streams (issue 26); their CPU per request and their time to first token. With --compare-root, also the controller of
another checkout (before/after a change).

The paths take turns request by request (one request to each, in an order drawn anew each turn, then again), so
every process is measured over the same seconds and drift in this machine's speed hits all alike: per round, the
ratios of two paths vary by ~3%, where paths measured one after the other varied by 10-30% (2 shared cores).

    .venv/bin/python bench/relay_floor.py                 # ~2 minutes
    .venv/bin/python bench/relay_floor.py --requests 1000 --rounds 8 --compare-root WORKTREE   # e.g. a worktree of main

CPU time is the scheduler's own count (bench/harness.py ProcSampler: ns, not 10 ms ticks), user and system.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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
                raise SystemExit(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def start_relay(stack: Stack, script: str, worker_url: str) -> Proc:
    """One of the bench-only relays (bench/minimal_relay.py, bench/protocol_relay.py) in front of `worker_url`."""
    port, name = free_port(), script.removesuffix(".py").replace("_", "-")
    popen = subprocess.Popen([sys.executable, str(Path(__file__).with_name(script)), str(port), worker_url],
                             env={**os.environ, "MINIMAL_RELAY_WORKER_KEY": BENCH_KEY})
    proc = stack._keep(name, Proc(name, popen, f"http://127.0.0.1:{port}", stack.logs / f"{name}.log"))
    wait_listening(port, popen)
    return proc


async def requests(urls: list[str], n: int, tokens: int = TTFT_TOKENS) -> dict[str, list[float]]:
    """`n` sequential requests to each of `urls`, taking turns in an order drawn anew for each turn (what ran just
    before a path changes its time: in a fixed order, a controller right after the other read its first token ~2.5%
    sooner); the time to first token of each, by URL."""
    ttft: dict[str, list[float]] = {url: [] for url in urls}
    order, rng = list(urls), random.Random(26)
    async with client(max_connections=4) as http:
        for _ in range(n):
            rng.shuffle(order)
            for url in order:
                r = await stream_chat(http, url, chat_body(tokens, model="fast"))
                if r.error:
                    raise SystemExit(f"{url}: {r.error!r} after {r.tokens} tokens")
                ttft[url].append(r.ttft)
    return ttft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests per path per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=TTFT_TOKENS, help="tokens per stream (e.g. 60000: the cost of "
                    "relaying tokens rather than of a request)")
    ap.add_argument("--compare-root", type=Path, help="another checkout: its controller is measured too")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        fast = scripted_env(BIG_CONTEXT, 0, context_length=BIG_CONTEXT)
        paths = {"controller": stack.controller()}
        if args.compare_root:
            paths[f"controller at {args.compare_root}"] = stack.controller("compare", root=args.compare_root.resolve())
        # A worker of its own for each path (a worker registers with one controller), so each sees the same traffic:
        # one request in every round of turns. A worker serving several paths is busy more often, and a process's
        # first steps after an idle while are slower here: a controller with the only worker of its own measured
        # ~400 us more time to first token than one whose worker also served the other paths.
        router = shutil.which("vllm-router", path=str(Path(sys.executable).parent)) is not None
        if not router:
            print("  vllm-router is not installed: pip install -r requirements-test.txt", file=sys.stderr)
        for ctl in paths.values():
            stack.workers(checkpoint, ctl, {"fast": fast}, max_concurrency=64)
        others = iter(stack.workers(checkpoint, None, {"fast": fast}, each=2 + router, max_concurrency=64))
        paths["minimal relay"] = start_relay(stack, "minimal_relay.py", next(others).url)
        paths["protocol relay"] = start_relay(stack, "protocol_relay.py", next(others).url)
        if router:
            paths["vllm-router"] = stack.rust_router("vllm-router", "vllm-router", [next(others)])
        sampler = ProcSampler({name: p.popen.pid for name, p in paths.items()})
        urls = [p.url for p in paths.values()]
        print("  paths: " + ", ".join(f"{name} {p.url}" for name, p in paths.items()))
        asyncio.run(requests(urls, 200))  # warm: connections, imports, caches
        per_request: dict[str, list[float]] = {name: [] for name in paths}
        ttft: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            before = sampler.snapshot()
            times = asyncio.run(requests(urls, args.requests, args.tokens))
            used = sampler.usage_since(before, 1.0)
            for name, proc in paths.items():
                per_request[name].append(used[name].cpu_seconds / args.requests * 1e6)
                ttft[name] += times[proc.url]
        sampler.close()
    print(f"\nCPU per request, {args.requests} sequential {args.tokens}-token streams per path per round, paths taking "
          f"turns, median of {args.rounds}:")
    base_name = "vllm-router" if "vllm-router" in per_request else "minimal relay"
    base = statistics.median(per_request[base_name])
    for name, values in per_request.items():
        m = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:14s} {m:6.0f} us   ({m / base:.2f}x {base_name})   rounds: {rounds}")
    own = statistics.median(per_request["controller"]) - statistics.median(per_request["minimal relay"])
    print(f"  the controller's own work (controller - minimal relay): {own:.0f} us per request")
    print(f"Time to first token, p50 of all {args.rounds * args.requests} requests per path (the client's whole "
          "wait, two loopback hops and the worker included):")
    base_ttft = statistics.median(ttft[base_name])
    for name, values in ttft.items():
        m = statistics.median(values)
        print(f"  {name:14s} {m * 1e6:6.0f} us   ({m / base_ttft:.2f}x {base_name})")
    if args.compare_root:
        other = f"controller at {args.compare_root}"
        ratios = [a / b for a, b in zip(per_request["controller"], per_request[other])]
        print(f"  controller / controller at {args.compare_root}, CPU per round: "
              f"{', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}; TTFT p50 "
              f"{statistics.median(ttft['controller']) / statistics.median(ttft[other]):.3f}")


if __name__ == "__main__":
    main()
