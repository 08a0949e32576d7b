"""Fault tests with real processes: a worker that hangs before its first token, a worker that answers HTTP 500, a
controller restarted, a worker killed mid-stream.

Two scripted workers ("a" and "b", tests/support/scripted_engine.py) serve one model behind one controller, started
once for the module. A failure is aimed at one worker by a switch in the request text (`scripted:hang=a`), so the
same request fails on one worker and works on the other, which is what failover needs. To make the controller try
the failing worker first, a long stream is held open on the other one: shortest-queue dispatch then prefers the idle
worker. The tests run in file order; the kill test is last because it leaves one worker.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from tests.support.chat_http import body, data_lines, open_stream, worker_status
from tests.support.stack import SCRIPTED, spawn_worker, start_controller, wait_worker
from tests.support.waiting import wait_until

HEARTBEAT_S = 1.0
EXPIRY_S = 3.0
FIRST_TOKEN_TIMEOUT_S = 1.5
MODEL = "scripted"
WORKER_KEY = "worker-direct-key"


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    # Shortest queue: the tests steer a request to the failing worker by holding a stream on the other one (a
    # conversation's turns would follow it there under the default affinity policy).
    ctl = start_controller(log_dir, heartbeat_expiry_s=EXPIRY_S, first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,
                           dispatch_policy="shortest_queue")
    state = {"controller": ctl, "workers": {}, "log_dir": log_dir}
    try:
        for worker_id in ("a", "b"):  # answers of up to 400 tokens at 40/s: long enough to act in the middle
            state["workers"][worker_id] = spawn_worker(
                log_dir, demo_checkpoint, ctl.url, SCRIPTED, env={"SCRIPTED_TOKENS": "400", "SCRIPTED_RATE": "40"},
                model_name=MODEL, worker_id=worker_id, heartbeat_interval_s=HEARTBEAT_S, api_keys=[WORKER_KEY])
        for proc in state["workers"].values():
            wait_worker(proc, ctl.url)
        yield state
    finally:
        # SIGKILL: a graceful stop would wait for the hanging request; nothing is left to check at this point.
        for proc in [*state["workers"].values(), state["controller"]]:
            proc.kill()


def ask(http: httpx.Client, url: str, text: str = "hello") -> httpx.Response:
    # The key lets the test call a worker directly (the controller ignores it: it has no keys of its own).
    return http.post(url + "/v1/chat/completions", json=body(MODEL, text),
                     headers={"Authorization": f"Bearer {WORKER_KEY}"})


def failover_with_held_stream(http: httpx.Client, ctl_url: str, text: str) -> tuple[httpx.Response, float, int]:
    """Hold a stream on "b" (the request fails on "a", so wherever it starts it ends on "b"), then send the same
    request again: it goes to the idle "a" first and must fail over to "b". -> (answer, seconds, a's new failures)"""
    held = open_stream(http, ctl_url, MODEL, text)
    try:
        before = worker_status(ctl_url)
        assert before["b"]["in_flight"] == 1 and before["a"]["in_flight"] == 0
        started = time.monotonic()
        answer = ask(http, ctl_url, text)
        took = time.monotonic() - started
    finally:
        held.close()
    return answer, took, worker_status(ctl_url)["a"]["failures"] - before["a"]["failures"]


def test_worker_hanging_before_first_token_times_out_and_fails_over(stack):
    ctl = stack["controller"]
    with httpx.Client(timeout=30) as http:
        answer, took, new_failures = failover_with_held_stream(http, ctl.url, "scripted:hang=a hello")
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert new_failures == 1
    assert FIRST_TOKEN_TIMEOUT_S <= took < FIRST_TOKEN_TIMEOUT_S + 3.0, f"answer took {took:.2f} s"
    assert worker_status(ctl.url)["a"]["healthy"], "a slow worker is not a dead one: it stays in rotation"


def test_worker_answering_500_fails_over_then_clear_error_when_none_left(stack):
    ctl, workers = stack["controller"], stack["workers"]
    with httpx.Client(timeout=30) as http:
        direct = ask(http, workers["a"].url, "scripted:fail=a hello")
        assert direct.status_code == 500 and direct.json()["error"]["code"] == "engine_error"

        answer, took, new_failures = failover_with_held_stream(http, ctl.url, "scripted:fail=a hello")
        assert answer.status_code == 200, answer.text
        assert new_failures == 1 and took < FIRST_TOKEN_TIMEOUT_S

        answer = ask(http, ctl.url, "scripted:fail=* hello")  # every worker fails it
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "no_worker_available"
    assert "2 tried" in error["message"] and "scripted engine failure" in error["message"], error["message"]


def test_controller_restart_workers_reregister_within_one_heartbeat(stack):
    ctl = stack["controller"]
    port = int(ctl.url.rsplit(":", 1)[1])
    ctl.stop()
    time.sleep(HEARTBEAT_S)  # the stimulus: the controller stays away a heartbeat, so the workers' heartbeats fail
    new = start_controller(stack["log_dir"], port=port, heartbeat_expiry_s=EXPIRY_S,
                           first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S)
    stack["controller"] = new
    took = wait_until(lambda: set(worker_status(new.url)) == {"a", "b"}, 3 * HEARTBEAT_S,
                      "both workers registered with the new controller", interval=0.02)
    assert took <= HEARTBEAT_S + 0.3, f"workers took {took:.2f} s to re-register (heartbeat {HEARTBEAT_S} s)"
    with httpx.Client(timeout=30) as http:
        answer = ask(http, new.url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


def test_worker_killed_mid_stream(stack):
    ctl, workers = stack["controller"], stack["workers"]
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", ctl.url + "/v1/chat/completions",
                         json=body(MODEL, max_tokens=400, stream=True)) as r:
            assert r.status_code == 200
            events = data_lines(r)
            assert json.loads(next(events))["choices"][0]["delta"]["content"]
            serving = [w for w, s in worker_status(ctl.url).items() if s["in_flight"] == 1]
            assert len(serving) == 1
            victim = serving[0]
            survivor = "b" if victim == "a" else "a"
            served_before = worker_status(ctl.url)[survivor]["served"]
            killed_at = time.monotonic()
            workers[victim].popen.send_signal(signal.SIGKILL)
            rest = list(events)
            ended_after = time.monotonic() - killed_at
        assert rest[-1] == "[DONE]"
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "worker_lost" and f"worker {victim}" in error["message"], rest[-2]
        assert ended_after < 2.0, f"the broken stream took {ended_after:.2f} s to end"
        assert all("error" not in json.loads(e) for e in rest[:-2])

        answer = ask(http, ctl.url)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["finish_reason"] == "length"
        assert worker_status(ctl.url)[survivor]["served"] == served_before + 1

    # Removed within the expiry of its last heartbeat (sent at most one interval before the kill), plus one sweep.
    deadline = killed_at + HEARTBEAT_S + EXPIRY_S + EXPIRY_S / 4 + 0.5
    while victim in worker_status(ctl.url) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone_after = time.monotonic() - killed_at
    assert victim not in worker_status(ctl.url), f"dead worker still registered {gone_after:.1f} s after the kill"
    assert survivor in worker_status(ctl.url)
    workers[victim].popen.wait(5)
