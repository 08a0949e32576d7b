"""A worker that registers again while its streams run (its heartbeat timed out) must not stay "busy" for ever.

Real processes: one controller, one scripted worker with room for 2 requests. Two streams run through the controller;
the controller is paused (SIGSTOP) for longer than the worker's heartbeat timeout, so the worker's heartbeat fails and
it registers again, as it would after any lost heartbeat in production. When both streams have ended, the
controller's count must be back to 0 and the worker must take requests again (on main it stayed at 2: the streams
released the record that registration had replaced, and every later request got 429 "at capacity").
"""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.support.chat_http import chat, open_stream, worker_status
from tests.support.stack import SCRIPTED, spawn_worker, start_controller, wait_worker
from tests.support.waiting import wait_until

MODEL = "scripted"


@pytest.fixture
def one_worker(demo_checkpoint, log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=60.0)
    worker = spawn_worker(log_dir, demo_checkpoint, ctl.url, SCRIPTED, model_name=MODEL, worker_id="w1",
                          max_concurrency=2, heartbeat_interval_s=0.5,
                          env={"SCRIPTED_TOKENS": "400", "SCRIPTED_RATE": "40"})
    try:
        wait_worker(worker, ctl.url)
        yield ctl, worker
    finally:
        for proc in (worker, ctl):
            proc.popen.send_signal(signal.SIGCONT)
            proc.kill()


def registrations(worker) -> int:
    return worker.log().count("registered with")


def test_reregistration_mid_stream_leaves_no_phantom_in_flight(one_worker):
    ctl, worker = one_worker
    with httpx.Client(timeout=60) as http:
        streams = [open_stream(http, ctl.url, MODEL, max_tokens=400) for _ in range(2)]
        assert worker_status(ctl.url)["w1"]["in_flight"] == 2
        before, mark = registrations(worker), len(worker.log())
        ctl.popen.send_signal(signal.SIGSTOP)  # the worker's heartbeat (5 s timeout) fails: it registers again
        wait_until(lambda: "unreachable" in worker.log()[mark:], 20, "the worker's heartbeat failing", interval=0.1,
                   detail=lambda: worker.log()[-2000:])
        ctl.popen.send_signal(signal.SIGCONT)
        wait_until(lambda: registrations(worker) > before, 10, "the worker registering again", interval=0.1,
                   detail=lambda: worker.log()[-2000:])
        assert worker_status(ctl.url)["w1"]["in_flight"] == 2  # both streams still run through the controller
        for s in streams:
            events = s.rest()
            assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
        assert worker_status(ctl.url)["w1"]["in_flight"] == 0
        for _ in range(3):  # room for 2: the worker is chosen again, not refused as "at capacity"
            answer = chat(http, ctl.url, MODEL)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-worker-id"] == "w1"
        assert worker_status(ctl.url)["w1"]["in_flight"] == 0
