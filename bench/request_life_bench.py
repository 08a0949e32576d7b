"""One request must not take a worker away from everyone else (request-lifetime issue, items 3 and 4).

A real controller and one real worker (transformers engine on the demo checkpoint, CPU), heartbeats every second.
Phase "load": while a prober reads the worker's /health every 20 ms and the controller's view of the worker every
100 ms, clients send straight to the worker, all at once: a 5 MB and a 50 MB text prompt, and 4 requests with two
35-megapixel JPEGs each. Reported: /health latency percentiles, the longest heartbeat gap the controller saw and
whether the worker ever dropped out, each request's answer and how long it took, the worker's peak RSS growth.
Phase "pixels": one request with 16 solid-colour 8000x8000 PNGs (a 3.5 MB body): its answer, and the growth of the
worker's peak RSS (VmHWM) over the request.

Targets: /health p99 < 100 ms, no heartbeat lapse, the oversized prompts refused (4xx) within 1 s; the 16 PNGs
refused with the pixel-budget error or RSS +1 GiB at most.

    .venv/bin/python bench/request_life_bench.py [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import ProcSampler, Stack, build_checkpoint, fmt_ms, machine, summary  # noqa: E402
from tests.support.stack import start_worker  # noqa: E402

HEARTBEAT_S = 1.0


def chat_bytes(content, max_tokens: int = 8) -> bytes:
    return json.dumps({"model": "demo", "stream": False, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": content}]}).encode()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def jpeg(seed: int, size=(7000, 5000)) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=60)
    return buf.getvalue()


def solid_png(side: int = 8000) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 40)).save(buf, "PNG")
    return buf.getvalue()


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def probe(url: str, every: float, done, out) -> None:
    """In its own process (the senders' work must not delay the probes): GET `url` every `every` s until `done`;
    puts (latencies, answers, failures) on `out`. A failure or timeout counts as the time it took."""
    latencies, answers, failures = [], [], 0
    with httpx.Client(timeout=10.0) as http:
        while not done.is_set():
            started = time.monotonic()
            try:
                answers.append(http.get(url).json())
            except httpx.HTTPError:
                failures += 1
            latencies.append(time.monotonic() - started)
            done.wait(max(0.0, every - (time.monotonic() - started)))
    out.put((latencies, answers, failures))


class Prober:
    def __init__(self, url: str, every: float):
        ctx = multiprocessing.get_context("spawn")
        self.done, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=probe, args=(url, every, self.done, self.out), daemon=True)
        self.latencies: list[float] = []
        self.answers: list[dict] = []
        self.failures = 0

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self.done.set()
        self.latencies, self.answers, self.failures = self.out.get(timeout=60)
        self.proc.join(10)


def send(url: str, body: bytes, results: dict, name: str) -> None:
    """A plain socket: the upload ends at a known moment, so the worker's own answer time is measured from there."""
    parts = urllib.parse.urlsplit(url)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=600) as sock:
        sock.sendall(head + body)
        sent = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    done = time.monotonic()
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    payload = rest.partition(b"\r\n\r\n")[2]
    code = json.loads(payload).get("error", {}).get("code") if status >= 400 else None
    results[name] = {"status": status, "code": code, "seconds": done - started, "after_upload_s": done - sent,
                     "body_mb": len(body) / 1e6}


def phase_load(stack: Stack, controller, worker, text_mb: list[int]) -> dict:
    print("building the bodies ...", flush=True)
    bodies = {f"text {mb} MB": chat_bytes("hello world " * (88_000 * mb)) for mb in text_mb}
    for i in range(4):
        content = [{"type": "image_url", "image_url": {"url": data_url(jpeg(2 * i + k), "image/jpeg")}}
                   for k in range(2)]
        bodies[f"images {i + 1} (2 x 35 MP)"] = chat_bytes(content + [{"type": "text", "text": "compare"}])
    health = Prober(worker.url + "/health", 0.02)
    workers = Prober(controller.url + "/workers", 0.1)
    sampler = ProcSampler({"worker": worker.popen.pid})
    before = sampler.snapshot()
    health.start()
    workers.start()
    time.sleep(1.0)  # a quiet second first: the baseline of both probers
    results: dict = {}
    started = time.monotonic()
    senders = [threading.Thread(target=send, args=(worker.url, body, results, name)) for name, body in bodies.items()]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    wall = time.monotonic() - started
    time.sleep(1.0)
    health.stop()
    workers.stop()
    usage = sampler.usage_since(before, wall)["worker"]
    sampler.close()
    ages = [w["last_heartbeat_age_s"] for answer in workers.answers for w in answer.get("workers", [])
            if w["url"] == worker.url]
    present = [any(w["url"] == worker.url and w["healthy"] for w in answer.get("workers", []))
               for answer in workers.answers]
    return {"health": summary(health.latencies), "health_failures": health.failures,
            "heartbeat_max_age_s": max(ages, default=None), "worker_dropped": not all(present),
            "requests": results, "wall_s": wall, "worker_rss_start_mb": usage.rss_start_mb,
            "worker_rss_peak_mb": usage.rss_peak_mb}


def phase_pixels(worker) -> dict:
    png = data_url(solid_png(), "image/png")
    body = chat_bytes([{"type": "image_url", "image_url": {"url": png}} for _ in range(16)]
                      + [{"type": "text", "text": "compare them"}])
    before = vm_hwm(worker.popen.pid)
    results: dict = {}
    send(worker.url, body, results, "16 x 8000x8000 PNG")
    answer = results["16 x 8000x8000 PNG"]
    answer["peak_rss_growth_mb"] = (vm_hwm(worker.popen.pid) - before) / 2**20
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--text-mb", default="5,50", help="sizes of the text prompts, MB (default 5,50)")
    args = parser.parse_args()
    print(machine(), flush=True)
    with Stack() as stack:
        checkpoint = build_checkpoint(stack.work)
        controller = stack.controller(heartbeat_expiry_s=3 * HEARTBEAT_S)
        worker = stack._keep("worker", start_worker(stack.logs, checkpoint, controller.url, model_name="demo",
                                                    heartbeat_interval_s=HEARTBEAT_S, log_level="warning"))
        load = phase_load(stack, controller, worker, [int(x) for x in args.text_mb.split(",") if x])
        pixels = phase_pixels(worker)
    print(f"\nload phase ({load['wall_s']:.1f} s): worker /health {fmt_ms(load['health'])}  "
          f"(n={load['health']['n']}, failures {load['health_failures']})")
    print(f"heartbeats every {HEARTBEAT_S:g} s: longest gap seen by the controller {load['heartbeat_max_age_s']} s; "
          f"worker dropped: {load['worker_dropped']}")
    print(f"worker RSS {load['worker_rss_start_mb']:.0f} MB -> peak {load['worker_rss_peak_mb']:.0f} MB")
    for name, r in load["requests"].items():
        print(f"  {name:24s} {r['body_mb']:6.1f} MB body -> {r['status']} {r['code'] or ''} in {r['seconds']:.2f} s, "
              f"{r['after_upload_s']:.2f} s after its upload ended")
    print(f"pixels phase: 16 x 8000x8000 PNG ({pixels['body_mb']:.1f} MB body) -> {pixels['status']} "
          f"{pixels['code'] or ''} in {pixels['seconds']:.2f} s ({pixels['after_upload_s']:.2f} s after its upload); "
          f"worker peak RSS +{pixels['peak_rss_growth_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"load": load, "pixels": pixels}, indent=2))


if __name__ == "__main__":
    main()
