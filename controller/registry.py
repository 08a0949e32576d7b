"""Worker registry: registration, heartbeats, expiry, and exact in-flight counting.

In-flight counts are the controller's own: each dispatched request holds a `Lease` on its worker's record, taken at
dispatch and released exactly once when the request ends, however it ends. So dispatch never waits for the next
heartbeat to learn that a worker got free, and no path can release twice or release someone else's count.

A worker's record lives as long as the worker: registering again (after a failed heartbeat) updates it in place, and
a record removed while requests still hold leases on it comes back with them if the worker registers again. The
worker's heartbeats carry its own count; where the two disagree for longer than `grace_s` the controller logs it
and corrects its own (leases the worker no longer knows are dropped, load the controller does not know about is
added), so no count drifts for ever.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import ErrorCode, ServingError, excerpt
from common.protocol import ModelCard, ModelLimits, WorkerHeartbeat, WorkerRegistration, WorkerStatus
from controller.breaker import Breaker

log = logging.getLogger(__name__)
_ids = itertools.count(1)


@dataclass(eq=False)
class Lease:
    """One request's claim on one worker's capacity."""

    record: WorkerRecord
    taken_at: float
    model: str = ""
    on_release: Callable[[], None] = lambda: None  # the registry's: capacity may have been freed
    id: int = field(default_factory=_ids.__next__)  # (the counter's own method: no Python call per lease)
    released: bool = False

    def release(self, *, ok: bool) -> bool:
        """Give the capacity back; only the first call counts. True when this call released it."""
        if self.released:
            return False
        self.released = True
        self.record.full_until = 0.0  # a slot of its own is free now
        if self.record.leases.pop(self.id, None) is not None:  # absent: dropped by a heartbeat correction
            if ok:
                self.record.served += 1
            else:
                self.record.failures += 1
        self.on_release()
        return True


@dataclass(eq=False)
class WorkerRecord:
    worker_id: str
    url: str
    models: dict[str, ModelCard]
    max_concurrency: int
    last_heartbeat: float
    leases: dict[int, Lease] = field(default_factory=dict)  # oldest first
    external: int = 0  # requests the worker reports beyond ours (other clients), once that persisted
    queued: int = 0  # as last reported by the worker (its own waiting line)
    healthy: bool = True  # false after a connection failure, until the next heartbeat
    served: int = 0
    failures: int = 0
    relay_token: str = ""  # issued at registration, sent as X-Worker-Token on every relayed request
    mismatch_since: float | None = None  # when the worker's count started to disagree with ours
    mismatch_low: int = 0  # over that time, the smallest disagreement seen (ours minus the worker's)
    mismatch_high: int = 0
    breaker: Breaker = field(default_factory=Breaker)  # benches it after failures in a row (controller/breaker.py)
    full_until: float = 0.0  # it answered 429 (full) although we counted a free slot: full until then

    def refused_as_full(self, for_s: float = 0.5) -> None:
        """It is still counting a request we already let go (its client left a moment ago): treat it as full
        until one of our requests on it ends, its next heartbeat says how busy it is, or `for_s` passed."""
        self.full_until = time.monotonic() + for_s

    @property
    def in_flight(self) -> int:
        return len(self.leases)

    @property
    def busy(self) -> int:
        """Requests the worker is running, as far as the controller knows: ours, plus others it reported."""
        counted = len(self.leases) + self.external
        if self.full_until and time.monotonic() < self.full_until:
            return max(counted, self.max_concurrency)
        return counted

    @property
    def load(self) -> float:
        return (self.busy + self.queued) / self.max_concurrency


class Registry:
    def __init__(self, expiry_s: float, clock: Callable[[], float] = time.monotonic, grace_s: float | None = None,
                 breaker_failures: int = 5, breaker_cooldown_s: float = 30.0):
        self.expiry_s = expiry_s
        self.breaker_failures, self.breaker_cooldown_s = breaker_failures, breaker_cooldown_s
        # Counts may disagree for a moment (a request on its way, a heartbeat in flight); longer is a real drift.
        self.grace_s = grace_s if grace_s is not None else max(2 * expiry_s / 3, 5.0)
        self._clock = clock
        self._workers: dict[str, WorkerRecord] = {}
        self._departed: dict[str, WorkerRecord] = {}  # removed while requests still held leases on them
        self.listeners: list[Callable[[], None]] = []  # told when capacity may have been freed (the waiting line)

    def register(self, reg: WorkerRegistration, relay_token: str = "") -> WorkerRecord:
        """New worker, or the same one again: then its record is updated in place, so the leases of requests
        running through us stay on the record that dispatch reads."""
        rec = self._workers.get(reg.worker_id) or self._departed.pop(reg.worker_id, None)
        if rec is None:
            rec = WorkerRecord(worker_id=reg.worker_id, url="", models={}, max_concurrency=1, last_heartbeat=0.0,
                               breaker=Breaker(self.breaker_failures, self.breaker_cooldown_s, self._clock))
        rec.url = reg.url.rstrip("/")
        rec.models = {m.id: m for m in reg.models}
        rec.max_concurrency = reg.max_concurrency
        rec.last_heartbeat = self._clock()
        rec.healthy = True
        rec.relay_token = relay_token  # a new token with every registration
        self._workers[reg.worker_id] = rec
        self.changed()
        return rec

    def heartbeat(self, hb: WorkerHeartbeat) -> WorkerRecord:
        rec = self._workers.get(hb.worker_id)
        if rec is None:
            raise ServingError(ErrorCode.UNKNOWN_WORKER,
                               f"worker {excerpt(hb.worker_id)} is not registered here; register again")
        now = self._clock()
        rec.last_heartbeat = now
        rec.queued = hb.queued
        rec.healthy = True
        rec.full_until = 0.0
        self._reconcile(rec, hb.in_flight, now)
        self.changed()
        return rec

    def changed(self) -> None:
        for listener in self.listeners:
            listener()

    def _reconcile(self, rec: WorkerRecord, reported: int, now: float) -> None:
        """Compare the worker's own in-flight count with our leases and correct a difference that lasted `grace_s`
        at every heartbeat (by the smallest amount seen over that time: a request on its way is not a drift)."""
        diff = len(rec.leases) - reported  # > 0: we hold leases the worker does not know; < 0: it has others
        rec.external = min(rec.external, max(-diff, 0))  # others' load goes down at once, up only after the grace
        if diff == 0:
            rec.mismatch_since = None
            return
        if rec.mismatch_since is None or (diff > 0) != (rec.mismatch_low > 0):
            rec.mismatch_since, rec.mismatch_low, rec.mismatch_high = now, diff, diff
            return
        rec.mismatch_low = min(rec.mismatch_low, diff) if diff > 0 else max(rec.mismatch_low, diff)
        if now - rec.mismatch_since < self.grace_s:
            return
        if diff > 0:
            stale = [lease for lease in rec.leases.values() if now - lease.taken_at >= self.grace_s]
            dropped = stale[:rec.mismatch_low]
            for lease in dropped:
                del rec.leases[lease.id]
            if dropped:
                log.warning("worker %s reports %d requests in flight, the controller counted %d for %.0f s: "
                            "dropped %d stale leases", rec.worker_id, reported, reported + diff,
                            now - rec.mismatch_since, len(dropped))
        else:
            rec.external = -rec.mismatch_low
            log.warning("worker %s reports %d requests in flight, %d more than it runs for this controller, for "
                        "%.0f s: counted as load", rec.worker_id, reported, rec.external, now - rec.mismatch_since)
        rec.mismatch_since = None

    def remove(self, worker_id: str) -> bool:
        rec = self._workers.pop(worker_id, None)
        if rec is not None:
            self._depart(rec)
        return rec is not None

    def next_expiry_in(self) -> float:
        """Seconds until `expire` could first remove a worker: a heartbeat only moves that later, and a worker that
        registers meanwhile is due `expiry_s` after it does."""
        if not self._workers:
            return self.expiry_s
        return min(r.last_heartbeat for r in self._workers.values()) + self.expiry_s - self._clock()

    def expire(self) -> list[str]:
        now = self._clock()
        gone = [w for w, r in self._workers.items() if now - r.last_heartbeat > self.expiry_s]
        for w in gone:
            self._depart(self._workers.pop(w))
        for w in [w for w, r in self._departed.items() if not r.leases]:
            del self._departed[w]  # its last request ended
        return gone

    def _depart(self, rec: WorkerRecord) -> None:
        rec.external, rec.queued, rec.mismatch_since = 0, 0, None
        if rec.leases:
            self._departed[rec.worker_id] = rec

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

    def acquire(self, rec: WorkerRecord, model: str = "") -> Lease:
        lease = Lease(rec, self._clock(), model, self.changed)
        rec.breaker.dispatched()
        rec.leases[lease.id] = lease
        return lease

    def running(self) -> dict[str, int]:
        """Requests running through this controller, by model (departed workers' included)."""
        counts: dict[str, int] = {}
        for rec in [*self._workers.values(), *self._departed.values()]:
            for lease in rec.leases.values():
                counts[lease.model] = counts.get(lease.model, 0) + 1
        return counts

    def mark_unreachable(self, rec: WorkerRecord) -> None:
        rec.healthy = False

    def status(self) -> list[WorkerStatus]:
        now = self._clock()
        return [WorkerStatus(worker_id=r.worker_id, url=r.url, models=sorted(r.models), healthy=r.healthy,
                             in_flight=r.in_flight, max_concurrency=r.max_concurrency, queued=r.queued,
                             last_heartbeat_age_s=round(now - r.last_heartbeat, 3), served=r.served,
                             failures=r.failures, benched=r.breaker.benched,
                             benched_for_s=round(r.breaker.cooldown_left_s(), 3) if r.breaker.benched else None)
                for r in sorted(self._workers.values(), key=lambda r: r.worker_id)]


def _tightest(a: ModelLimits, b: ModelLimits) -> ModelLimits:
    """Field by field the smaller bound (`default_num_frames` too: it must stay within every worker's limit); a
    card silent on a bound (None: `context_length` is optional) leaves it to the others."""
    def least(x, y):
        return y if x is None else x if y is None else min(x, y)

    return ModelLimits(**{name: least(getattr(a, name), getattr(b, name)) for name in ModelLimits.model_fields})
