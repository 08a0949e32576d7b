"""Worker registry: registration, heartbeats, expiry, and exact in-flight counting.

In-flight counts are the controller's own: incremented when a request is dispatched and decremented when its
stream ends, so dispatch never waits for the next heartbeat to learn that a worker got free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import ErrorCode, ServingError, excerpt
from common.protocol import ModelCard, ModelLimits, WorkerHeartbeat, WorkerRegistration, WorkerStatus


@dataclass
class WorkerRecord:
    worker_id: str
    url: str
    models: dict[str, ModelCard]
    max_concurrency: int
    last_heartbeat: float
    in_flight: int = 0
    queued: int = 0  # as last reported by the worker (its own waiting line)
    healthy: bool = True  # false after a connection failure, until the next heartbeat
    served: int = 0
    failures: int = 0
    relay_token: str = ""  # issued at registration, sent as X-Worker-Token on every relayed request

    @property
    def load(self) -> float:
        return (self.in_flight + self.queued) / self.max_concurrency


class Registry:
    def __init__(self, expiry_s: float, clock: Callable[[], float] = time.monotonic):
        self.expiry_s = expiry_s
        self._clock = clock
        self._workers: dict[str, WorkerRecord] = {}

    def register(self, reg: WorkerRegistration, relay_token: str = "") -> WorkerRecord:
        old = self._workers.get(reg.worker_id)
        rec = WorkerRecord(worker_id=reg.worker_id, url=reg.url.rstrip("/"),
                           models={m.id: m for m in reg.models}, max_concurrency=reg.max_concurrency,
                           last_heartbeat=self._clock(), relay_token=relay_token)
        if old is not None:  # re-registration keeps the counts of requests still running through us
            rec.in_flight, rec.served, rec.failures = old.in_flight, old.served, old.failures
        self._workers[reg.worker_id] = rec
        return rec

    def heartbeat(self, hb: WorkerHeartbeat) -> WorkerRecord:
        rec = self._workers.get(hb.worker_id)
        if rec is None:
            raise ServingError(ErrorCode.UNKNOWN_WORKER,
                               f"worker {excerpt(hb.worker_id)} is not registered here; register again")
        rec.last_heartbeat = self._clock()
        rec.queued = hb.queued
        rec.healthy = True
        return rec

    def remove(self, worker_id: str) -> bool:
        return self._workers.pop(worker_id, None) is not None

    def expire(self) -> list[str]:
        now = self._clock()
        gone = [w for w, r in self._workers.items() if now - r.last_heartbeat > self.expiry_s]
        for w in gone:
            del self._workers[w]
        return gone

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def all(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def serving(self, model: str) -> list[WorkerRecord]:
        return [r for r in self._workers.values() if model in r.models]

    def model_cards(self, max_body_bytes: int | None = None) -> list[ModelCard]:
        """One card per model; its limits are the tightest of its workers' (any of them may get a request) and of
        the controller's own body limit (`max_body_bytes`)."""
        cards: dict[str, ModelCard] = {}
        for rec in self._workers.values():
            for mid, card in rec.models.items():
                merged = cards.setdefault(mid, card.model_copy(update={"workers": []}))
                merged.workers.append(rec.worker_id)
                if merged.limits is not None and card.limits is not None and merged.limits != card.limits:
                    merged.limits = _tightest(merged.limits, card.limits)
        for card in cards.values():
            if card.limits is not None and max_body_bytes is not None and max_body_bytes < card.limits.max_body_bytes:
                card.limits = card.limits.model_copy(update={"max_body_bytes": max_body_bytes})
        return sorted(cards.values(), key=lambda c: c.id)

    def acquire(self, rec: WorkerRecord) -> None:
        rec.in_flight += 1

    def release(self, rec: WorkerRecord, *, ok: bool) -> None:
        rec.in_flight = max(0, rec.in_flight - 1)
        if ok:
            rec.served += 1
        else:
            rec.failures += 1

    def mark_unreachable(self, rec: WorkerRecord) -> None:
        rec.healthy = False

    def status(self) -> list[WorkerStatus]:
        now = self._clock()
        return [WorkerStatus(worker_id=r.worker_id, url=r.url, models=sorted(r.models), healthy=r.healthy,
                             in_flight=r.in_flight, max_concurrency=r.max_concurrency, queued=r.queued,
                             last_heartbeat_age_s=round(now - r.last_heartbeat, 3), served=r.served,
                             failures=r.failures)
                for r in sorted(self._workers.values(), key=lambda r: r.worker_id)]


def _tightest(a: ModelLimits, b: ModelLimits) -> ModelLimits:
    """Field by field the smaller bound (`default_num_frames` too: it must stay within every worker's limit)."""
    return ModelLimits(**{name: min(getattr(a, name), getattr(b, name)) for name in ModelLimits.model_fields})
