"""Chaos: 3 real scripted workers behind a real controller under 100 concurrent multi-turn chats, while a driver
kill -9s and restarts workers, freezes workers (SIGSTOP: their heartbeats stop, and past the expiry the controller
removes them; on SIGCONT they register again) and freezes the controller past the workers' heartbeat timeout (their
heartbeats fail, so they register again while their streams run: on main that left phantom in-flight counts). Every request must either complete or end with a clear error (an
HTTP error with an error body, or an error event before the end marker); none may hang or end without one. At the
end every process counts 0 in flight and every worker is registered, healthy and idle.

    CHAOS_DURATION_S=60 .venv/bin/python -m pytest tests/controller/test_chaos.py -s   # the default is 60 s

CI shortens it (.ci/run: CHAOS_DURATION_S=30, the least: the driver does one fault of each kind first, which takes
up to ~30 s). The counts are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter

import aiohttp
import httpx
import pytest

from tests.support.chat_http import worker_status
from tests.support.stack import SCRIPTED, spawn_worker, start_controller, wait_worker

pytestmark = pytest.mark.slow

DURATION_S = max(30.0, float(os.environ.get("CHAOS_DURATION_S", "60")))
CHATS = 100
WORKERS = ("w0", "w1", "w2")
HEARTBEAT_S, EXPIRY_S = 0.5, 8.0
WORKER_HEARTBEAT_TIMEOUT_S = 5.0  # workers/registration.py
FIRST_TOKEN_TIMEOUT_S = TOKEN_TIMEOUT_S = 9.0  # longer than a controller freeze: the streams just wait
HANG_S = 45.0  # a request still open after this long is lost: it hung
MODEL = "scripted"
FAULTS = ("freeze controller", "kill -9 worker", "freeze worker > expiry", "freeze worker < expiry")
WORKER_ENV = {"SCRIPTED_TOKENS": "12", "SCRIPTED_RATE": "30"}


@pytest.fixture
def cluster(demo_checkpoint, log_dir):
    # A worker killed or frozen fails requests in a row and is benched (controller/breaker.py): a short cool-down, so
    # that the check at the end ("every worker serves again") sees its trial within the test's deadline.
    ctl = start_controller(log_dir, heartbeat_expiry_s=EXPIRY_S, first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,
                           token_timeout_s=TOKEN_TIMEOUT_S, log_level="warning", breaker_cooldown_s=1.0)
    workers = {w: spawn_worker(log_dir, demo_checkpoint, ctl.url, SCRIPTED, env=WORKER_ENV, model_name=MODEL,
                               worker_id=w, heartbeat_interval_s=HEARTBEAT_S, max_concurrency=64,
                               log_level="warning")
               for w in WORKERS}
    try:
        for proc in workers.values():
            wait_worker(proc, ctl.url)
        yield ctl, workers
    finally:
        for proc in [*workers.values(), ctl]:
            proc.popen.send_signal(signal.SIGCONT)
            proc.kill()


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.lost: list[str] = []

    def error(self, code: str) -> None:
        self.counts["clean errors"] += 1
        self.errors[code] += 1

    def lose(self, why: str) -> None:
        self.counts["lost"] += 1
        self.lost.append(why)


async def post(http: aiohttp.ClientSession, url: str, body: dict, tally: Tally) -> aiohttp.ClientResponse:
    """POST, sent once more when a reused keep-alive connection was reset before any answer, as HTTP clients do
    (the OpenAI client retries connection errors): a frozen controller's uvicorn closes connections that idled past
    its keep-alive limit the moment it wakes, racing clients that just wrote a request on them. Nothing reached the
    application then; the retry is counted and printed."""
    try:
        return await http.post(url + "/v1/chat/completions", json=body)
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        tally.counts["resent after a keep-alive reset"] += 1
        return await http.post(url + "/v1/chat/completions", json=body)


async def one_request(http: aiohttp.ClientSession, url: str, history: list[dict], tally: Tally) -> str | None:
    """One streamed turn; returns the answer text when it completed."""
    tally.counts["requests"] += 1
    body = {"model": MODEL, "messages": history, "stream": True, "max_tokens": 12}
    text, state = [], "streaming"  # -> "finished" (a finish_reason) or "failed" (an error event)
    try:
        async with asyncio.timeout(HANG_S):
            async with await post(http, url, body, tally) as r:
                if r.status != 200:
                    payload = await r.json(content_type=None)
                    tally.error(payload["error"]["code"])  # a KeyError/ValueError here means no clear error body
                    return None
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip().decode()
                    if data == "[DONE]":
                        if state == "finished":
                            tally.counts["completed"] += 1
                            return "".join(text)
                        if state == "streaming":
                            tally.lose("[DONE] without a finish or an error event")
                        return None
                    event = json.loads(data)
                    if "error" in event:
                        tally.error(event["error"]["code"])
                        state = "failed"
                        continue
                    for choice in event.get("choices") or []:
                        text.append((choice.get("delta") or {}).get("content") or "")
                        if choice.get("finish_reason"):
                            state = "finished"
                tally.lose(f"stream ended without [DONE] ({state})")
    except TimeoutError:
        tally.lose(f"hung for {HANG_S:.0f} s")
    except (aiohttp.ClientError, ValueError, KeyError) as exc:
        tally.lose(f"{type(exc).__name__}: {exc}"[:200])
    return None


async def chat(http: aiohttp.ClientSession, url: str, chat_id: int, until: float, tally: Tally) -> None:
    history: list[dict] = []
    turn = 0
    while time.monotonic() < until:
        history.append({"role": "user", "content": f"chat {chat_id} turn {turn}: and then?"})
        answer = await one_request(http, url, history, tally)
        history.append({"role": "assistant", "content": answer or "(no answer)"})
        turn += 1
        if turn == 6:
            history, turn = [], 0
        await asyncio.sleep(random.uniform(0.2, 0.8))


async def driver(ctl, workers: dict, log_dir, checkpoint, until: float, rng: random.Random,
                 actions: Counter) -> None:
    """Every 1.5-4 s one of: kill -9 a worker (restarted 1 s later); freeze a worker for 0.5-11 s (its heartbeats
    stop; past the expiry it is removed, and registers again when it wakes); freeze the controller just past the
    workers' heartbeat timeout (their heartbeats fail and they register again, streams still running). One of each
    kind comes first, in FAULTS order and 1-2 s apart, so that a short run sees them all; then they are drawn at
    random."""
    script = list(FAULTS)
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(1.0, 2.0) if script else rng.uniform(1.5, 4.0))
        kind = script[0] if script else None
        roll = rng.random()
        if kind == "freeze controller" or (kind is None and roll < 0.15):
            script = script[1:]
            ctl.popen.send_signal(signal.SIGSTOP)
            await asyncio.sleep(WORKER_HEARTBEAT_TIMEOUT_S + rng.uniform(0.3, 1.0))
            ctl.popen.send_signal(signal.SIGCONT)
            actions["freeze controller"] += 1
            continue
        alive = [name for name in WORKERS if workers[name].alive()]
        if not alive:
            continue
        name = rng.choice(alive)
        proc = workers[name]
        script = script[1:]
        if kind == "kill -9 worker" or (kind is None and roll < 0.5):
            proc.popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.popen.wait, 10)
            actions["kill -9 worker"] += 1
            await asyncio.sleep(1.0)
            workers[name] = spawn_worker(log_dir, checkpoint, ctl.url, SCRIPTED, env=WORKER_ENV, model_name=MODEL,
                                         worker_id=name, heartbeat_interval_s=HEARTBEAT_S, max_concurrency=64,
                                         log_level="warning", port=int(proc.url.rsplit(":", 1)[1]))
        else:
            if kind == "freeze worker > expiry":
                pause = rng.uniform(EXPIRY_S + 0.5, EXPIRY_S + 3)
            elif kind == "freeze worker < expiry":
                pause = rng.uniform(0.5, EXPIRY_S - 1)
            else:
                pause = rng.uniform(0.5, EXPIRY_S + 3)
            proc.popen.send_signal(signal.SIGSTOP)
            await asyncio.sleep(pause)
            proc.popen.send_signal(signal.SIGCONT)
            actions["freeze worker > expiry" if pause > EXPIRY_S else "freeze worker < expiry"] += 1


async def run_chaos(ctl, workers: dict, log_dir, checkpoint) -> tuple[Tally, Counter]:
    ctl_url = ctl.url
    tally, actions = Tally(), Counter()
    until = time.monotonic() + DURATION_S
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        chats = [asyncio.create_task(chat(http, ctl_url, i, until, tally)) for i in range(CHATS)]
        await driver(ctl, workers, log_dir, checkpoint, until, random.Random(14), actions)
        await asyncio.gather(*chats)
    return tally, actions


def test_chaos_every_request_ends_cleanly_and_nothing_stays_busy(cluster, log_dir, demo_checkpoint):
    ctl, workers = cluster
    tally, actions = asyncio.run(run_chaos(ctl, workers, log_dir, demo_checkpoint))
    print(f"\nchaos for {DURATION_S:.0f} s, {CHATS} chats, driver: {dict(actions)}")
    print(f"requests {tally.counts['requests']}, completed {tally.counts['completed']}, clean errors "
          f"{tally.counts['clean errors']} {dict(tally.errors)}, lost {tally.counts['lost']} (resent after a "
          f"keep-alive reset: {tally.counts['resent after a keep-alive reset']})")
    assert set(actions) == set(FAULTS), actions  # every kind of fault happened
    assert tally.counts["lost"] == 0, Counter(tally.lost).most_common(5)
    assert tally.counts["requests"] == tally.counts["completed"] + tally.counts["clean errors"]
    assert tally.counts["completed"] > tally.counts["requests"] / 2

    for name, proc in workers.items():  # the driver may have ended with a worker still starting up
        proc.popen.send_signal(signal.SIGCONT)
        wait_worker(proc, ctl.url)
    deadline = time.monotonic() + 4 * HEARTBEAT_S + 2 * EXPIRY_S  # a drift is corrected after its grace period
    while time.monotonic() < deadline:
        status = worker_status(ctl.url)
        if set(status) == set(WORKERS) and all(s["healthy"] and s["in_flight"] == 0 for s in status.values()):
            break
        time.sleep(0.1)
    status = worker_status(ctl.url)
    assert set(status) == set(WORKERS), status
    assert all(s["healthy"] and s["in_flight"] == 0 for s in status.values()), status
    for name, proc in workers.items():
        health = httpx.get(proc.url + "/health", timeout=10).json()
        assert health["in_flight"] == 0 and health["registered"], (name, health)
    with httpx.Client(timeout=30) as http:  # and every worker serves again
        served = set()
        for i in range(30):  # 30 conversations (one conversation's turns stay on one worker)
            r = http.post(ctl.url + "/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": f"still there? ({i})"}], "max_tokens": 2})
            assert r.status_code == 200, r.text
            served.add(r.headers["x-worker-id"])
    assert served == set(WORKERS)
