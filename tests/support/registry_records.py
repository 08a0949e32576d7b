"""Registrations and a hand-set clock for the tests of the controller's registry, policies, queue and breaker
(no network: the URLs lead nowhere)."""

from __future__ import annotations

from common.protocol import ModelCard, WorkerRegistration
from controller.registry import Registry


class Clock:
    """A time source the test moves by hand (`clock.now += 5`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reg(worker_id: str, model: str = "m", cap: int = 4, url: str | None = None) -> WorkerRegistration:
    return WorkerRegistration(worker_id=worker_id, url=url or f"http://127.0.0.1:1/{worker_id}",
                              models=[ModelCard(id=model)], max_concurrency=cap)


def take(registry: Registry, rec, n: int) -> list:
    """`n` leases on `rec`, as `n` dispatched requests would hold."""
    return [registry.acquire(rec) for _ in range(n)]
