"""The registry's leases: one per request, released once, kept across re-registration and removal, and corrected
from the worker's own heartbeat count when the two disagree for longer than the grace period."""

from __future__ import annotations

from common.protocol import WorkerHeartbeat
from controller.policies import ShortestQueue
from controller.registry import Registry
from tests.support.registry_records import Clock, reg


def beat(registry: Registry, clock: Clock, worker_id: str, in_flight: int, after_s: float = 1.0) -> None:
    clock.now += after_s
    registry.heartbeat(WorkerHeartbeat(worker_id=worker_id, in_flight=in_flight))


def test_reregistration_updates_the_record_in_place():
    registry = Registry(expiry_s=10)
    rec = registry.register(reg("a", cap=2))
    lease = registry.acquire(rec)
    again = registry.register(reg("a", cap=3, url="http://127.0.0.1:2"))
    assert again is rec and (rec.max_concurrency, rec.url, rec.in_flight) == (3, "http://127.0.0.1:2", 1)
    lease.release(ok=True)
    assert rec.in_flight == 0 and rec.served == 1


def test_a_worker_removed_mid_request_comes_back_with_its_leases():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock)
    rec = registry.register(reg("a"))
    lease = registry.acquire(rec)
    clock.now += 11  # its heartbeats were late: removed while a stream still runs through us
    assert registry.expire() == ["a"] and registry.get("a") is None
    back = registry.register(reg("a"))
    assert back is rec and back.in_flight == 1
    lease.release(ok=True)
    assert back.in_flight == 0


def test_a_removed_worker_is_forgotten_once_its_last_request_ends():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock)
    lease = registry.acquire(registry.register(reg("a")))
    clock.now += 11
    registry.expire()
    lease.release(ok=False)
    registry.expire()
    fresh = registry.register(reg("a"))
    assert fresh.in_flight == 0 and fresh.failures == 0  # a new record: nothing was held for it any more


def test_stale_leases_are_dropped_after_the_grace_period():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock, grace_s=5)
    rec = registry.register(reg("a"))
    leaked, running = registry.acquire(rec), registry.acquire(rec)
    for _ in range(4):  # the worker says 1 for 4 s: within the grace period, nothing changes
        beat(registry, clock, "a", in_flight=1)
    assert rec.in_flight == 2
    for _ in range(2):
        beat(registry, clock, "a", in_flight=1)
    assert rec.in_flight == 1  # the oldest lease, which the worker no longer knows, went
    assert leaked.release(ok=True)  # its late release is harmless
    assert rec.in_flight == 1 and rec.served == 0
    running.release(ok=True)
    assert rec.in_flight == 0 and rec.served == 1


def test_requests_on_their_way_are_not_drift():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock, grace_s=5)
    rec = registry.register(reg("a"))
    held = []
    for i in range(20):  # every heartbeat sees one new request that the worker has not admitted yet
        held.append(registry.acquire(rec))
        beat(registry, clock, "a", in_flight=len(held) - 1 if i % 3 else len(held))
    assert rec.in_flight == 20


def test_load_from_other_clients_counts_once_it_persists_and_goes_at_once():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock, grace_s=5)
    a, b = registry.register(reg("a", cap=4)), registry.register(reg("b", cap=4))
    for _ in range(7):  # "a" runs 3 requests that did not come through this controller
        beat(registry, clock, "a", in_flight=3, after_s=1)
        registry.heartbeat(WorkerHeartbeat(worker_id="b", in_flight=0))
    assert a.busy == 3 and a.in_flight == 0
    assert ShortestQueue().choose([a, b]) is b
    beat(registry, clock, "a", in_flight=0)
    assert a.busy == 0
