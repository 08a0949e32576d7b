"""Wait until the services launch.sh started answer their health checks; fail fast, with the log, when one dies.

    python -m scripts.wait_healthy --service NAME URL PID LOG [--service ...] [--timeout S]

URL is the full health URL. A worker's /health also says whether it is registered with its controller; a
registration problem that persists (wrong secret, unreachable advertised URL, controller down) is reported as the
failure, in the controller's own words.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PROBLEM_GRACE_S = 8.0  # a registration problem is allowed this long (the first attempt can race the server start)


@dataclass
class Service:
    name: str
    url: str
    pid: int
    log: Path
    ready: bool = False
    problem_since: float | None = None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check(service: Service, client: httpx.Client, now: float) -> str | None:
    """None while waiting or when ready; a message when it has failed."""
    if not alive(service.pid):
        return f"{service.name} exited during startup; last lines of {service.log}:\n{tail(service.log)}"
    try:
        r = client.get(service.url)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and body.get("registered") is False:
        problem = body.get("registration_problem")
        if problem:
            service.problem_since = service.problem_since or now
            if now - service.problem_since > PROBLEM_GRACE_S:
                return f"{service.name} is running but cannot register with its controller: {problem}"
        return None
    service.ready = True
    return None


def wait(services: list[Service], timeout: float) -> str | None:
    start = time.monotonic()
    with httpx.Client(timeout=2.0) as client:
        while True:
            now = time.monotonic()
            for s in services:
                if s.ready:
                    continue
                failure = check(s, client, now)
                if failure:
                    return failure
                if s.ready:
                    print(f"  ready: {s.name} ({now - start:.1f} s)", file=sys.stderr, flush=True)
            if all(s.ready for s in services):
                return None
            if now - start > timeout:
                late = ", ".join(s.name for s in services if not s.ready)
                return (f"not healthy after {timeout:.0f} s: {late}; see "
                        + ", ".join(str(s.log) for s in services if not s.ready))
            time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.wait_healthy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", nargs=4, action="append", metavar=("NAME", "URL", "PID", "LOG"), default=[])
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    services = [Service(n, u, int(p), Path(log)) for n, u, p, log in args.service]
    failure = wait(services, args.timeout)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
