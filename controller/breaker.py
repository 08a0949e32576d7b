"""A circuit breaker per worker: a worker that keeps failing before its first token is benched for a while.

A worker can stay registered and answer every heartbeat while failing every request (a broken GPU, a bad
checkpoint); without a breaker each request would pay a failed attempt on it before failing over. After `threshold`
failures in a row (errors or timeouts before the first token; a busy answer is not a failure) it gets no requests
for `cooldown_s`; then one trial request: a first token closes the breaker, a failure benches the worker again.
Heartbeats and registering again do not change it: only a request can show that the worker answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self.failures = 0  # in a row, before the first token
        self.opened_at: float | None = None  # when it was benched; None: closed
        self.trial = False  # the one trial request after the cool-down is out

    @property
    def benched(self) -> bool:
        return self.opened_at is not None

    def cooldown_left_s(self) -> float:
        return max(self.opened_at + self.cooldown_s - self._clock(), 0.0) if self.opened_at is not None else 0.0

    def admits(self) -> bool:
        """Whether the worker may get a request now."""
        return self.opened_at is None or (not self.trial and self.cooldown_left_s() == 0.0)

    def dispatched(self) -> None:
        """A request was given to the worker: past the cool-down, it is the trial."""
        if self.opened_at is not None:
            self.trial = True

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failed(self) -> bool:
        """Count a failure before the first token; True when it benches the worker (again)."""
        self.failures += 1
        if self.trial or (self.threshold and self.failures >= self.threshold and self.opened_at is None):
            self.opened_at, self.trial = self._clock(), False
            return True
        return False

    def no_verdict(self) -> None:
        """The request ended without showing anything (its client left, the worker was busy): a trial may go again."""
        self.trial = False
