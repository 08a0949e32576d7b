"""Start processes in their own process groups, wait until they are ready, restart the ones that die, stop them all.

Each process gets its own session (so a Ctrl-C on the terminal reaches only the launcher, which stops the rest in
order) and its log file. A process that dies is restarted after a backoff; one that keeps dying soon after its
start (`max_restarts` quick crashes in a row: a model that does not fit, a bad flag) is left stopped, and the
launcher says why. Stopping sends SIGTERM to every group, then SIGKILL to what is left after the grace period.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.health import Probe

_PR_SET_PDEATHSIG = 1


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of the launcher's environment
    health_url: str | None = None
    registers: bool = False  # a worker: ready once registered with its controller
    cwd: Path | None = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(spec: ServiceSpec, die_with_parent: bool = False) -> subprocess.Popen:
    """Start `spec` in a new session (its process group id is its pid), output appended to its log.

    die_with_parent: SIGTERM the child when the spawning thread dies (even by SIGKILL); spawn from a thread that
    lives as long as the child should (the launcher's main thread).
    """
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
    preexec = _die_with_parent if die_with_parent and sys.platform == "linux" else None
    with open(spec.log_path, "ab") as log:
        return subprocess.Popen(spec.argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_groups(popens: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM each group, wait up to `timeout_s` for all of their members, then SIGKILL what is left."""
    for p in popens:
        signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in popens:
            p.poll()  # reap the leader, or its zombie keeps the group alive
        if not any(signal_group(p.pid, 0) for p in popens):
            return
        time.sleep(0.1)
    for p in popens:
        signal_group(p.pid, signal.SIGKILL)
    for p in popens:
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


class StartupFailed(RuntimeError):
    """A process died or never became ready while the stack was starting; the message carries its log."""


@dataclass
class Service:
    spec: ServiceSpec
    popen: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None
    quick_crashes: int = 0
    restart_at: float | None = None
    given_up: bool = False
    probe: Probe | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ready(self) -> bool:
        return self.ready_after_s is not None


class Supervisor:
    def __init__(self, say: Callable[[str], None], max_restarts: int = 5, quick_crash_s: float = 60.0,
                 stop_timeout_s: float = 7.0, echo: Callable[[Service, str], None] | None = None):
        self.say = say
        self.echo = echo  # shown log lines while starting
        self.max_restarts = max_restarts
        self.quick_crash_s = quick_crash_s
        self.stop_timeout_s = stop_timeout_s
        self.services: list[Service] = []
        self._http = None  # an httpx.Client, made at the first health check (importing httpx takes a while)
        self._echo_offsets: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------ starting

    def start(self, spec: ServiceSpec) -> Service:
        if spec.log_path.exists():  # keep the previous run's log
            spec.log_path.replace(spec.log_path.with_name(spec.log_path.name + ".1"))
        service = Service(spec)
        self.services.append(service)
        self._launch(service)
        return service

    def _launch(self, service: Service) -> None:
        service.popen = spawn(service.spec, die_with_parent=True)
        service.started_at = time.monotonic()
        service.ready_after_s = None
        service.restart_at = None
        service.probe = Probe(service.spec.health_url, service.spec.registers) if service.spec.health_url else None

    def _check_ready(self, service: Service) -> str | None:
        """Marks `service` ready when its health says so; returns a lasting problem."""
        if service.probe is None:
            service.ready_after_s = time.monotonic() - service.started_at
            return None
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=2.0)
        ok, problem = service.probe.check(self._http)
        if ok:
            service.ready_after_s = time.monotonic() - service.started_at
        return problem

    def wait_ready(self, timeout_s: float, since: float, until: Callable[[], bool] = lambda: False) -> None:
        """Until every service is ready (or `until()` says to stop waiting). While starting, a death is a
        StartupFailed (no restarts: the user is watching, and the cause is usually in the command line or the
        model)."""
        deadline = time.monotonic() + timeout_s
        while not until():
            self._echo_logs()
            pending = [s for s in self.services if not s.ready]
            for s in pending:
                if s.popen.poll() is not None:
                    self._echo_logs()
                    raise StartupFailed(f"{s.name} stopped while starting ({exit_reason(s.popen.returncode)}); "
                                        f"last lines of {s.spec.log_path}:\n{tail(s.spec.log_path, 25)}")
                problem = self._check_ready(s)
                if problem:
                    raise StartupFailed(f"{s.name} is {problem}")
                if s.ready:
                    self.say(f"{s.name} ready ({time.monotonic() - since:.1f} s)")
            if all(s.ready for s in self.services):
                return
            if time.monotonic() > deadline:
                late = ", ".join(f"{s.name} (log: {s.spec.log_path})" for s in self.services if not s.ready)
                raise StartupFailed(f"not ready after {timeout_s:.0f} s: {late}")
            time.sleep(0.1)

    def _echo_logs(self) -> None:
        if self.echo is None:
            return
        for s in self.services:
            offset = self._echo_offsets.get(s.name, 0)
            try:
                with open(s.spec.log_path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk.rfind(b"\n") + 1
            self._echo_offsets[s.name] = offset + complete
            for line in chunk[:complete].decode(errors="replace").splitlines():
                self.echo(s, line)

    # ------------------------------------------------------------------------------------------------ running

    def supervise_once(self) -> bool:
        """One round of watching; False once nothing is left running or waiting to restart."""
        now = time.monotonic()
        for s in self.services:
            if s.given_up:
                continue
            if s.popen is not None and s.popen.poll() is not None:
                self._died(s, now)
            elif s.popen is None and s.restart_at is not None and now >= s.restart_at:
                self.say(f"restarting {s.name}")
                self._launch(s)
            elif s.popen is not None and not s.ready:
                problem = self._check_ready(s)
                if s.ready:
                    self.say(f"{s.name} is back (ready {s.ready_after_s:.1f} s after its restart)")
                elif problem:
                    self.say(f"warning: {s.name} is {problem}")
        return any(not s.given_up for s in self.services)

    def _died(self, s: Service, now: float) -> None:
        lived = now - s.started_at
        signal_group(s.popen.pid, signal.SIGKILL)  # whatever it started dies with it
        s.quick_crashes = s.quick_crashes + 1 if lived < self.quick_crash_s else 0
        self.say(f"{s.name} stopped unexpectedly ({exit_reason(s.popen.returncode)}, after {lived:.0f} s); "
                 f"last lines of {s.spec.log_path}:\n{tail(s.spec.log_path)}")
        s.popen = None
        s.ready_after_s = None
        if s.quick_crashes >= max(self.max_restarts, 1):
            s.given_up = True
            self.say(f"error: {s.name} died {s.quick_crashes} times in a row within {self.quick_crash_s:.0f} s "
                     "of its start; not restarting it. The cause is in the lines above (a model that does not "
                     "fit in memory, a wrong flag, a broken checkpoint); fix it and start again. The rest keeps "
                     "running.")
            return
        delay = min(30.0, 0.5 * 2 ** s.quick_crashes)
        s.restart_at = now + delay
        self.say(f"restarting {s.name} in {delay:.1f} s (quick crashes in a row: {s.quick_crashes} of "
                 f"{self.max_restarts} allowed)")

    # ------------------------------------------------------------------------------------------------ stopping

    def stop(self) -> None:
        running = [s.popen for s in self.services if s.popen is not None]
        if running:
            self.say("Stopping " + " ".join(s.name for s in self.services if s.popen is not None))
            stop_groups(running, self.stop_timeout_s)
        for s in self.services:
            s.popen = None
        if self._http is not None:
            self._http.close()
