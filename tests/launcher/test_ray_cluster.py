"""`./launch.sh --ray`: the stack placed and kept alive on a Ray cluster of three nodes on this machine, each node in
a network namespace of its own with its own address (tests/support/ray_nodes.py): the head (no GPU: the controller
and the web UI), and nodes a and b declaring two logical GPUs each (`ray start --num-gpus 2`). The launcher runs on
the head, as a user runs it. Real processes throughout; the workers serve the demo checkpoint, with the scripted
engine standing in for the model where streams must last a set time (these tests are about placement and restarts,
layers above the engine; Ray's "GPUs" here are logical, so a worker on one runs on the CPU unchanged).

- `--cpu --workers 1`, then `./launch.sh scale 2` and `scale 1`: demo workers of the real transformers engine on the
  worker nodes, answering through the controller; quick crashes in a row leave a worker stopped with the reason; the
  registration secret shows nowhere; a launcher killed outright (SIGKILL) leaves nothing behind either.
- Two GPU workers under steady chat load; node b dies (every process in its namespace killed by pid): its in-flight
  streams end with an error event, every new chat is served by node a's worker, and b's worker comes back on node a's
  free GPU, registered and serving, within BACK_WITHIN_S; the launcher's stop leaves no actor, process or placement
  group of ours on any node.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.chat_http import body, data_lines, worker_status
from tests.support.launched import Launched, start_launcher
from tests.support.netns import create_or_skip
from tests.support.ray_nodes import OURS, RayHosts
from tests.support.stack import ROOT, SCRIPTED
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

CONTROLLER_PORT = 21001
WORKER_PORT = 21002
BACK_WITHIN_S = 30.0  # node death -> its worker registered and serving on the other GPU node
STREAM_TOKENS, STREAM_RATE = 60, 30  # a 2 s stream
SECRET = "ray-test-registration-secret-4a7c"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    hosts = RayHosts(["head", "a", "b"], Path(f"/tmp/ivr{os.getpid()}"))  # short: Ray's socket paths are bounded
    create_or_skip(hosts)
    scripted = {"SCRIPTED_TOKENS": str(STREAM_TOKENS), "SCRIPTED_RATE": str(STREAM_RATE)}
    try:
        head = hosts.start_head("head", "--num-cpus", "2", "--num-gpus", "0", env=scripted)
        for node in ("a", "b"):
            hosts.start_node(node, head, "--num-cpus", "2", "--num-gpus", "2", env=scripted)
        hosts.node_env = scripted
        yield hosts
    finally:
        hosts.destroy()
        subprocess.run(["rm", "-rf", str(hosts.temp_dir)], check=False)


def launch(cluster: RayHosts, args: list[str], log_dir: Path, env: dict | None = None) -> Launched:
    return start_launcher(["--ray", cluster.address, "--controller-port", str(CONTROLLER_PORT), "--worker-port",
                           str(WORKER_PORT), *args], log_dir, env=env, wrap=cluster.exec_argv("head"))


def controller_url(cluster: RayHosts) -> str:
    return f"http://{cluster.ip['head']}:{CONTROLLER_PORT}"


def healthy_urls(url: str) -> set[str]:
    try:
        return {w["url"] for w in worker_status(url).values() if w["healthy"]}
    except (httpx.HTTPError, ValueError):
        return set()


def stop_and_check_clean(cluster: RayHosts, launched: Launched) -> None:
    launched.popen.send_signal(signal.SIGTERM)
    try:
        launched.popen.wait(40)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the launcher did not stop within 40 s:\n{launched.output}") from None
    deadline = time.monotonic() + 15
    while (left := cluster.ours_left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left running after the launcher's stop: {left}\n{launched.output}"
    assert cluster.placement_groups_left() == []


def worker_pid(cluster: RayHosts, node: str) -> int | None:
    for pid in cluster.pids(node):
        try:
            process = psutil.Process(pid)
            if process.cmdline()[1:3] == ["-m", "workers"] and process.status() != psutil.STATUS_ZOMBIE:
                return pid
        except psutil.NoSuchProcess:
            continue
    return None


def secret_shown(cluster: RayHosts, log_dir: Path) -> list[str]:
    """Where SECRET can be read by others: command lines on any node, Ray's logs, the stack's logs."""
    found = []
    for name in cluster.ns:
        for pid in cluster.pids(name):
            try:
                if SECRET in " ".join(psutil.Process(pid).cmdline()):
                    found.append(f"command line of {pid} on {name}")
            except psutil.NoSuchProcess:
                continue
    for folder in (cluster.temp_dir, log_dir):
        for path in folder.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and SECRET.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def scale(cluster: RayHosts, workers: int) -> str:
    r = subprocess.run(cluster.exec_argv("head", sys.executable, "-m", "launcher", "scale", str(workers), "--ray",
                                         cluster.address), capture_output=True, text=True, timeout=120,
                       env={**cluster.env(), "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_cpu_workers_are_placed_on_the_cluster_answer_and_scale(cluster, demo_checkpoint, tmp_path):
    launched = launch(cluster, ["--model", str(demo_checkpoint), "--cpu", "--workers", "1", "--max-restarts", "2"],
                      tmp_path, env={"INTERNVL_REGISTRATION_SECRET": SECRET})
    try:
        launched.wait_ready(timeout=150)
        url = controller_url(cluster)
        out = launched.output
        assert re.search(rf"node {re.escape(cluster.ip['head'])}: controller \(http://", out), out
        assert f"the controller listens on {url} (workers on other nodes reach it there): without --api-key" in out
        worker_node = re.search(r"node (\S+): worker-0 \(CPU\)", out).group(1)
        assert worker_node in (cluster.ip["a"], cluster.ip["b"]), out  # workers go to the worker nodes first
        r = httpx.post(url + "/v1/chat/completions", timeout=60,
                       json=body(demo_checkpoint.name, max_tokens=5))
        assert r.status_code == 200, r.text
        assert r.headers["x-worker-id"].endswith(str(WORKER_PORT))
        for args, error in ((["--ray-controller-resource", "gpu-box-1"], "no node of the Ray cluster has the "
                             "resource 'gpu-box-1'"), ([], "another launcher already runs on this Ray cluster")):
            second = subprocess.run(cluster.exec_argv("head", sys.executable, "-m", "launcher", "--ray",
                                                      cluster.address, "--cpu", "--log-dir", str(tmp_path / "2"),
                                                      *args), capture_output=True, text=True, timeout=120,
                                    env={**cluster.env(), "PYTHONPATH": str(ROOT)})
            assert second.returncode == 1 and error in second.stderr, second.stdout + second.stderr
        assert "worker-1" in scale(cluster, 2)
        other = cluster.ip["b"] if worker_node == cluster.ip["a"] else cluster.ip["a"]
        wait_until(lambda: f"http://{other}:{WORKER_PORT + 1}" in healthy_urls(url), 90, "worker-1 registered",
                   detail=lambda: launched.output, interval=0.2)
        scale(cluster, 1)
        wait_until(lambda: healthy_urls(url) == {f"http://{worker_node}:{WORKER_PORT}"}, 30,
                   "worker-1 gone from the controller", detail=lambda: launched.output, interval=0.2)
        assert secret_shown(cluster, tmp_path) == []
        running = " ".join(cluster.ours_left())
        assert all(mark in running for mark in OURS), running  # what the kill at the end must end
        # Quick crashes in a row (--max-restarts 2): restarted once, then left stopped with the reason.
        node = next(n for n, ip in cluster.ip.items() if ip == worker_node)
        first = worker_pid(cluster, node)
        os.kill(first, signal.SIGKILL)
        launched.wait_for(r"restarting worker-0 in", 20)
        wait_until(lambda: worker_pid(cluster, node) not in (None, first), 20, "worker-0 restarted",
                   detail=lambda: launched.output, interval=0.2)
        os.kill(worker_pid(cluster, node), signal.SIGKILL)
        launched.wait_for(r"error: worker-0 on node .* is left stopped: worker-0 was given up after 2 quick crashes",
                          30)
        assert "died 2 times in a row" in launched.output
        assert launched.popen.poll() is None  # the controller and the UI keep running
        # Killed outright (no chance to clean up): Ray ends the actors and placement groups its driver owned, and
        # each process gets SIGTERM when its actor goes. (The other test stops the launcher with SIGTERM.)
        os.kill(launched.popen.pid, signal.SIGKILL)  # `ip netns exec` execs the launcher: this is its pid
        launched.popen.wait(10)
        deadline = time.monotonic() + 30
        while (left := cluster.ours_left()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"left running after the launcher was killed: {left}"
        assert cluster.placement_groups_left() == []
    finally:
        launched.kill_all()


@dataclass
class Chat:
    started: float
    worker: str = ""
    ended: float = 0.0
    error: dict | None = None
    status: int = 0


def chat_load(url: str, model: str, stop: threading.Event, chats: list[Chat], lanes: int = 3) -> list:
    """`lanes` clients, each streaming one new chat after another until `stop` (each its own conversation: the
    controller keeps a conversation on its worker, and this load is about spreading)."""
    def lane(number: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                chat = Chat(time.monotonic())
                chats.append(chat)
                text = f"lane {number}, chat {len(chats)}"
                try:
                    with http.stream("POST", url + "/v1/chat/completions",
                                     json=body(model, text, max_tokens=STREAM_TOKENS, stream=True)) as r:
                        chat.status, chat.worker = r.status_code, r.headers.get("x-worker-id", "")
                        for line in data_lines(r):
                            if line != "[DONE]" and "error" in (event := json.loads(line)):
                                chat.error = event["error"]
                except httpx.HTTPError as exc:
                    chat.error = {"code": type(exc).__name__}
                chat.ended = time.monotonic()

    pool = concurrent.futures.ThreadPoolExecutor(lanes)
    return [pool.submit(lane, number) for number in range(lanes)]


def test_node_death_worker_comes_back_on_the_other_gpu_node(cluster, demo_checkpoint, tmp_path):
    # --tp auto: the GPUs' memory is asked of a GPU node (no nvidia-smi there: logical GPUs, tp 1)
    launched = launch(cluster, ["--model", str(demo_checkpoint), "--engine", SCRIPTED, "--workers", "2",
                                "--", "--heartbeat-interval-s", "0.5"], tmp_path)
    stop = threading.Event()
    try:
        launched.wait_ready(timeout=150)
        out = launched.output
        a, b = cluster.ip["a"], cluster.ip["b"]
        assert "2 worker(s), tp 1" in out
        assert re.search(rf"node {re.escape(a)}: worker-\d \(GPUs 0\)", out), out  # one worker per GPU node
        assert re.search(rf"node {re.escape(b)}: worker-\d \(GPUs 0\)", out), out
        url = controller_url(cluster)
        status = worker_status(url)
        on_b = next(w for w in status.values() if f"//{b}:" in w["url"])
        port_b = on_b["url"].rsplit(":", 1)[1]
        chats: list[Chat] = []
        lanes = chat_load(url, demo_checkpoint.name, stop, chats)
        wait_until(lambda: any(c.worker == on_b["worker_id"] and not c.ended for c in chats), 20,
                   "a stream on node b", detail=lambda: launched.output, interval=0.2)
        killed_at = time.monotonic()
        assert cluster.kill_node("b") > 0
        back_after = wait_until(lambda: f"http://{a}:{port_b}" in healthy_urls(url), BACK_WITHIN_S,
                                "node b's worker serving again on node a", detail=lambda: launched.output, interval=0.2)
        # Served by it: a chat with both workers busy (three lanes) reaches it soon.
        wait_until(lambda: any(c.started > killed_at + back_after and c.ended and not c.error
                               and c.worker == on_b["worker_id"] for c in chats), 20,
                   "a chat served by the re-placed worker", detail=lambda: launched.output, interval=0.2)
        stop.set()
        for lane in lanes:
            lane.result(timeout=60)
        served = min(c.ended for c in chats if c.started > killed_at + back_after and c.ended and not c.error
                     and c.worker == on_b["worker_id"])
        print(f"node b killed -> its worker registered on node a after {back_after:.1f} s, its first answer there "
              f"complete after {served - killed_at:.1f} s (a {STREAM_TOKENS / STREAM_RATE:.0f} s stream)")
        cut = [c for c in chats if c.started < killed_at < (c.ended or 1e18) and c.worker == on_b["worker_id"]]
        assert cut and all(c.error and c.error.get("code") in ("worker_lost", "worker_timeout") for c in cut), cut
        later = [c for c in chats if c.started > killed_at]
        assert later and all(c.status == 200 and not c.error for c in later), [c for c in later if c.error]
        launched.wait_for(rf"worker-\d placed again by Ray: node {re.escape(a)}, GPUs 1", 5)
        # A third worker finds no free GPU: it waits, and takes a node that joins (b again, as a new Ray node).
        assert "node (none yet): worker-2 (waiting for free resources)" in scale(cluster, 3)
        cluster.start_node("b", cluster.address, "--num-cpus", "2", "--num-gpus", "2", env=cluster.node_env)
        wait_until(lambda: f"http://{b}:{WORKER_PORT + 2}" in healthy_urls(url), 60, "worker-2 on the new node b",
                   detail=lambda: launched.output, interval=0.2)
        stop_and_check_clean(cluster, launched)
    finally:
        stop.set()
        launched.kill_all()

