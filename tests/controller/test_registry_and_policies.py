"""Registry bookkeeping and dispatch policies, in isolation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from common.errors import ErrorCode, ServingError
from common.protocol import WorkerHeartbeat
from controller.policies import Lottery, ShortestQueue
from controller.registry import Registry
from tests.support.registry_records import Clock, reg, take


def test_heartbeat_from_unknown_worker_asks_it_to_register():
    registry = Registry(expiry_s=10)
    with pytest.raises(ServingError) as err:
        registry.heartbeat(WorkerHeartbeat(worker_id="ghost"))
    assert err.value.code == ErrorCode.UNKNOWN_WORKER and err.value.status == 404


def test_silent_workers_expire_and_heartbeats_keep_them():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock)
    registry.register(reg("a"))
    registry.register(reg("b"))
    clock.now += 8
    registry.heartbeat(WorkerHeartbeat(worker_id="a"))
    clock.now += 5
    assert registry.expire() == ["b"]
    assert [w.worker_id for w in registry.all()] == ["a"]


def test_the_expiry_check_sleeps_until_the_first_worker_could_be_due():
    clock = Clock()
    registry = Registry(expiry_s=10, clock=clock)
    assert registry.next_expiry_in() == 10  # none yet: one registering now is due in 10 s
    registry.register(reg("a"))
    clock.now += 4
    registry.register(reg("b"))
    assert registry.next_expiry_in() == 6  # a, registered first
    clock.now += 5
    registry.heartbeat(WorkerHeartbeat(worker_id="a"))
    assert registry.next_expiry_in() == 5  # b now: a's heartbeat moved a later
    clock.now += 5
    assert registry.expire() == []  # due, not past
    clock.now += 0.01
    assert registry.expire() == ["b"] and registry.next_expiry_in() == pytest.approx(4.99)


def test_in_flight_is_exact_and_survives_re_registration():
    registry = Registry(expiry_s=10)
    rec = registry.register(reg("a"))
    first, second = take(registry, rec, 2)
    assert registry.register(reg("a")) is rec  # updated in place: the leases stay on the record dispatch reads
    assert rec.in_flight == 2
    assert first.release(ok=True) and not first.release(ok=True)  # only the first release counts
    second.release(ok=False)
    assert (rec.in_flight, rec.served, rec.failures) == (0, 1, 1)


def test_model_cards_list_each_model_once_with_its_workers():
    registry = Registry(expiry_s=10)
    registry.register(reg("a", "m1"))
    registry.register(reg("b", "m1"))
    registry.register(reg("c", "m2"))
    cards = {c.id: c.workers for c in registry.model_cards()}
    assert cards == {"m1": ["a", "b"], "m2": ["c"]}


def test_shortest_queue_picks_least_loaded_and_skips_unhealthy_and_full():
    registry = Registry(expiry_s=10)
    a, b, c = (registry.register(reg(w, cap=2)) for w in "abc")
    take(registry, a, 1)
    c.healthy = False
    policy = ShortestQueue(random.Random(0))
    assert policy.choose([a, b, c]) is b
    take(registry, b, 2)  # full
    assert policy.choose([a, b, c]) is a
    take(registry, a, 1)
    assert policy.choose([a, b, c]) is None


def test_shortest_queue_counts_reported_queue():
    registry = Registry(expiry_s=10)
    a, b = registry.register(reg("a")), registry.register(reg("b"))
    a.queued = 3
    assert ShortestQueue(random.Random(0)).choose([a, b]) is b


def test_lottery_favours_free_capacity_and_returns_none_when_all_unusable():
    registry = Registry(expiry_s=10)
    big, small = registry.register(reg("big", cap=9)), registry.register(reg("small", cap=1))
    policy = Lottery(random.Random(1))
    wins = Counter(policy.choose([big, small]).worker_id for _ in range(2000))
    assert wins["big"] > 3 * wins["small"] > 0
    big.healthy = False
    take(registry, small, 1)
    assert policy.choose([big, small]) is None
