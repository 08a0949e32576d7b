"""The launcher keeps the stack serving when one of its processes dies, and stops all of it on SIGTERM.

Real processes throughout: `python -m launcher` starting a real controller, web UI and worker (the scripted engine
stands in for the model: these tests are about the launcher, a layer above the engine, and it is given as
`module:Class`, which the launcher passes through)."""

from __future__ import annotations

import shutil
import signal
import time

import httpx
import psutil
import pytest

from tests.support.chat_http import body
from tests.support.launched import start_launcher
from tests.support.stack import SCRIPTED, free_port, start_controller
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def chat(controller_url: str, model: str) -> httpx.Response:
    return httpx.post(controller_url + "/v1/chat/completions", timeout=30,
                      json=body(model, "hi"))


def registered(controller_url: str) -> list[dict]:
    try:
        return [w for w in httpx.get(controller_url + "/workers", timeout=2).json()["workers"] if w["healthy"]]
    except (httpx.HTTPError, ValueError):
        return []


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_checkpoint):
    ports = {"ui": free_port(), "controller": free_port(), "worker": free_port()}
    launched = start_launcher(["--model", str(demo_checkpoint), "--engine", SCRIPTED, "--port", str(ports["ui"]),
                               "--controller-port", str(ports["controller"]), "--worker-port", str(ports["worker"]),
                               "--", "--heartbeat-interval-s", "0.5"], tmp_path_factory.mktemp("logs"))
    launched.ports = ports
    launched.controller = f"http://127.0.0.1:{ports['controller']}"
    launched.model = demo_checkpoint.name
    try:
        launched.wait_ready()
        yield launched
    finally:
        launched.kill_all()


def test_a_killed_worker_is_restarted_and_serves_again(stack):
    assert chat(stack.controller, stack.model).status_code == 200
    worker = stack.child("workers")
    mark = len(stack.lines)
    worker.kill()  # SIGKILL: no unregistration, no goodbye
    took = wait_until(lambda: stack.restarted("workers", worker) and registered(stack.controller)
                      and chat(stack.controller, stack.model).status_code == 200, 30, "a new worker serving",
                      detail=lambda: stack.output, interval=0.2)
    assert stack.popen.poll() is None
    reason = stack.wait_for(r"worker-0 stopped unexpectedly \((.*?),", 5, mark).group(1)
    assert reason == "killed by SIGKILL"
    stack.wait_for(r"worker-0 is back", 10, mark)
    print(f"worker back and serving {took:.1f} s after kill -9")


def test_a_killed_controller_comes_back_and_workers_register_again(stack):
    controller = stack.child("controller")
    mark = len(stack.lines)
    controller.kill()
    wait_until(lambda: stack.restarted("controller", controller) and registered(stack.controller), 30,
               "the controller back with its worker registered", detail=lambda: stack.output, interval=0.2)
    assert chat(stack.controller, stack.model).status_code == 200
    stack.wait_for(r"controller stopped unexpectedly \(killed by SIGKILL", 5, mark)
    assert stack.popen.poll() is None


def test_the_ui_keeps_its_page_while_the_controller_restarts_and_comes_back_itself(stack):
    ui = f"http://127.0.0.1:{stack.ports['ui']}/"
    stack.child("controller").kill()
    assert httpx.get(ui, timeout=10).status_code == 200  # the UI process is not taken down with the controller
    old = stack.child("app")
    old.kill()
    wait_until(lambda: stack.restarted("app", old) and answers(ui), 60,
               "the UI back", detail=lambda: stack.output, interval=0.2)
    wait_until(lambda: registered(stack.controller), 30, "the controller back",
               detail=lambda: stack.output, interval=0.2)


def test_sigterm_stops_everything_within_10_s(stack):
    """Keep last: it stops the stack."""
    started = stack.children()
    assert {p.cmdline()[2] for p in started if len(p.cmdline()) > 2} >= {"controller", "workers", "app"}
    t0 = time.monotonic()
    stack.popen.send_signal(signal.SIGTERM)
    assert stack.popen.wait(timeout=15) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(started, timeout=max(0.1, 10 - (time.monotonic() - t0)))
    assert not alive, f"left behind: {alive}"
    assert time.monotonic() - t0 < 10
    for port in stack.ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_process_that_keeps_dying_is_given_up_with_the_reason(tmp_path, demo_checkpoint, log_dir):
    """Worker mode with an outside controller: the worker's checkpoint disappears, so every restart dies at once."""
    model = shutil.copytree(demo_checkpoint, tmp_path / "model")
    controller = start_controller(log_dir)
    launched = start_launcher(["worker", "--controller-url", controller.url, "--model", str(model), "--engine",
                               SCRIPTED, "--worker-port", str(free_port()), "--max-restarts", "2"], tmp_path / "logs")
    try:
        launched.wait_ready()
        (model / "config.json").unlink()
        launched.child("workers").kill()
        launched.wait_for(r"worker-0 died 2 times in a row .* not restarting it", 90)
        assert "cannot serve" in launched.output  # the worker's own reason, from the end of its log
        assert launched.popen.poll() is None or "nothing is left running" in launched.output
    finally:
        launched.kill_all()
        controller.stop()
