"""The server the controller and the workers run under (common/serve.py `QuietServer`): it has no housekeeping tick.
Each wakeup of an idle process costs it CPU (~0.25 ms here); uvicorn's tick woke it ten times a second, ours once
a second, and that was still most of an idle controller's CPU (issue 26). A real controller process; a server in
this process for the stop."""

from __future__ import annotations

import email.utils
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from common.bounded_http import bounded_http
from common.serve import QuietServer
from launcher.compose import free_port
from tests.support.stack import start_controller
from tests.support.waiting import settled

WINDOW_S = 4.0


def _wakeups(pid: int) -> int:
    """How many times the process's main thread (its event loop) has gone to sleep and been woken."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def test_an_idle_controller_sleeps(log_dir):
    # (no worker: no heartbeat to take; an expiry of 600 s: its check for silent workers does not come due)
    controller = start_controller(log_dir, heartbeat_expiry_s=600.0)
    try:
        pid = controller.popen.pid
        assert "controller" in Path(f"/proc/{pid}/cmdline").read_text()
        # (from when it has gone half a second without waking: its readiness probe's connection closing is the last
        # thing it had to do; a tick every second leaves such gaps too)
        before = settled(lambda: _wakeups(pid), 0.5, 15, "an idle controller's wakeups")
        time.sleep(WINDOW_S)  # the window measured: nothing a faster or slower machine does wakes it
        woken = _wakeups(pid) - before
        assert woken <= 1, f"an idle controller woke {woken} times in {WINDOW_S:g} s"  # a tick each second: >= 4
        assert httpx.get(controller.url + "/health", timeout=5).status_code == 200  # asleep, not stuck
    finally:
        controller.stop()


def test_the_date_header_is_the_second_the_answer_was_made(log_dir):
    controller = start_controller(log_dir, heartbeat_expiry_s=600.0)
    try:
        with httpx.Client(timeout=5) as client:
            for _ in range(6):  # across several seconds: a header refreshed by a tick lags it by up to one
                made_after = int(time.time())
                date = client.get(controller.url + "/health").headers["date"]
                made_before = int(time.time())
                stamp = int(email.utils.parsedate_to_datetime(date).timestamp())
                assert made_after <= stamp <= made_before, (date, made_after, made_before)
                while int(time.time()) == made_before:  # on into the next second, at a different point of it
                    time.sleep(0.07)
    finally:
        controller.stop()


def test_should_exit_set_from_another_thread_stops_it_at_once():
    app = FastAPI()
    server = QuietServer(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False,
                                        http=bounded_http()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    server.should_exit = True  # as a test, a supervisor or an embedding app does: no signal
    thread.join(5)
    assert not thread.is_alive(), "the server did not stop"  # (no tick would ever look at the flag)
