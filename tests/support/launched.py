"""Run the launcher (`python -m launcher` or `./launch.sh`) as a real subprocess and follow what it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from launcher.compose import ROOT


class Launched:
    def __init__(self, popen: subprocess.Popen, log_dir: Path):
        self.popen, self.log_dir = popen, log_dir
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                       for p in sorted(self.log_dir.glob("*.log")))

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """The first line (from line `start` on) matching `pattern`; AssertionError with the output when late."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            for line in self.lines[start:]:
                if m := regex.search(line):
                    return m
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the launcher's output (exit {self.popen.poll()}):\n"
                                     f"{self.output}{self.logs()}")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the whole ready block is printed (launcher/main.py `ready_block`: its last line says restarts)."""
        self.wait_for(r"^==> Ready", timeout)
        self.wait_for(r"^\s+\(crashed processes are restarted", 10)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def find(self, module: str) -> psutil.Process | None:
        """The running process started as `python -m MODULE`, if any."""
        for p in self.children():
            try:
                if p.cmdline()[1:3] == ["-m", module] and p.status() != psutil.STATUS_ZOMBIE:
                    return p
            except psutil.NoSuchProcess:
                continue
        return None

    def child(self, module: str) -> psutil.Process:
        found = self.find(module)
        assert found is not None, f"no '-m {module}' process among the launcher's children:\n{self.output}"
        return found

    def restarted(self, module: str, old: psutil.Process) -> bool:
        found = self.find(module)
        return found is not None and found.pid != old.pid

    def kill_all(self) -> None:
        """Clean-up whatever happened in the test."""
        for p in self.children():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


def start_launcher(args: list[str], log_dir: Path, env: dict | None = None, script: bool = False,
                   cwd: Path = ROOT, wrap: list[str] | None = None) -> Launched:
    """`python -m launcher ARGS --log-dir LOG_DIR` (or `./launch.sh` in `cwd`), output captured line by line;
    `wrap` goes before it (e.g. `ip netns exec NS`)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if script:
        full_env["INTERNVL_VENV"] = sys.prefix
        cmd = ["./launch.sh", *args, "--log-dir", str(log_dir)]
    else:
        full_env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-m", "launcher", *args, "--log-dir", str(log_dir)]
    if "--" in args:  # the log dir belongs before the worker arguments
        cut = cmd.index("--")
        cmd = cmd[:cut] + ["--log-dir", str(log_dir)] + cmd[cut:-2]
    popen = subprocess.Popen([*(wrap or []), *cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    return Launched(popen, log_dir)
