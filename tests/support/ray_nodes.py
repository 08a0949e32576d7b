"""Ray nodes on "separate hosts" on one machine: each node in a Linux network namespace of its own, joined to the
others by a bridge in the root namespace (one /24 picked from this process's id; interface and namespace names carry
the pid, so tests of other processes may run beside these). Root and iproute2 only.

A node is killed the way a host dies: every process in its namespace gets SIGKILL, found by the namespace each
process is in (/proc/PID/ns/net), never by name: `ray stop` would end every Ray on the machine, and other sessions'
Ray nodes share its process table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
# What the launcher places on the nodes: its actors' processes (by their process titles) and the stack's processes.
OURS = ("ray::ProcessHost", "ray::Control", "-m workers", "-m controller", "-m app")
GCS_PORT = 6379
# Ray's node failure detection, quickened for tests (defaults: a 3 s period and 5 misses). Every node reads them.
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                          "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class RayHosts:
    """Namespaces `names` on one bridge; `start_head`/`start_node` run `ray start` inside one of them."""

    _made = 0  # RayHosts made by this process: each gets its own names and /24 (a deleted one lingers a moment)

    def __init__(self, names: list[str], temp_dir: Path):
        pid, n = os.getpid(), RayHosts._made
        RayHosts._made += 1
        self.tag = f"ivr{pid}{n % 10}"
        self.bridge = f"{self.tag}br"[-15:]
        net = f"10.{150 + (pid + 37 * n) % 100}.{(pid // 100) % 256}"
        self.root_ip = f"{net}.1"
        self.ns = {name: f"{self.tag}{name}" for name in names}
        self.ip = {name: f"{net}.{10 + i}" for i, name in enumerate(names)}
        self.temp_dir = temp_dir  # one Ray temp dir per test session, apart from any other Ray on the machine
        self.created_ns: list[str] = []
        self.bridge_made = False
        self.address = ""  # the head's HOST:PORT once started

    def create(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        sh("ip", "addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            sh("ip", "netns", "add", ns)
            self.created_ns.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            outer = f"{self.tag}v{i}"[-15:]
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", outer, "master", self.bridge)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def exec_argv(self, name: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[name], *argv]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **FAST_FAILURE_DETECTION, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                **(extra or {})}

    def ray_start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """`ray start` in namespace `name` (`env`: on top of ours, for every process of the node); it returns once
        the node's daemons run."""
        argv = self.exec_argv(name, RAY, "start", "--node-ip-address", self.ip[name], "--temp-dir",
                              str(self.temp_dir), "--disable-usage-stats", *args)
        r = subprocess.run(argv, env=self.env(env), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start in {name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def start_head(self, name: str, *args: str, env: dict[str, str] | None = None) -> str:
        self.ray_start(name, "--head", "--port", str(GCS_PORT), "--include-dashboard", "false", *args, env=env)
        self.address = f"{self.ip[name]}:{GCS_PORT}"
        return self.address

    def start_node(self, name: str, head: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.ray_start(name, "--address", head, *args, env=env)

    def pids(self, name: str) -> list[int]:
        """Every process whose network namespace is `name`'s."""
        want = netns_inode(f"/run/netns/{self.ns[name]}")
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and want is not None and netns_inode(f"/proc/{entry}/ns/net") == want:
                found.append(int(entry))
        return found

    def kill_node(self, name: str) -> int:
        """SIGKILL everything in `name`'s namespace, as when its host loses power; how many processes."""
        pids = self.pids(name)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def wait_empty(self, name: str, timeout: float) -> list[int]:
        """The processes still in `name`'s namespace after `timeout` (none, normally)."""
        deadline = time.monotonic() + timeout
        while (left := self.pids(name)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def ours_left(self) -> list[str]:
        """Processes the launcher placed that still run, on any node."""
        left = []
        for name in self.ns:
            for pid in self.pids(name):
                try:
                    cmd = " ".join(psutil.Process(pid).cmdline())
                except psutil.NoSuchProcess:
                    continue
                if any(mark in cmd for mark in OURS):
                    left.append(f"{name}: {pid} {cmd[:120]}")
        return left

    def placement_groups_left(self, head: str = "head") -> list[str]:
        """Names of the cluster's placement groups not removed, asked of Ray from node `head`."""
        code = ("import json, ray; from ray.util import placement_group_table as t\n"
                f"ray.init(address='{self.address}', logging_level='error', log_to_driver=False)\n"
                "print(json.dumps([v['name'] for v in t().values() if v['state'] != 'REMOVED']))")
        r = subprocess.run(self.exec_argv(head, sys.executable, "-c", code), capture_output=True, text=True,
                           timeout=60, env=self.env())
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    def destroy(self) -> None:
        for name in self.ns:
            if self.ns[name] in self.created_ns:
                self.kill_node(name)
        for ns in self.created_ns:
            with suppress(subprocess.CalledProcessError):
                sh("ip", "netns", "del", ns)
        if self.bridge_made:
            with suppress(subprocess.CalledProcessError):
                sh("ip", "link", "del", self.bridge)
