"""Soak: many concurrent multi-turn chats through one controller for a while; errors and memory growth per process.

    .venv/bin/python bench/soak.py                      # 200 chats for 60 s (+ 10 s warm-up), 2 scripted workers
    .venv/bin/python bench/soak.py --chats 50 --duration 20

Each chat sends a streaming request, reads it to the end, waits a think time, and sends the next turn with the whole
history (so payloads grow as in a real chat); after --turns turns it starts a new chat. RSS growth is measured from
the end of the warm-up (first allocations, caches and connection pools are filled by then) to the end of the run.
Targets: 0 errors, < 10% RSS growth of every process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (ProcSampler, Stack, build_checkpoint, chat_body, client, fmt_ms, machine,  # noqa: E402
                           scripted_env, stream_chat, summary)


async def chat_loop(http, url: str, chat_id: int, until: float, args, stats: dict) -> None:
    history: list[dict] = []
    turn = 0
    while time.monotonic() < until:
        text = f"chat {chat_id} turn {turn}: tell me more about picture {turn}."
        r = await stream_chat(http, url, chat_body(args.tokens, text=text, model="soak", history=history),
                              keep_text=True)
        stats["requests"] += 1
        if r.error or r.tokens != args.tokens:
            stats["errors"][(r.error or f"{r.tokens} tokens instead of {args.tokens}")[:120]] += 1
        else:
            stats["ttft"].append(r.ttft)
            stats["tokens"] += r.tokens
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": r.text or "(none)"}]
        turn += 1
        if turn >= args.turns:
            history, turn = [], 0
        await asyncio.sleep(args.think_s)


async def run(url: str, args, sampler: ProcSampler) -> tuple[dict, dict, float]:
    stats = {"requests": 0, "tokens": 0, "errors": Counter(), "ttft": []}
    start = time.monotonic()
    until = start + args.warmup + args.duration
    async with client(max_connections=None, timeout=120) as http:
        tasks = []
        for i in range(args.chats):  # staggered over one think time, like users arriving
            tasks.append(asyncio.create_task(chat_loop(http, url, i, until, args, stats)))
            await asyncio.sleep(args.think_s / args.chats)
        await asyncio.sleep(max(0.0, start + args.warmup - time.monotonic()))
        warm_stats = {"requests": stats["requests"], "errors": sum(stats["errors"].values())}
        before = sampler.snapshot()
        t0 = time.monotonic()
        await asyncio.gather(*tasks)
        usage = sampler.usage_since(before, time.monotonic() - t0)
    stats["warmup"] = warm_stats
    return stats, usage, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds (after the warm-up)")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    ap.add_argument("--rate", type=float, default=50.0, help="tokens/s per answer")
    ap.add_argument("--think-s", type=float, default=1.0, help="pause between a chat's turns")
    ap.add_argument("--turns", type=int, default=8, help="turns before a chat starts over")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    print(f"machine: {machine()}")
    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        ctl = stack.controller()
        stack.workers(checkpoint, ctl, {"soak": scripted_env(args.tokens, args.rate)}, each=args.workers,
                      max_concurrency=max(64, args.chats))
        sampler = ProcSampler({name: p.popen.pid for name, p in stack.procs.items()} | {"client": os.getpid()})
        print(f"{args.chats} chats, {args.warmup:g} s warm-up + {args.duration:g} s measured, {args.workers} "
              f"workers, {args.tokens} tokens at {args.rate:g}/s per answer, {args.think_s:g} s think time")
        stats, usage, wall = asyncio.run(run(ctl.url, args, sampler))
        sampler.close()
        workers = stack.procs["controller"].alive() and all(p.alive() for p in stack.procs.values())

    errors = sum(stats["errors"].values())
    print(f"\nrequests {stats['requests']}  ({stats['requests'] / (args.warmup + args.duration):.0f}/s), "
          f"tokens {stats['tokens']}, errors {errors}; all processes alive at the end: {workers}")
    print(f"TTFT through the controller: {fmt_ms(summary(stats['ttft']))}")
    for reason, n in stats["errors"].most_common(5):
        print(f"  {n:5d} x {reason}")
    print(f"memory and CPU over the measured {wall:.0f} s:")
    worst = 0.0
    for name, u in usage.items():
        worst = max(worst, u.rss_growth)
        print(f"  {name:16s} RSS {u.rss_start_mb:7.1f} -> {u.rss_end_mb:7.1f} MB ({100 * u.rss_growth:+5.1f}%, "
              f"peak {u.rss_peak_mb:7.1f})   CPU {u.cpu_percent:4.0f}% of a core")
    print(f"targets: 0 errors (got {errors}), < 10% RSS growth (worst {100 * worst:+.1f}%)")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "args": vars(args) | {"json": str(args.json)}, "requests": stats["requests"],
            "errors": errors, "error_reasons": dict(stats["errors"]), "ttft_ms": summary(stats["ttft"]),
            "usage": {k: vars(v) | {"rss_growth": v.rss_growth} for k, v in usage.items()}}, indent=2))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
