"""A client that leaves while its body is on the way, or before its answer, is a 499: counted as such, one info line
in the access log, no error and no traceback (error counts and alerts must not see it), on every route of the
controller and the worker that reads a body. Real processes on loopback, raw sockets."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.raw_http import LeavingClient, connect
from tests.support.stack import SCRIPTED, Proc, start_controller, start_worker

KEY = "metrics-key"  # the worker's own key, to read its /metrics


@pytest.fixture(scope="module")
def servers(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, api_keys=[KEY],
                          env={"SCRIPTED_HANG_FIRST_S": "30"})  # no answer comes: the client leaves before it
    try:
        yield {"controller": controller, "worker": worker}
    finally:
        worker.stop()
        controller.stop()


BODY_ROUTES = [("controller", "/v1/chat/completions"), ("controller", "/workers/register"),
               ("controller", "/workers/heartbeat"), ("controller", "/workers/unregister"),
               ("worker", "/v1/chat/completions")]


def _counted_499(proc: Proc, path: str) -> float:
    text = httpx.get(proc.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for line in text.splitlines():
        if line.startswith("internvl_http_requests_total{") and f'route="{path}"' in line and 'status="499"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _assert_one_quiet_499(proc: Proc, path: str, mark: int, counted_before: float) -> None:
    """The request is counted as a 499 (metrics see every route; the access log leaves out heartbeats), and nothing
    else is said about it: no error, no traceback."""
    deadline = time.monotonic() + 10
    while _counted_499(proc, path) < counted_before + 1:
        assert time.monotonic() < deadline, f"no 499 counted for {path}:\n{proc.log()[mark:][-3000:]}"
        time.sleep(0.05)
    log = proc.log()[mark:]
    assert "Traceback" not in log and "level=error" not in log and "level=warning" not in log, log[-3000:]
    if path != "/workers/heartbeat":
        access = [line for line in log.splitlines() if "internvl.access" in line and f'"POST {path} ' in line]
        assert len(access) == 1 and "status=499" in access[0] and "level=info" in access[0], log[-3000:]


@pytest.mark.parametrize(("name", "path"), BODY_ROUTES)
def test_leaving_during_the_body_is_a_quiet_499(servers, name, path):
    proc = servers[name]
    mark, counted = len(proc.log()), _counted_499(proc, path)
    sock = connect(proc.url)
    # the audit's case: 100,000 bytes declared, 40 sent, then the connection closed (heartbeats take 64 KiB: at
    # 100,000 they are refused with 413 before the body)
    declared = 60_000 if path in ("/workers/heartbeat", "/workers/unregister") else 100_000
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {KEY}\r\nContent-Length: {declared}\r\n\r\n".encode()
                 + b'{"model": "x", "messages": [{"role": "u')
    time.sleep(0.2)  # the server is reading the body when the client goes
    sock.close()
    _assert_one_quiet_499(proc, path, mark, counted)


@pytest.mark.parametrize("name", ["controller", "worker"])
def test_leaving_before_the_answer_is_a_quiet_499(servers, name):
    proc, worker = servers[name], servers["worker"]
    model = httpx.get(servers["controller"].url + "/v1/models").json()["data"][0]["id"]
    mark, worker_mark = len(proc.log()), len(worker.log())
    counted = _counted_499(proc, "/v1/chat/completions")
    client = LeavingClient(proc.url, "/v1/chat/completions",
                           {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                           headers={"Authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + 10
    while "admitted as" not in worker.log()[worker_mark:]:  # the worker is generating: no answer yet
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.05)
    client.close()
    _assert_one_quiet_499(proc, "/v1/chat/completions", mark, counted)
