"""Dispatch policies: each picks one worker among candidates, skipping unhealthy and full ones, or None."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from controller.registry import WorkerRecord


class Policy(ABC):
    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    def choose(self, candidates: Sequence[WorkerRecord]) -> WorkerRecord | None:
        usable = [w for w in candidates if w.healthy and w.busy < w.max_concurrency]
        return self._pick(usable) if usable else None

    @abstractmethod
    def _pick(self, usable: Sequence[WorkerRecord]) -> WorkerRecord: ...


class ShortestQueue(Policy):
    """Least loaded relative to capacity; ties broken at random so equal workers share the load."""

    def _pick(self, usable: Sequence[WorkerRecord]) -> WorkerRecord:
        best = min(w.load for w in usable)
        return self.rng.choice([w for w in usable if w.load == best])


class Lottery(Policy):
    """Random, weighted by free capacity: bigger or idler workers win more often."""

    def _pick(self, usable: Sequence[WorkerRecord]) -> WorkerRecord:
        weights = [max(w.max_concurrency - w.busy, 0) + 1e-9 for w in usable]
        return self.rng.choices(list(usable), weights=weights, k=1)[0]


POLICIES: dict[str, type[Policy]] = {"shortest_queue": ShortestQueue, "lottery": Lottery}
