"""What the controller costs: added time to first token, relay throughput, and behaviour under 500 concurrent streams,
each side by side with calling the worker directly and with lmdeploy's own `lmdeploy serve proxy`, in one run.

    .venv/bin/python bench/overhead_bench.py            # all phases, ~2-3 minutes on 2 cores
    .venv/bin/python bench/overhead_bench.py --requests 200 --streams 200 --json out.json

Everything runs on loopback with real processes: one controller, scripted workers (tests/support/scripted_engine.py,
tokens at a set rate, no model), and lmdeploy's proxy pointed at the same workers through its /nodes/add API (it
reads the worker's /v1/models and, every 90 s, its /health; our workers answer both). Requests are interleaved
across the paths so drift in machine load hits all of them alike. Added TTFT = percentile of a path minus the same
percentile of the direct path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (ProcSampler, Stack, Usage, build_checkpoint, chat_body, client, fmt_ms,  # noqa: E402
                           machine, scripted_env, stream_chat, summary)

TTFT_TOKENS = 4
BIG_CONTEXT = 1_000_000  # lets one scripted stream be as long as the relay phase asks


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


async def relay_phase(paths: dict[str, str], tokens: int, repeats: int, sampler: ProcSampler) -> dict[str, dict]:
    """One stream at a time; tokens/s counted from the first to the last token event."""
    out = {}
    async with client(max_connections=2) as http:
        for name, url in paths.items():
            rates, cpu = [], []
            for _ in range(repeats):
                before = sampler.snapshot()
                t0 = time.perf_counter()
                r = await stream_chat(http, url, chat_body(tokens, model="fast"))
                usage = sampler.usage_since(before, time.perf_counter() - t0)
                if r.error or r.tokens < tokens:
                    print(f"  relay {name}: {r.error or f'only {r.tokens} tokens'}", file=sys.stderr)
                    continue
                rates.append(r.tokens / (r.total - r.ttft))
                hop = {"controller": "controller", "lmdeploy proxy": "lmdeploy-proxy"}.get(name)
                if hop:
                    cpu.append(usage[hop].cpu_seconds / r.tokens)
            out[name] = {"tokens_per_s": statistics.median(rates) if rates else 0.0,
                         "hop_cpu_us_per_token": statistics.median(cpu) * 1e6 if cpu else None}
    return out


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
           "peak_open": max(r["peak_open"] for r in results), "wall_s": sum(r["wall_s"] for r in results)}
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


def report_load(name: str, res: dict, usage: dict) -> dict:
    s = summary(res["ttft"])
    print(f"  {name:16s} errors {res['errors']:3d}   peak open {res['peak_open']:4d}   TTFT {fmt_ms(s)}")
    for proc, u in usage.items():
        print(f"  {'':16s} {proc:20s} CPU {u.cpu_percent:5.0f}% of a core   RSS {u.rss_start_mb:6.1f} -> "
              f"{u.rss_end_mb:6.1f} MB (peak {u.rss_peak_mb:6.1f})")
    if res["error_samples"]:
        print(f"  {'':16s} first errors: {res['error_samples']}")
    return {"ttft_ms": s, "errors": res["errors"], "peak_open": res["peak_open"], "wall_s": res["wall_s"],
            "usage": {k: vars(v) for k, v in usage.items()}}


def raise_fd_limit(streams: int) -> None:
    """Each stream holds up to three sockets in one process (client, controller in and out): the servers started
    from here inherit the raised limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="measured TTFT requests per path")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--relay-tokens", type=int, default=20000, help="tokens in each relay-throughput stream")
    ap.add_argument("--relay-repeats", type=int, default=3)
    ap.add_argument("--streams", type=int, default=500, help="concurrent streams in the load phase")
    ap.add_argument("--load-rounds", type=int, default=3, help="load-phase rounds (each runs every path once)")
    ap.add_argument("--ramp-s", type=float, default=2.0, help="the load phase opens its streams over this time")
    ap.add_argument("--stream-tokens", type=int, default=40, help="tokens per load stream (at --stream-rate)")
    ap.add_argument("--stream-rate", type=float, default=10.0, help="tokens/s of each load stream")
    ap.add_argument("--big-streams", type=int, default=2000, help="concurrent streams in the last phase (one round)")
    ap.add_argument("--big-ramp-s", type=float, default=8.0, help="the last phase opens its streams over this time")
    ap.add_argument("--no-proxy", action="store_true", help="skip lmdeploy's proxy")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: ttft,relay,load,big")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    raise_fd_limit(max(args.streams, args.big_streams))
    print(f"machine: {machine()}")
    figures: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        ctl = stack.controller()
        # Two worker kinds, started together: "fast" answers at once (TTFT, relay), "paced" streams at a set rate.
        fast_env = scripted_env(BIG_CONTEXT, 0, context_length=BIG_CONTEXT)
        paced_env = scripted_env(args.stream_tokens, args.stream_rate)
        fast, paced = stack.workers(checkpoint, ctl, {"fast": fast_env, "paced": paced_env},
                                    max_concurrency=max(1024, args.streams * 2, args.big_streams * 2))
        proxy = None if args.no_proxy else stack.lmdeploy_proxy([fast, paced])
        paths = {"direct": fast.url, "controller": ctl.url}
        if proxy:
            paths["lmdeploy proxy"] = proxy.url
        pids = {name: p.popen.pid for name, p in stack.procs.items()} | {"client (this script)": os.getpid()}
        sampler = ProcSampler(pids)

        if "ttft" not in skip:
            before = sampler.snapshot()
            t0 = time.perf_counter()
            figures["ttft"] = report_ttft(asyncio.run(ttft_phase(paths, args.requests, args.warmup)))
            usage = sampler.usage_since(before, time.perf_counter() - t0)
            per_request = {name: 1000 * u.cpu_seconds / (args.requests + args.warmup) for name, u in usage.items()
                           if name in ("controller", "lmdeploy-proxy")}
            print("  CPU per request in the hop: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per_request.items()))
            figures["ttft"]["hop_cpu_ms_per_request"] = per_request

        if "relay" not in skip:
            print(f"\nRelay throughput, one stream of {args.relay_tokens} tokens (median of {args.relay_repeats}):")
            relay = asyncio.run(relay_phase(paths, args.relay_tokens, args.relay_repeats, sampler))
            for name, r in relay.items():
                extra = (f"   hop CPU {r['hop_cpu_us_per_token']:.1f} us/token -> one core relays "
                         f"{1e6 / r['hop_cpu_us_per_token']:,.0f} tokens/s" if r["hop_cpu_us_per_token"] else "")
                print(f"  {name:16s} {r['tokens_per_s']:10,.0f} tokens/s{extra}")
            print("  target: >= 20,000 tokens/s through the controller")
            figures["relay"] = relay

        if "load" not in skip:
            load_paths = {"direct": paced.url, "controller": ctl.url}
            if proxy:
                load_paths["lmdeploy proxy"] = proxy.url
            print(f"\n{args.streams} concurrent streams (opened over {args.ramp_s:g} s, {args.stream_tokens} tokens "
                  f"at {args.stream_rate:g} tokens/s each), {args.load_rounds} rounds, paths in a shuffled order "
                  "each round:")
            runs: dict[str, list[tuple[dict, dict]]] = {name: [] for name in load_paths}
            rng = random.Random(1)
            for _ in range(args.load_rounds):
                order = list(load_paths.items())
                rng.shuffle(order)
                for name, url in order:
                    before = sampler.snapshot()
                    t0 = time.perf_counter()
                    res = asyncio.run(load_phase(url, args.streams, args.ramp_s, args.stream_tokens))
                    runs[name].append((res, sampler.usage_since(before, time.perf_counter() - t0)))
            figures["load"] = {}
            for name, rounds in runs.items():
                hop = {"controller": ["controller"], "lmdeploy proxy": ["lmdeploy-proxy"]}.get(name, [])
                res, usage = merge_rounds(rounds)
                shown = {k: usage[k] for k in [*hop, "worker-paced", "client (this script)"] if k in usage}
                figures["load"][name] = report_load(name, res, shown)
            base = figures["load"]["direct"]["ttft_ms"]
            for name in load_paths:
                if name != "direct":
                    s = figures["load"][name]["ttft_ms"]
                    print(f"  added by {name:16s} p50 {s['p50'] - base['p50']:+7.2f} ms   "
                          f"p99 {s['p99'] - base['p99']:+7.2f} ms")
            print("  target: 0 errors, controller adds <= 100 ms p99")
            if "lmdeploy proxy" in load_paths:
                ours = figures["load"]["controller"]["ttft_ms"]["p99"] - base["p99"]
                theirs = figures["load"]["lmdeploy proxy"]["ttft_ms"]["p99"] - base["p99"]
                ratio = ours / theirs if theirs > 0 else float("nan")
                print(f"  controller / lmdeploy proxy added p99: {ratio:.2f}  (target <= 0.3)")
                figures["load"]["added_p99_ratio"] = ratio

        if "big" not in skip and args.big_streams:
            big_paths = {"direct": paced.url, "controller": ctl.url}
            if proxy:
                big_paths["lmdeploy proxy"] = proxy.url
            print(f"\n{args.big_streams} concurrent streams (opened over {args.big_ramp_s:g} s, {args.stream_tokens} "
                  f"tokens at {args.stream_rate:g} tokens/s each), one round per path:")
            figures["big"] = {}
            for name, url in big_paths.items():
                before = sampler.snapshot()
                t0 = time.perf_counter()
                res = asyncio.run(load_phase(url, args.big_streams, args.big_ramp_s, args.stream_tokens))
                usage = sampler.usage_since(before, time.perf_counter() - t0)
                hop = {"controller": ["controller"], "lmdeploy proxy": ["lmdeploy-proxy"]}.get(name, [])
                shown = {k: usage[k] for k in [*hop, "worker-paced", "client (this script)"] if k in usage}
                figures["big"][name] = report_load(name, res, shown)
            print(f"  target: 0 errors through the controller ({figures['big']['controller']['errors']})")
        sampler.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
