"""A request's life on a worker, seen from outside: real worker processes on loopback (the transformers engine on the
demo checkpoint; the scripted engine where the stage under test sits above the engine).

- A client that leaves ends its request wherever it is (queued for the model, decoding a video, preprocessing an
  image, in the engine before its first token, streaming): the worker's in-flight count drops to 0 and the work
  stops (the engine's running count, the pixels held by preprocessing) within a second.
- One request's heavy work never holds the event loop: /health answers while a 5 MB prompt is handled, and text far
  beyond the context is refused at once with context_length_exceeded.
- A request's decoded pixels are bounded: 16 solid-colour 8000x8000 PNGs (3.5 MB of body) are refused with an error
  that names the limit and the request's figure, without growing the worker.
- The client's X-Request-ID is echoed, never trusted as unique: two concurrent requests carrying the same one are
  both served.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.chat_http import body
from tests.support.media_samples import data_url
from tests.support.raw_http import LeavingClient
from tests.support.stack import ROOT, SCRIPTED, start_worker
from tests.support.video_samples import slow_video

CHAT = "/v1/chat/completions"
STOP_WITHIN_S = 1.0  # the bound for "the work has stopped"
PREPROCESS_PIXELS = 40_000_000  # the worker's decoding budget: one 35 MP photo at a time


@pytest.fixture(scope="module")
def worker(demo_checkpoint, log_dir):
    proc = start_worker(log_dir, demo_checkpoint, None, model_name="demo", max_concurrency=4,
                        preprocess_pixels=PREPROCESS_PIXELS)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def hanging_worker(demo_checkpoint, log_dir):
    """Scripted engine that sits 30 s before its first token: a long prefill."""
    proc = start_worker(log_dir, demo_checkpoint, None, SCRIPTED, model_name="demo",
                        env={"SCRIPTED_HANG_FIRST_S": "30"})
    yield proc
    proc.kill()


def health(proc, timeout: float = 5.0) -> dict:
    return httpx.get(proc.url + "/health", timeout=timeout).json()


def wait_for(proc, condition: Callable[[dict], bool], timeout: float, what: str) -> float:
    """Poll /health until `condition(health)`; -> seconds it took. Fails with the last health answer."""
    started = time.monotonic()
    last: dict = {}
    while time.monotonic() - started < timeout:
        last = health(proc)
        if condition(last):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s; last /health: {last}\n{proc.log()[-2000:]}")


def idle(h: dict) -> bool:
    return h["in_flight"] == 0 and h["queued"] == 0 and h["engine_running"] == 0 and h["preprocess_pixels"] == 0


def chat(content, max_tokens: int = 8, stream: bool = True) -> dict:
    return body("demo", content, max_tokens, stream, temperature=0)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def peak_rss_bytes(proc) -> int:
    with open(f"/proc/{proc.popen.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# -- a client that leaves, at each stage ----------------------------------------------------------------------------

def test_leaving_while_queued_for_the_model_ends_the_request(worker):
    long = LeavingClient(worker.url, CHAT, chat("tell me a long story", max_tokens=3000))
    queued = None
    try:
        wait_for(worker, lambda h: h["engine_running"] == 1, 30, "the first request runs")
        queued = LeavingClient(worker.url, CHAT, chat("and another one", max_tokens=3000))
        wait_for(worker, lambda h: h["queued"] == 1 and h["in_flight"] == 2, 10, "the second request queues")
        queued.close()
        wait_for(worker, lambda h: h["queued"] == 0 and h["in_flight"] == 1, STOP_WITHIN_S, "the queued one ends")
    finally:
        long.close()
        if queued:
            queued.close()
    wait_for(worker, idle, STOP_WITHIN_S + 1, "the worker is idle")


def test_leaving_while_streaming_stops_the_engine(worker):
    client = LeavingClient(worker.url, CHAT, chat("tell me a long story", max_tokens=3000))
    try:
        assert b"200 OK" in client.read_some()
        wait_for(worker, lambda h: h["engine_running"] == 1 and h["stages"].get("streaming") == 1, 10, "streaming")
    finally:
        client.close()
    wait_for(worker, idle, STOP_WITHIN_S, "the stream's work stops")


def photo_35mp(seed: int) -> list[dict]:
    """A fresh photo per test: the worker's media cache would skip decoding one it has seen."""
    noise = np.random.default_rng(seed).integers(0, 256, (5000, 7000, 3), dtype=np.uint8)  # 17 MB as JPEG
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=60)
    return [{"type": "image_url", "image_url": {"url": data_url(buf.getvalue(), "image/jpeg")}},
            {"type": "text", "text": "what is it?"}]


def video_clip() -> list[dict]:
    return [{"type": "video_url", "video_url": {"url": data_url(slow_video(), "video/mp4"), "num_frames": 8}},
            {"type": "text", "text": "what happens?"}]


@pytest.mark.parametrize("media", ["video", "image"])
def test_leaving_while_media_is_decoded_stops_the_work(worker, media):
    content = video_clip() if media == "video" else photo_35mp(seed=1)
    client = LeavingClient(worker.url, CHAT, chat(content))
    try:
        wait_for(worker, lambda h: h["preprocess_pixels"] > 0, 30, f"the {media} is being decoded")
    finally:
        client.close()
    wait_for(worker, idle, STOP_WITHIN_S, "decoding stops and the request ends")


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_leaving_before_the_first_token_stops_the_engine(hanging_worker, stream):
    client = LeavingClient(hanging_worker.url, CHAT, chat("hello", stream=stream))
    try:
        wait_for(hanging_worker, lambda h: h["engine_running"] == 1, 10, "the engine works on the request")
    finally:
        client.close()
    wait_for(hanging_worker, idle, STOP_WITHIN_S, "the engine stops before its first token")


# -- heavy work off the event loop, cheap checks first ---------------------------------------------------------------

def test_health_answers_while_a_5_mb_prompt_is_handled(worker):
    answer: dict = {}

    def send() -> None:
        r = httpx.post(worker.url + CHAT, json=chat("hello world " * 440_000, stream=False), timeout=120)
        answer.update(status=r.status_code, body=r.json())

    sender = threading.Thread(target=send)
    sender.start()
    try:
        for _ in range(15):
            health(worker, timeout=1.0)  # raises when the event loop is stuck
            time.sleep(0.05)
    finally:
        sender.join()
    assert answer["status"] == 400 and answer["body"]["error"]["code"] == "context_length_exceeded"


def test_text_far_beyond_the_context_is_refused_at_once(worker):
    started = time.monotonic()
    r = httpx.post(worker.url + CHAT, json=chat("x " * 2_500_000, stream=False), timeout=120)
    took = time.monotonic() - started
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded", r.text[:300]
    assert "4096" in error["message"], error["message"]
    assert took < 3.0, f"refused after {took:.1f} s: the text was tokenized before the cheap check"


def test_text_many_times_the_context_is_refused_from_a_prefix(worker):
    r = httpx.post(worker.url + CHAT, json=chat("hello world " * 6000, stream=False), timeout=60)  # 72,000 chars
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "its first 32,768 of" in error["message"], error["message"]


def test_text_just_over_the_context_is_counted_and_refused(worker):
    r = httpx.post(worker.url + CHAT, json=chat("one two three " * 2000, stream=False), timeout=60)
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "tokens" in error["message"] and "4096" in error["message"], error["message"]


# -- memory per request ---------------------------------------------------------------------------------------------

def test_decoded_pixel_budget_refuses_sixteen_8000px_pngs_without_growing(worker):
    solid = data_url(png(Image.new("RGB", (8000, 8000), (200, 30, 40))), "image/png")
    content = [{"type": "image_url", "image_url": {"url": solid}} for _ in range(16)]
    content.append({"type": "text", "text": "compare them"})
    before = peak_rss_bytes(worker)
    r = httpx.post(worker.url + CHAT, json=chat(content, stream=False), timeout=120)
    grew = peak_rss_bytes(worker) - before
    error = r.json()["error"]
    assert r.status_code == 413 and error["code"] == "upload_too_large", r.text[:300]
    assert "1,024,000,000" in error["message"] and "max_request_pixels" in error["message"], error["message"]
    assert grew < 1024**3, f"worker peak RSS grew by {grew / 1024**3:.2f} GiB"


def test_requests_wait_for_the_worker_decoding_budget_instead_of_growing(worker):
    payload = chat(photo_35mp(seed=2), stream=False)
    answers: list[int] = []
    senders = [threading.Thread(target=lambda: answers.append(httpx.post(worker.url + CHAT, json=payload,
                                                                          timeout=120).status_code))
               for _ in range(2)]
    for t in senders:
        t.start()
    seen = []
    while any(t.is_alive() for t in senders):
        h = health(worker)
        seen.append((h["stages"].get("media", 0), h["preprocess_pixels"]))
        time.sleep(0.02)
    assert answers == [200, 200]
    assert max(pixels for _, pixels in seen) <= PREPROCESS_PIXELS, seen
    assert (2, 35_000_000) in seen, seen  # both preparing media, one of them waiting for the other's pixels


def test_a_killed_worker_leaves_no_helper_processes(demo_checkpoint, log_dir):
    """The body parser's helper processes go with their worker, even when the worker alone is killed with SIGKILL
    (the out-of-memory killer, a supervisor without a process-group kill): not its process group, as the launcher
    would, which would take the helpers with it whatever they do."""
    proc = start_worker(log_dir, demo_checkpoint, None, model_name="demo")
    try:
        helpers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.popen.pid)], capture_output=True,
                                                      text=True).stdout.split()]
        assert len(helpers) >= 2  # the two parsers (and multiprocessing's resource tracker)
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(pid) for pid in helpers):
            time.sleep(0.05)
        assert not [pid for pid in helpers if _alive(pid)]
    finally:
        proc.kill()


def test_helpers_started_as_their_worker_dies_exit_too(tmp_path):
    """A worker killed while its helpers are still starting (a crash loop, a chaos test): the helpers that come up
    after it died must not take init (or a subreaper) for their worker and stay for ever."""
    script = ("import asyncio, time\nfrom workers.body_parser import BodyParser\n"
              "asyncio.run(BodyParser(2).start())\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    children: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(children) < 2:  # spawned, still importing: their initializer has not run yet
            assert time.monotonic() < deadline and parent.poll() is None
            children = [int(p) for p in subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True,
                                                       text=True).stdout.split()]
            time.sleep(0.01)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 10  # they finish importing first (a few seconds on a loaded machine)
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.05)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running: a zombie (dead, not yet reaped by whoever adopted it) is not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- request ids ----------------------------------------------------------------------------------------------------

def test_same_client_request_id_twice_at_once_both_served(worker):
    results: list[tuple[int, str, str]] = []

    def send() -> None:
        with httpx.stream("POST", worker.url + CHAT, json=chat("count to ten", max_tokens=48),
                          headers={"X-Request-ID": "same-id-1"}, timeout=60) as r:
            text = r.read().decode()
            results.append((r.status_code, r.headers.get("x-request-id"), text))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for status, echoed, text in results:
        assert status == 200 and echoed == "same-id-1", text[:300]
        events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        assert events[-1] == "[DONE]" and not any("error" in json.loads(e) for e in events[:-1]), text[:300]
    assert len(results) == 2
