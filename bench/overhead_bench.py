"""What the controller costs: CPU while idle, added time to first token, relay throughput, and behaviour under 500
and 2,000 concurrent streams, each side by side with calling the worker directly, with lmdeploy's own `lmdeploy serve
proxy` and with the field's Rust routers (SGLang's `sglang-router`, vLLM's `vllm-router`), in one run.

    .venv/bin/pip install -r bench/requirements-routers.txt   # the routers, py-spy and uvloop (pinned)
    .venv/bin/python bench/overhead_bench.py            # all phases, ~5 minutes on 2 cores
    .venv/bin/python bench/overhead_bench.py --requests 100 --streams 200 --big-streams 500 --json out.json

Everything runs on loopback with real processes: one controller, scripted workers (tests/support/scripted_engine.py,
tokens at a set rate, no model), lmdeploy's proxy pointed at the same workers through its /nodes/add API (it reads
the worker's /v1/models and, every 90 s, its /health; our workers answer both), and each Rust router started in
front of the same workers (one router process per served model: they keep one pool of workers, not one per model;
flags in tests/support/stack.py ROUTER_FLAGS, printed at the start). Requests are interleaved across the paths so
drift in machine load hits all of them alike. Added TTFT = percentile of a path minus the same percentile of the
direct path. At the end, the controller against the best Rust router of the same run, row by row, with the targets
of issue 26 (bench/versus_routers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (ProcSampler, Stack, Usage, build_checkpoint, chat_body, client, fmt_ms,  # noqa: E402
                           machine, measure, scripted_env, stream_chat, summary)
from bench import pyspy  # noqa: E402
from bench.versus_routers import print_versus, versions  # noqa: E402
from tests.support.stack import ROUTER_FLAGS  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

TTFT_TOKENS = 4
BIG_CONTEXT = 1_000_000  # lets one scripted stream be as long as the relay phase asks
RUST_ROUTERS = ("sglang-router", "vllm-router")
NO_UVLOOP = Path(__file__).resolve().parent / "no_uvloop"  # on a process's path: `import uvloop` fails there


@dataclass
class Hop:
    """One way to reach the workers: its URLs for the fast and the paced model, and the processes whose CPU and
    memory are the hop's in the phases that use each (stack.procs names)."""

    name: str
    fast_url: str
    paced_url: str
    fast_procs: tuple[str, ...] = ()
    paced_procs: tuple[str, ...] = ()


def idle_phase(hops: list[Hop], seconds: float, sampler: ProcSampler) -> dict[str, float]:
    """Each hop's CPU, in ms per second and process, while no request comes (its workers registered and beating, or
    health-checked): what a server costs just by running (timers, housekeeping). Each Rust router runs as two
    processes here (one per model), so its figure is per process."""
    before = sampler.snapshot()
    t0 = time.perf_counter()
    time.sleep(seconds)  # the measuring window: nothing is asked of anyone
    usage = sampler.usage_since(before, time.perf_counter() - t0)
    out = {}
    for hop in hops:
        procs = sorted(set(hop.fast_procs + hop.paced_procs))
        if procs:
            out[hop.name] = sum(10 * usage[p].cpu_percent for p in procs) / len(procs)  # % of a core -> ms/s
    print(f"\nIdle for {seconds:g} s, CPU per process: " + ", ".join(f"{k} {v:.2f} ms/s" for k, v in out.items()))
    return out


async def ttft_phase(paths: dict[str, str], n: int, warmup: int) -> dict[str, list[float]]:
    """Sequential requests, round-robin over the paths in a shuffled order per round."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    rng = random.Random(0)
    errors = 0
    async with client(max_connections=4) as http:
        for i in range(warmup + n):
            order = list(paths.items())
            rng.shuffle(order)
            for name, url in order:
                r = await stream_chat(http, url, chat_body(TTFT_TOKENS, model="fast"))
                if r.error or r.ttft is None:
                    errors += 1
                    print(f"  error on {name}: {r.error}", file=sys.stderr)
                elif i >= warmup:
                    samples[name].append(r.ttft)
    if errors:
        print(f"  {errors} errors in the TTFT phase", file=sys.stderr)
    return samples


async def relay_phase(hops: list[Hop], tokens: int, repeats: int, sampler: ProcSampler) -> dict[str, dict]:
    """One stream at a time, the paths taking turns (drift in this machine's speed hits all alike); tokens/s counted
    from the first to the last token event."""
    rates: dict[str, list[float]] = {hop.name: [] for hop in hops}
    cpu: dict[str, float] = {hop.name: 0.0 for hop in hops}
    relayed: dict[str, int] = {hop.name: 0 for hop in hops}
    async with client(max_connections=2) as http:
        for _ in range(repeats):
            for hop in hops:
                before = sampler.snapshot()
                t0 = time.perf_counter()
                r = await stream_chat(http, hop.fast_url, chat_body(tokens, model="fast"))
                usage = sampler.usage_since(before, time.perf_counter() - t0)
                if r.error or r.tokens < tokens:
                    print(f"  relay {hop.name}: {r.error or f'only {r.tokens} tokens'}", file=sys.stderr)
                    continue
                rates[hop.name].append(r.tokens / (r.total - r.ttft))
                cpu[hop.name] += sum(usage[p].cpu_seconds for p in hop.fast_procs)
                relayed[hop.name] += r.tokens
    # All repeats' CPU over all their tokens: the kernel counts CPU time in 10 ms ticks, and a Rust router relays
    # 20,000 tokens in less than one.
    return {hop.name: {"tokens_per_s": statistics.median(rates[hop.name]) if rates[hop.name] else 0.0,
                       "hop_cpu_us_per_token": cpu[hop.name] / relayed[hop.name] * 1e6
                       if hop.fast_procs and relayed[hop.name] else None} for hop in hops}


async def load_phase(url: str, streams: int, ramp_s: float, tokens: int) -> dict:
    """`streams` streams opened over `ramp_s` seconds and held open together; TTFT of each, errors, peak concurrency."""
    open_now, peak = 0, 0

    async def one(i: int):
        nonlocal open_now, peak
        await asyncio.sleep(ramp_s * i / streams)
        open_now += 1
        peak = max(peak, open_now)
        try:
            return await stream_chat(http, url, chat_body(tokens, text=f"load stream {i}", model="paced"))
        finally:
            open_now -= 1

    async with client(max_connections=None, timeout=300) as http:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    short = sum(1 for r in results if not r.error and r.tokens != tokens)
    return {"ttft": [r.ttft for r in results if r.ttft is not None], "errors": len(errors) + short,
            "error_samples": errors[:3], "peak_open": peak, "wall_s": wall}


def merge_rounds(rounds: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One path's load rounds as one: TTFTs pooled, errors added, CPU averaged, RSS from the first round's start to the
    last round's end."""
    results = [r for r, _ in rounds]
    res = {"ttft": [t for r in results for t in r["ttft"]], "errors": sum(r["errors"] for r in results),
           "error_samples": [e for r in results for e in r["error_samples"]][:3],
           "peak_open": max(r["peak_open"] for r in results), "wall_s": sum(r["wall_s"] for r in results),
           "round_p99_ms": [summary(r["ttft"]).get("p99") for r in results]}
    usage = {}
    for proc in rounds[0][1]:
        each = [u[proc] for _, u in rounds if proc in u]
        usage[proc] = Usage(cpu_percent=statistics.mean(u.cpu_percent for u in each),
                            cpu_seconds=sum(u.cpu_seconds for u in each), rss_start_mb=each[0].rss_start_mb,
                            rss_end_mb=each[-1].rss_end_mb, rss_peak_mb=max(u.rss_peak_mb for u in each))
    return res, usage


def report_ttft(samples: dict[str, list[float]]) -> dict:
    stats = {name: summary(v) for name, v in samples.items()}
    print(f"\nTime to first token, {len(samples['direct'])} sequential requests per path "
          f"({TTFT_TOKENS}-token answers, interleaved):")
    for name, s in stats.items():
        print(f"  {name:16s} {fmt_ms(s)}")
    added = {}
    for name in stats:
        if name == "direct":
            continue
        added[name] = {p: stats[name][p] - stats["direct"][p] for p in ("p50", "p90", "p99")}
        a = added[name]
        print(f"  added by {name:16s} p50 {a['p50']:+6.2f} ms   p90 {a['p90']:+6.2f} ms   p99 {a['p99']:+6.2f} ms")
    if "lmdeploy proxy" in added:
        ours, theirs = added["controller"], added["lmdeploy proxy"]
        for p in ("p50", "p99"):
            ratio = ours[p] / theirs[p] if theirs[p] > 0 else float("nan")
            print(f"  controller / lmdeploy proxy added {p}: {ratio:.2f}  (target <= 0.5)")
    print("  targets: controller adds <= 3 ms p50 and <= 10 ms p99")
    return {"paths": stats, "added": added}


def report_load(name: str, res: dict, usage: dict, hop_procs: tuple[str, ...]) -> dict:
    s = summary(res["ttft"])
    print(f"  {name:16s} errors {res['errors']:3d}   peak open {res['peak_open']:4d}   TTFT {fmt_ms(s)}")
    if len(res.get("round_p99_ms", ())) > 1:  # the spread behind a pooled p99: one stall sets a round's
        print(f"  {'':16s} p99 of each round: {', '.join(f'{p:.0f}' for p in res['round_p99_ms'] if p)} ms")
    for proc, u in usage.items():
        print(f"  {'':16s} {proc:20s} CPU {u.cpu_percent:5.0f}% of a core   RSS {u.rss_start_mb:6.1f} -> "
              f"{u.rss_end_mb:6.1f} MB (peak {u.rss_peak_mb:6.1f})")
    if res["error_samples"]:
        print(f"  {'':16s} first errors: {res['error_samples']}")
    hop = [usage[p] for p in hop_procs if p in usage]
    return {"ttft_ms": s, "errors": res["errors"], "peak_open": res["peak_open"], "wall_s": res["wall_s"],
            "round_p99_ms": res.get("round_p99_ms"),
            "usage": {k: vars(v) for k, v in usage.items()},
            "hop_cpu_percent": sum(u.cpu_percent for u in hop) if hop else None,
            "hop_rss_end_mb": sum(u.rss_end_mb for u in hop) if hop else None}


def shown_usage(usage: dict[str, Usage], hop: Hop) -> dict[str, Usage]:
    return {k: usage[k] for k in [*hop.paced_procs, "worker-paced", "client (this script)"] if k in usage}


def load_rounds(hops: list[Hop], streams: int, rounds: int, ramp_s: float, tokens: int,
                sampler: ProcSampler, seed: int) -> dict[str, dict]:
    """`rounds` rounds, each running every path once in a shuffled order; a path's rounds pooled. The order is drawn
    anew each run (`seed`, printed): with one fixed order, a stall of the shared worker's (its collector, a timer)
    kept landing in the same paths' rounds run after run."""
    runs: dict[str, list[tuple[dict, dict]]] = {h.name: [] for h in hops}
    rng = random.Random(seed)
    orders = [rng.sample(hops, len(hops)) for _ in range(rounds)]
    print(f"  round order (--load-seed {seed}): " + "; ".join(", ".join(h.name for h in o) for o in orders))
    for order in orders:
        for hop in order:
            before = sampler.snapshot()
            t0 = time.perf_counter()
            res = measure(load_phase(hop.paced_url, streams, ramp_s, tokens))
            runs[hop.name].append((res, sampler.usage_since(before, time.perf_counter() - t0)))
    out = {}
    for hop in hops:
        res, usage = merge_rounds(runs[hop.name])
        out[hop.name] = report_load(hop.name, res, shown_usage(usage, hop), hop.paced_procs)
    base = out["direct"]["ttft_ms"]
    for hop in hops[1:]:
        s = out[hop.name]["ttft_ms"]
        if s.get("n"):
            print(f"  added by {hop.name:16s} p50 {s['p50'] - base['p50']:+7.2f} ms   "
                  f"p99 {s['p99'] - base['p99']:+7.2f} ms")
    return out


def raise_fd_limit(streams: int) -> None:
    """Each stream holds up to three sockets in one process (client, controller in and out): the servers started
    from here inherit the raised limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start_hops(stack: Stack, args: argparse.Namespace) -> list[Hop]:
    checkpoint = build_checkpoint(stack.work)
    env = None
    if args.controller_loop == "asyncio":  # uvicorn's "auto" loop then falls back to asyncio's own
        env = {"PYTHONPATH": os.pathsep.join([str(NO_UVLOOP), str(Path(__file__).resolve().parents[1]),
                                              os.environ.get("PYTHONPATH", "")])}
    ctl = stack.controller(env=env)
    # Two worker kinds, started together: "fast" answers at once (TTFT, relay), "paced" streams at a set rate.
    fast_env = scripted_env(BIG_CONTEXT, 0, context_length=BIG_CONTEXT)
    paced_env = scripted_env(args.stream_tokens, args.stream_rate)
    # Heartbeats at the workers' default interval, as the routers run with their own defaults for health checks:
    # the controller's CPU in every phase includes the heartbeats it answers (the harness's 2 s doubled them).
    fast, paced = stack.workers(checkpoint, ctl, {"fast": fast_env, "paced": paced_env},
                                max_concurrency=max(1024, args.streams * 2, args.big_streams * 2),
                                heartbeat_interval_s=WorkerSettings.model_fields["heartbeat_interval_s"].default)
    hops = [Hop("direct", fast.url, paced.url),
            Hop("controller", ctl.url, ctl.url, ("controller",), ("controller",))]
    if not args.no_proxy:
        proxy = stack.lmdeploy_proxy([fast, paced])
        hops.append(Hop("lmdeploy proxy", proxy.url, proxy.url, ("lmdeploy-proxy",), ("lmdeploy-proxy",)))
    flags = args.router_flags.split() if args.router_flags is not None else ROUTER_FLAGS
    for kind in filter(None, args.routers.split(",")):
        if not shutil.which(kind, path=str(Path(sys.executable).parent)):
            print(f"  {kind} is not installed: pip install -r bench/requirements-routers.txt", file=sys.stderr)
            continue
        # One router per served model: a router keeps one pool, and would send "fast" requests to the paced worker.
        rf = stack.rust_router(kind, f"{kind}-fast", [fast], flags)
        rp = stack.rust_router(kind, f"{kind}-paced", [paced], flags)
        print(f"{kind} {versions().get(kind, '?')}: {' '.join(rf.extra['cmd'][1:])}")
        hops.append(Hop(kind, rf.url, rp.url, (f"{kind}-fast",), (f"{kind}-paced",)))
    return hops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="measured TTFT requests per path (at 300, the "
                    "added p50 of one path moved by ~10%% between runs of the same code)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--relay-tokens", type=int, default=60000, help="tokens in each relay-throughput stream")
    ap.add_argument("--relay-repeats", type=int, default=5)
    ap.add_argument("--streams", type=int, default=500, help="concurrent streams in the load phase")
    ap.add_argument("--load-rounds", type=int, default=3, help="load-phase rounds (each runs every path once)")
    ap.add_argument("--load-seed", type=int, default=None, help="the load rounds' path order (default: drawn "
                    "anew, and printed)")
    ap.add_argument("--ramp-s", type=float, default=2.0, help="the load phase opens its streams over this time")
    ap.add_argument("--stream-tokens", type=int, default=40, help="tokens per load stream (at --stream-rate)")
    ap.add_argument("--stream-rate", type=float, default=10.0, help="tokens/s of each load stream")
    ap.add_argument("--big-streams", type=int, default=2000, help="concurrent streams in the last phase (one round)")
    ap.add_argument("--big-ramp-s", type=float, default=8.0, help="the last phase opens its streams over this time")
    ap.add_argument("--no-proxy", action="store_true", help="skip lmdeploy's proxy")
    ap.add_argument("--routers", default=",".join(RUST_ROUTERS), help="Rust routers to measure ('' for none)")
    ap.add_argument("--router-flags", help=f"the routers' routing flags instead of {' '.join(ROUTER_FLAGS)!r} "
                    "(e.g. '--policy cache_aware')")
    ap.add_argument("--controller-loop", choices=["auto", "asyncio"], default="auto",
                    help="asyncio: the controller runs without uvloop even when it is installed")
    ap.add_argument("--profile", type=Path, help="py-spy the controller in each phase; raw stacks into this folder")
    ap.add_argument("--profile-native", action="store_true", help="--profile with C frames (uvloop, aiohttp's "
                    "parser, the kernel calls); pauses the controller at each sample, so its figures suffer")
    ap.add_argument("--idle-s", type=float, default=10.0, help="the idle phase's length (before the others)")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: idle,ttft,relay,load,big")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    raise_fd_limit(max(args.streams, args.big_streams))
    print(f"machine: {machine()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + f"; controller loop: "
          f"{args.controller_loop}")
    figures: dict = {"machine": machine(), "loadavg_start": os.getloadavg(), "versions": versions(),
                     "args": {k: str(v) for k, v in vars(args).items()}}
    with Stack() as stack:
        hops = start_hops(stack, args)
        by_name = {h.name: h for h in hops}
        pids = {name: p.popen.pid for name, p in stack.procs.items()} | {"client (this script)": os.getpid()}
        sampler = ProcSampler(pids)

        def profile(phase: str):
            if not args.profile:
                return contextlib.nullcontext()
            args.profile.mkdir(parents=True, exist_ok=True)
            return pyspy.profiled(stack.procs["controller"].popen.pid, args.profile / f"controller-{phase}.txt",
                                   native=args.profile_native)

        if "idle" not in skip:
            figures["idle_cpu_ms_per_s"] = idle_phase(hops, args.idle_s, sampler)

        if "ttft" not in skip:
            before = sampler.snapshot()
            t0 = time.perf_counter()
            with profile("ttft"):
                samples = measure(ttft_phase({h.name: h.fast_url for h in hops}, args.requests, args.warmup))
            figures["ttft"] = report_ttft(samples)
            usage = sampler.usage_since(before, time.perf_counter() - t0)
            per_request = {h.name: 1000 * sum(usage[p].cpu_seconds for p in h.fast_procs)
                           / (args.requests + args.warmup) for h in hops if h.fast_procs}
            print("  CPU per request in the hop: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per_request.items()))
            figures["ttft"]["hop_cpu_ms_per_request"] = per_request

        if "relay" not in skip:
            print(f"\nRelay throughput, one stream of {args.relay_tokens} tokens (median of {args.relay_repeats}):")
            with profile("relay"):
                relay = measure(relay_phase(hops, args.relay_tokens, args.relay_repeats, sampler))
            for name, r in relay.items():
                cost = r["hop_cpu_us_per_token"]
                extra = "" if cost is None else f"   hop CPU {cost:.2f} us/token ({cost:.2f} ms per 1,000 tokens)"
                print(f"  {name:16s} {r['tokens_per_s']:10,.0f} tokens/s{extra}")
            print("  target: >= 20,000 tokens/s through the controller")
            figures["relay"] = relay

        if "load" not in skip:
            print(f"\n{args.streams} concurrent streams (opened over {args.ramp_s:g} s, {args.stream_tokens} tokens "
                  f"at {args.stream_rate:g} tokens/s each), {args.load_rounds} rounds, paths in a shuffled order "
                  "each round:")
            with profile("load"):
                seed = args.load_seed if args.load_seed is not None else random.SystemRandom().randrange(10**6)
                figures["load"] = load_rounds(hops, args.streams, args.load_rounds, args.ramp_s, args.stream_tokens,
                                              sampler, seed)
                figures["load_seed"] = seed
            print("  target: 0 errors, controller adds <= 100 ms p99")

        if "big" not in skip and args.big_streams:
            print(f"\n{args.big_streams} concurrent streams (opened over {args.big_ramp_s:g} s, {args.stream_tokens} "
                  f"tokens at {args.stream_rate:g} tokens/s each), one round per path:")
            figures["big"] = {}
            for hop in hops:
                before = sampler.snapshot()
                t0 = time.perf_counter()
                with profile("big") if hop.name == "controller" else contextlib.nullcontext():
                    res = measure(load_phase(hop.paced_url, args.big_streams, args.big_ramp_s,
                                                 args.stream_tokens))
                usage = sampler.usage_since(before, time.perf_counter() - t0)
                figures["big"][hop.name] = report_load(hop.name, res, shown_usage(usage, hop), hop.paced_procs)
            print(f"  target: 0 errors through the controller ({figures['big']['controller']['errors']})")
        sampler.close()
    figures["loadavg_end"] = os.getloadavg()
    figures["versus"] = print_versus(figures, [n for n in RUST_ROUTERS if n in by_name])
    if args.profile:
        print(f"\nController profiles (py-spy, busy samples; every path's share of the phase is in them, the "
              f"controller only works in its own):")
        for raw in sorted(args.profile.glob("controller-*.txt")):
            pyspy.print_top(raw, 15)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
