"""Readiness of the processes the launcher starts, read from their health URLs.

A worker's /health also says whether it is registered with its controller; a registration problem that persists
(wrong secret, unreachable advertised URL) is a failure, told in the controller's own words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PROBLEM_GRACE_S = 8.0  # a registration problem is allowed this long (the first attempt can race the server start)


@dataclass
class Probe:
    url: str
    registers: bool = False  # a worker: ready only once registered
    problem_since: float | None = None

    def check(self, client) -> tuple[bool, str | None]:
        """(ready, lasting problem) from one GET with `client` (an httpx.Client). Not answering yet is neither."""
        import httpx  # here, not at start-up: the launcher spawns its processes before it needs it

        try:
            r = client.get(self.url)
        except httpx.HTTPError:
            return False, None
        if r.status_code != 200:
            return False, None
        if not self.registers:
            return True, None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict) or body.get("registered") is not False:
            self.problem_since = None
            return True, None
        problem = body.get("registration_problem")
        if not problem:
            return False, None
        now = time.monotonic()
        self.problem_since = self.problem_since or now
        if now - self.problem_since > PROBLEM_GRACE_S:
            return False, f"running but cannot register with its controller: {problem}"
        return False, None

