"""The affinity policy in isolation: conversations stay on their worker, move little when workers join or leave, and
move when their worker is too loaded."""

from __future__ import annotations

import random
from collections import Counter

from controller.policies import Affinity, Conversation
from controller.registry import Registry
from tests.support.registry_records import reg, take


def later(key: str) -> Conversation:
    return Conversation(key)


def workers(registry: Registry, names: str, cap: int = 8):
    return [registry.register(reg(w, cap=cap)) for w in names]


def test_turns_of_a_conversation_stay_on_one_worker_and_conversations_spread():
    registry = Registry(expiry_s=10)
    pool = workers(registry, "abc")
    policy = Affinity(random.Random(0))
    first = {k: policy.choose(pool, later(k)).worker_id for k in (f"c{i}" for i in range(300))}
    for _ in range(3):  # later turns
        assert {k: policy.choose(pool, later(k)).worker_id for k in first} == first
    spread = Counter(first.values())
    assert set(spread) == {"a", "b", "c"} and max(spread.values()) < 1.3 * 100, spread


def test_a_new_controller_agrees_with_the_old_one():
    # Rendezvous: the choice of a conversation never seen depends only on its key and the workers (a restarted
    # controller, or a second one, sends it where the first one did).
    registry = Registry(expiry_s=10)
    pool = workers(registry, "abcd")
    one, two = Affinity(random.Random(1)), Affinity(random.Random(2))
    keys = [f"k{i}" for i in range(200)]
    assert [one.choose(pool, later(k)) for k in keys] == [two.choose(pool, later(k)) for k in keys]


def test_joining_and_leaving_move_few_conversations():
    registry = Registry(expiry_s=10)
    pool = workers(registry, "abc")
    keys = [f"k{i}" for i in range(600)]
    before = {k: Affinity().choose(pool, later(k)).worker_id for k in keys}
    grown = pool + workers(registry, "d")
    # A fresh policy (no memory): only the rendezvous hash decides, so this is the worst case.
    after = {k: Affinity().choose(grown, later(k)).worker_id for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "d" for k in moved)  # only to the new worker
    assert 0.15 * len(keys) < len(moved) < 0.35 * len(keys)  # about a quarter (1/4 of the keys win "d")
    shrunk = [w for w in pool if w.worker_id != "b"]
    after = {k: Affinity().choose(shrunk, later(k)).worker_id for k in keys}
    assert [k for k in keys if after[k] != before[k]] == [k for k in keys if before[k] == "b"]
    # With memory, a conversation stays where it was even when a worker joins.
    policy = Affinity()
    remembered = {k: policy.choose(pool, later(k)).worker_id for k in keys}
    assert {k: policy.choose(grown, later(k)).worker_id for k in keys} == remembered


def test_an_overloaded_worker_gives_its_conversation_to_the_least_loaded_and_it_stays_there():
    registry = Registry(expiry_s=10)
    pool = workers(registry, "ab")
    policy = Affinity(random.Random(0), max_excess=2)
    key = next(k for k in (f"k{i}" for i in range(100)) if policy.choose(pool, later(k)).worker_id == "a")
    take(registry, pool[0], 2)  # a: 2 more than b: still within the bound
    assert policy.choose(pool, later(key)).worker_id == "a"
    take(registry, pool[0], 1)  # 3 more: over it
    assert policy.choose(pool, later(key)).worker_id == "b"
    for lease in list(pool[0].leases.values()):
        lease.release(ok=True)
    assert policy.choose(pool, later(key)).worker_id == "b"  # moved for good: its caches are on b now


def test_waiting_requests_count_as_load_and_full_or_unhealthy_workers_are_skipped():
    registry = Registry(expiry_s=10)
    a, b = workers(registry, "ab", cap=2)
    policy = Affinity(random.Random(0), max_excess=1)
    key = next(k for k in (f"k{i}" for i in range(100)) if policy.choose([a, b], later(k)) is a)
    a.queued = 2  # the engine's own waiting line
    assert policy.choose([a, b], later(key)) is b
    key = next(k for k in (f"k{i}" for i in range(100, 200)) if Affinity().choose([a, b], later(k)) is a)
    a.queued = 0
    take(registry, a, 2)  # full
    assert policy.choose([a, b], later(key)) is b
    a.healthy = False
    assert policy.choose([a], later(key)) is None


def test_a_first_turn_goes_to_the_least_loaded_and_its_next_turns_follow_it():
    registry = Registry(expiry_s=10)
    a, b, c = workers(registry, "abc")
    take(registry, a, 1)
    take(registry, c, 1)
    policy = Affinity(random.Random(0))
    for i in range(20):  # whatever their hash says
        assert policy.choose([a, b, c], Conversation(f"k{i}", first_turn=True)) is b
        assert policy.choose([a, b, c], later(f"k{i}")) is b


def test_requests_without_a_key_go_to_the_least_loaded():
    registry = Registry(expiry_s=10)
    a, b = workers(registry, "ab")
    take(registry, a, 1)
    assert all(Affinity(random.Random(s)).choose([a, b]) is b for s in range(10))


def test_memory_is_bounded():
    registry = Registry(expiry_s=10)
    pool = workers(registry, "ab")
    policy = Affinity(remember=50)
    for i in range(500):
        policy.choose(pool, later(f"k{i}"))
    assert len(policy._last) == 50


def test_the_least_recently_seen_conversation_is_forgotten_first():
    registry = Registry(expiry_s=10)
    pool = workers(registry, "ab")
    policy = Affinity(remember=2)
    for key in ("k0", "k1", "k0", "k2"):  # k0 seen again after k1: k1 is the one forgotten
        policy.choose(pool, later(key))
    assert policy.preferred(later("k1")) is None
    assert policy.preferred(later("k0")) is not None and policy.preferred(later("k2")) is not None
