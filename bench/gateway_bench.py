"""The gateway's dispatch under load (issue 21), real processes: a controller and scripted workers on the demo
checkpoint (the worker's real media path: decoding, tiling, its media cache; the engine only streams tokens).

    .venv/bin/python bench/gateway_bench.py affinity [--chats 30 --turns 4 --workers 3]
    .venv/bin/python bench/gateway_bench.py burst [--clients 1000 --small-queue 100]

affinity: before/after in one run. For each policy (shortest_queue, as before; affinity, the default) a fresh stack of
three workers (cold caches) and `--chats` chats, each about its own 2000x1500 JPEG, all at once, turn by turn (each
turn of a chat sends the whole conversation, the photo in its first message, as OpenAI clients do; no session id).
Reported per policy: the media-cache hit rate of turns 2.. (workers' /metrics; target >= 95%), the workers' CPU
seconds (what preprocessing costs: the scripted engine costs next to nothing), p50/p99 time to first token per turn,
and the requests each worker answered (target: none above 1.5x the mean).

burst: `--clients` concurrent short chats against one worker with --max-concurrency 8: with a line big enough for all
(0 errors expected; the waits reported from the client's first-token times and the controller's
internvl_queue_wait_seconds), then with `--small-queue` places and answers long enough that none ends during the
burst: exactly clients - 8 - small-queue must get 429 queue_full with Retry-After.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (BENCH_KEY, ProcSampler, Stack, build_checkpoint, client, fmt_ms, machine,  # noqa: E402
                     scripted_env, stream_chat, summary)

MODEL = "scripted"


def photo(seed: int, size: tuple[int, int] = (2000, 1500)) -> str:
    """A JPEG data URL: gradients and noise (a photo's decoding cost, not a flat image's)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = (np.stack([xx % 256, yy % 256, (xx + yy + seed) % 256], -1) + rng.integers(0, 32, (h, w, 3))) % 256
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


async def cache_counts(http, workers) -> dict[str, tuple[float, float]]:
    """worker url -> (media cache hits, misses) so far."""
    out = {}
    for w in workers:
        async with http.get(w.url + "/metrics", headers={"Authorization": f"Bearer {BENCH_KEY}"}) as r:
            text = await r.text()
        hits = re.search(r"^internvl_media_cache_hits_total ([0-9.e+]+)$", text, re.M)
        misses = re.search(r"^internvl_media_cache_misses_total ([0-9.e+]+)$", text, re.M)
        out[w.url] = (float(hits.group(1)) if hits else 0.0, float(misses.group(1)) if misses else 0.0)
    return out


async def affinity_run(policy: str, checkpoint: Path, photos: list[str], turns: int, n_workers: int,
                       max_concurrency: int, max_excess: int | None = None) -> dict:
    with Stack() as stack:
        extra = {} if max_excess is None else {"affinity_max_excess": max_excess}
        ctl = stack.controller(dispatch_policy=policy, **extra)
        workers = stack.workers(checkpoint, ctl, {MODEL: scripted_env(16, 200)}, each=n_workers,
                                max_concurrency=max_concurrency)
        sampler = ProcSampler({f"w{i}": w.popen.pid for i, w in enumerate(workers)})
        histories = [[] for _ in photos]
        ttft: dict[int, list[float]] = {}
        served: Counter[str] = Counter()
        errors = 0
        async with client() as http:
            before, cpu_before, started = None, None, None
            for turn in range(1, turns + 1):
                if turn == 2:
                    before, cpu_before, started = await cache_counts(http, workers), sampler.snapshot(), time.time()

                async def one(i: int) -> None:
                    nonlocal errors
                    content = ([{"type": "image_url", "image_url": {"url": photos[i]}}] if turn == 1 else []) + \
                        [{"type": "text", "text": f"Question {turn} about this photo?"}]
                    messages = histories[i] + [{"role": "user", "content": content}]
                    body = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": 16,
                            "temperature": 0.0}
                    r = await stream_chat(http, ctl.url, body, keep_text=True)
                    if r.error:
                        errors += 1
                        print(f"  chat {i} turn {turn}: {r.error}")
                    else:
                        ttft.setdefault(turn, []).append(r.ttft)
                        served[r.worker] += 1
                    histories[i] = messages + [{"role": "assistant", "content": r.text or "..."}]

                await asyncio.gather(*(one(i) for i in range(len(photos))))
            after = await cache_counts(http, workers)
            cpu = sampler.usage_since(cpu_before, time.time() - started) if cpu_before else {}
        sampler.close()
    hits = sum(after[u][0] - before[u][0] for u in after) if before else 0.0
    misses = sum(after[u][1] - before[u][1] for u in after) if before else 0.0
    return {"policy": policy, "hit_rate": hits / (hits + misses) if hits + misses else float("nan"),
            "hits": hits, "misses": misses, "cpu_s": sum(u.cpu_seconds for u in cpu.values()),
            "ttft": {t: summary(v) for t, v in ttft.items()}, "served": served, "errors": errors}


async def affinity(args: argparse.Namespace, checkpoint: Path) -> None:
    photos = [photo(seed) for seed in range(args.chats)]
    print(f"{args.chats} chats x {args.turns} turns, {args.workers} workers (--max-concurrency {args.max_concurrency}), "
          "photo 2000x1500 JPEG "
          f"({len(photos[0]) * 3 / 4 / 2**20:.1f} MB)")
    for policy in args.policies.split(","):
        res = await affinity_run(policy, checkpoint, photos, args.turns, args.workers, args.max_concurrency,
                                 args.affinity_max_excess)
        counts = sorted(res["served"].values(), reverse=True)
        mean = sum(counts) / args.workers if counts else 0
        print(f"\n{policy}: cache hit rate on turns 2-{args.turns}: {res['hit_rate'] * 100:.1f}% "
              f"({res['hits']:.0f} hits, {res['misses']:.0f} misses); workers' CPU on turns 2-{args.turns}: "
              f"{res['cpu_s']:.1f} s; errors {res['errors']}")
        print(f"  requests per worker: {counts} (max {max(counts) / mean:.2f}x the mean)" if counts else "")
        for turn, s in sorted(res["ttft"].items()):
            print(f"  turn {turn} first token: {fmt_ms(s)}")


async def burst_run(checkpoint: Path, clients: int, queue: int, env: dict[str, str]) -> dict:
    with Stack() as stack:
        ctl = stack.controller(queue_size=queue, queue_timeout_s=300)
        stack.workers(checkpoint, ctl, {MODEL: env}, max_concurrency=8)
        async with client(timeout=600) as http:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi!"}], "stream": True,
                    "max_tokens": 16}
            started = time.perf_counter()
            results = await asyncio.gather(*(stream_chat(http, ctl.url, body) for _ in range(clients)))
            wall = time.perf_counter() - started
            async with http.get(ctl.url + "/metrics") as r:
                metrics = await r.text()
    waited = re.search(r"^internvl_queue_wait_seconds_sum ([0-9.e+]+)$", metrics, re.M)
    count = re.search(r"^internvl_queue_wait_seconds_count ([0-9.e+]+)$", metrics, re.M)
    return {"results": results, "wall": wall, "waits": int(float(count.group(1))) if count else 0,
            "wait_sum": float(waited.group(1)) if waited else 0.0}


async def burst(args: argparse.Namespace, checkpoint: Path) -> None:
    n = args.clients
    big = await burst_run(checkpoint, n, n, scripted_env(4, 40))
    ok = [r for r in big["results"] if r.status == 200 and not r.error]
    errors = Counter((r.status, (r.error or "")[:60]) for r in big["results"] if r.error)
    print(f"{n} concurrent chats, one worker (--max-concurrency 8, answers of 4 tokens at 40/s), --queue-size {n}: "
          f"{len(ok)} answered, {sum(errors.values())} errors {dict(errors) or ''} in {big['wall']:.1f} s")
    print(f"  first token (includes the wait): {fmt_ms(summary([r.ttft for r in ok]))}")
    if big["waits"]:
        print(f"  controller: {big['waits']} requests waited in line, mean {big['wait_sum'] / big['waits']:.2f} s")

    q = args.small_queue
    small = await burst_run(checkpoint, n, q, scripted_env(10, 2))  # 5 s answers: none ends during the burst
    statuses = Counter(r.status for r in small["results"])
    refused = [r for r in small["results"] if r.status == 429]
    codes = Counter("queue_full" if "waiting line is full" in (r.error or "") else (r.error or "")[:80]
                    for r in refused)
    with_retry = sum(1 for r in refused if r.retry_after)
    print(f"{n} concurrent chats, --queue-size {q} (answers of 5 s): statuses {dict(statuses)}; 429s: "
          f"{len(refused)} (expected exactly {n} - 8 - {q} = {n - 8 - q}), codes {dict(codes)}, "
          f"{with_retry} with Retry-After; {small['wall']:.1f} s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["affinity", "burst"])
    parser.add_argument("--chats", type=int, default=30)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--max-concurrency", type=int, default=8, help="each worker's (8: the worker's default)")
    parser.add_argument("--policies", default="shortest_queue,affinity")
    parser.add_argument("--affinity-max-excess", type=int, default=None, help="the controller's (default: its own)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--small-queue", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with Stack() as scratch:
        checkpoint = build_checkpoint(scratch.work)
        await (affinity if args.part == "affinity" else burst)(args, checkpoint)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
