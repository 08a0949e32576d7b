"""Large request bodies through the controller: does one user's 40 MiB upload stall everyone else?

    .venv/bin/python bench/big_body_bench.py                 # 4 uploaders x 40 MiB, 20 s, ~40 s in all
    .venv/bin/python bench/big_body_bench.py --json big.json

Real processes on loopback: one controller, two scripted workers (tests/support/scripted_engine.py): "uploads"
answers the big requests, "chat" streams tokens to the other users. A separate process runs `--clients` uploaders,
each sending a `--body-mib` request of 4 images (each a small PNG carrying a large private chunk, so the worker's
decoding is cheap and the figures are about moving bytes), the next as soon as the previous answer is in. Meanwhile
this process probes the controller's /health every `--probe-ms` and holds `--streams` streams open from the chat
worker, `--stream-rate` tokens/s each, timing the gap between consecutive events as the client sees them.

Targets (issue 11): /health p99 under 20 ms through the controller; no relayed gap above 50 ms beyond the stream's
own token interval.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from bench.harness import Stack, build_checkpoint, client, fmt_ms, machine, scripted_env, summary  # noqa: E402

IMAGES = 4


def padded_png(size: int) -> bytes:
    """A 64x64 PNG of about `size` bytes: the bulk is a private ancillary chunk, which decoders skip."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()
    pad = b"\0" * max(size - len(png) - 12, 0)
    chunk = struct.pack(">I", len(pad)) + b"prVt" + pad + struct.pack(">I", zlib.crc32(b"prVt" + pad))
    return png[:33] + chunk + png[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def upload_body(mib: float) -> bytes:
    raw = int(mib * 2**20 * 3 / 4 / IMAGES)  # base64 grows bytes by 4/3
    url = "data:image/png;base64," + base64.b64encode(padded_png(raw)).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(IMAGES)]
    parts.append({"type": "text", "text": "What is in these pictures?"})
    return json.dumps({"model": "uploads", "max_tokens": 4, "stream": False,
                       "messages": [{"role": "user", "content": parts}]}).encode()


async def uploaders(url: str, clients: int, mib: float, duration: float) -> None:
    """Run in a child process (its own CPU and event loop, so the measuring side is not the one stalled)."""
    body = upload_body(mib)
    done, errors = 0, []

    async def one() -> None:
        nonlocal done
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                async with http.post(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}) as r:
                    text = await r.read()
                    if r.status != 200:
                        errors.append(f"HTTP {r.status}: {text[:200]!r}")
                    done += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    print(json.dumps({"uploads": done, "errors": errors[:3], "error_count": len(errors), "body_bytes": len(body)}))


async def probe_health(url: str, interval: float, stop: asyncio.Event) -> list[float]:
    out = []
    async with client(max_connections=1, timeout=30) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            async with http.get(url + "/health") as r:
                await r.read()
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(interval)
    return out


async def stream_gaps(url: str, tokens: int, stop: asyncio.Event) -> tuple[list[float], int, int]:
    """Streams one after another until `stop`: the gaps between consecutive token events, streams, errors."""
    gaps, streams, errors = [], 0, 0
    body = {"model": "chat", "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "Tell me a story."}]}
    async with client(max_connections=1, timeout=120) as http:
        while not stop.is_set():
            last = None
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    errors += 1
                    await r.read()
                    continue
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    if b'"error"' in line:
                        errors += 1
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
            streams += 1
    return gaps, streams, errors


async def measure(url: str, args: argparse.Namespace, upload_cmd: list[str]) -> dict:
    stop = asyncio.Event()
    # Baseline first (no uploads), then the same with the uploaders running: one row each.
    rows = {}
    for phase in ("quiet", "uploads"):
        stop.clear()
        proc = None
        if phase == "uploads":
            proc = await asyncio.create_subprocess_exec(*upload_cmd, stdout=subprocess.PIPE)
            await asyncio.sleep(1.0)  # let the uploads get going
        health = asyncio.create_task(probe_health(url, args.probe_ms / 1000, stop))
        streams = [asyncio.create_task(stream_gaps(url, args.stream_tokens, stop)) for _ in range(args.streams)]
        await asyncio.sleep(args.duration if phase == "uploads" else min(args.duration, 8))
        stop.set()
        probes = await health
        results = await asyncio.gather(*streams)
        gaps = [g for r in results for g in r[0]]
        row = {"health_ms": summary(probes), "gap_ms": summary(gaps), "streams": sum(r[1] for r in results),
               "stream_errors": sum(r[2] for r in results)}
        if proc is not None:
            out, _ = await proc.communicate()
            row["uploaders"] = json.loads(out.decode().strip().splitlines()[-1])
        rows[phase] = row
    return rows


def pin(stack: Stack) -> None:
    """The shared path (controller, the chat worker, this measuring process) on the last CPU; the uploads' side (their
    worker and the uploaders) on the others, as when they are other users on other hosts. Unpinned on a 2-CPU
    machine, the measuring client and the chat worker wait for a CPU behind the uploads worker's own work (it
    validates each 40 MiB body), and the figures are about the machine, not the controller."""
    import psutil

    cpus = list(range(psutil.cpu_count()))
    shared = ("controller", "worker-chat")
    for name, proc in stack.procs.items():
        main = psutil.Process(proc.popen.pid)
        for p in (main, *main.children(recursive=True)):  # a worker's media decoding pool too
            p.cpu_affinity(cpus[-1:] if name in shared else cpus[:-1])
    psutil.Process().cpu_affinity(cpus[-1:])


def taskset(on: bool) -> list[str]:
    import psutil

    return ["taskset", "-c", ",".join(map(str, range(psutil.cpu_count() - 1)))] if on else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4, help="uploaders, each sending one big request at a time")
    ap.add_argument("--body-mib", type=float, default=40.0)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of uploads")
    ap.add_argument("--streams", type=int, default=8, help="other users' streams held open meanwhile")
    ap.add_argument("--stream-rate", type=float, default=50.0, help="tokens/s of each of those streams")
    ap.add_argument("--stream-tokens", type=int, default=100)
    ap.add_argument("--probe-ms", type=float, default=10.0, help="pause between /health probes")
    ap.add_argument("--pin", action="store_true", help="controller, chat worker and the measuring "
                    "client on the last CPU, the uploads' worker and uploaders on the others (see pin())")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--uploaders-only", help=argparse.SUPPRESS)  # internal: the child process
    args = ap.parse_args()
    if args.uploaders_only:
        asyncio.run(uploaders(args.uploaders_only, args.clients, args.body_mib, args.duration))
        return

    print(f"machine: {machine()}")
    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        ctl = stack.controller(max_body_bytes=int((args.body_mib + 8) * 2**20))
        stack.workers(checkpoint, ctl, {"uploads": scripted_env(4, 0), "chat": scripted_env(10**6, args.stream_rate)},
                      max_body_bytes=int((args.body_mib + 8) * 2**20), max_concurrency=64)
        if args.pin:
            pin(stack)
        upload_cmd = [*taskset(args.pin), sys.executable, __file__, "--uploaders-only", ctl.url,
                      "--clients", str(args.clients), "--body-mib", str(args.body_mib), "--duration", str(args.duration)]
        rows = asyncio.run(measure(ctl.url, args, upload_cmd))
    nominal = 1000 / args.stream_rate
    print(f"\n{args.streams} streams at {args.stream_rate:g} tokens/s (one event every {nominal:.0f} ms) and /health "
          f"every {args.probe_ms:g} ms, through the controller:")
    for phase, row in rows.items():
        label = "no uploads" if phase == "quiet" else f"{args.clients} x {args.body_mib:g} MiB uploads"
        print(f"  {label}:")
        print(f"    /health      {fmt_ms(row['health_ms'])}")
        print(f"    stream gaps  {fmt_ms(row['gap_ms'])}   ({row['streams']} streams, {row['stream_errors']} errors)")
        if "uploaders" in row:
            u = row["uploaders"]
            print(f"    uploads      {u['uploads']} done ({u['body_bytes'] / 2**20:.1f} MiB each), "
                  f"{u['error_count']} errors {u['errors'] or ''}")
    up = rows["uploads"]
    print(f"  targets: /health p99 < 20 ms ({up['health_ms']['p99']:.1f}); no gap above {nominal + 50:.0f} ms, "
          f"i.e. 50 ms beyond the token interval (max {up['gap_ms']['max']:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
