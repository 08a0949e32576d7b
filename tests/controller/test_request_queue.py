"""The waiting line in isolation: clients take turns, each client's requests keep their order, places in line are
told as they will be served, and a request that leaves gives back a worker taken for it."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import ErrorCode, ServingError
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.request_queue import RequestQueue
from tests.support.registry_records import Clock, reg


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_clients_take_turns_and_each_keeps_its_order():
    registry = Registry(expiry_s=60)
    worker = registry.register(reg("w", cap=1))
    queue = RequestQueue(registry, ShortestQueue(), size=10, timeout_s=30)
    held = registry.acquire(worker, "m")
    order: list[str] = []

    async def request(client: str, rid: str) -> None:
        _, lease = await queue.take("m", None, client, rid)
        order.append(rid)
        await asyncio.sleep(0)
        lease.release(ok=True)

    tasks = []
    for client, rid in [("A", "a1"), ("A", "a2"), ("A", "a3"), ("B", "b1"), ("C", "c1"), ("B", "b2")]:
        tasks.append(asyncio.create_task(request(client, rid)))
        await settle()
    assert queue.waiting("m") == 6
    places = {rid: queue.position(rid)[1] for rid in ("a1", "a2", "a3", "b1", "b2", "c1")}
    assert places == {"a1": 1, "b1": 2, "c1": 3, "a2": 4, "b2": 5, "a3": 6}
    assert queue.position("nobody") is None
    held.release(ok=True)
    await asyncio.gather(*tasks)
    assert order == sorted(places, key=places.get)
    assert queue.waiting("m") == 0 and worker.in_flight == 0


async def test_full_line_and_timeout_are_told_apart_and_leaving_returns_the_worker():
    registry = Registry(expiry_s=60)
    worker = registry.register(reg("w", cap=1))
    waits: list[float] = []
    queue = RequestQueue(registry, ShortestQueue(), size=1, timeout_s=0.2, observe_wait=waits.append)
    held = registry.acquire(worker, "m")
    waiting = asyncio.create_task(queue.take("m", None, "A", "r1"))
    await settle()
    with pytest.raises(ServingError) as full:
        await queue.take("m", None, "B", "r2")
    assert full.value.code == ErrorCode.QUEUE_FULL and full.value.status == 429 and full.value.retry_after_s >= 1
    with pytest.raises(ServingError) as late:
        await waiting
    assert late.value.code == ErrorCode.QUEUE_TIMEOUT and late.value.retry_after_s >= 1
    assert queue.waiting("m") == 0 and len(waits) == 1 and waits[0] >= 0.2

    # Granted and cancelled in the same instant: the lease taken for it goes back.
    leaving = asyncio.create_task(queue.take("m", None, "A", "r3"))
    await settle()
    held.release(ok=True)  # grants r3 a lease on w ...
    leaving.cancel()  # ... but its client left before it ran
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert worker.in_flight == 0 and queue.waiting("m") == 0


async def test_no_line_without_a_busy_worker_or_with_size_zero():
    registry = Registry(expiry_s=60)
    worker = registry.register(reg("w", cap=1))
    worker.healthy = False
    assert await RequestQueue(registry, ShortestQueue(), size=5, timeout_s=1).take("m", None, "A", "r") is None
    worker.healthy = True
    registry.acquire(worker, "m")
    assert await RequestQueue(registry, ShortestQueue(), size=0, timeout_s=1).take("m", None, "A", "r") is None


async def test_a_waiter_waits_for_its_own_worker_while_others_can_use_the_free_one():
    from controller.policies import Affinity, Conversation

    registry = Registry(expiry_s=60)
    a, b = registry.register(reg("a", cap=1)), registry.register(reg("b", cap=1))
    policy = Affinity()
    x, y = Conversation("x"), Conversation("y")
    policy._last.update({"x": "a", "y": "b"})  # earlier turns: x on a, y on b
    queue = RequestQueue(registry, policy, size=10, timeout_s=30)
    on_a, on_b = registry.acquire(a, "m"), registry.acquire(b, "m")
    got_x = asyncio.create_task(queue.take("m", x, "client-1", "rx"))
    await settle()
    got_y = asyncio.create_task(queue.take("m", y, "client-2", "ry"))
    await settle()
    on_b.release(ok=True)  # b frees: x (first in line) waits for a, y takes b
    await settle()
    assert got_y.done() and got_y.result()[0] is b and not got_x.done()
    on_a.release(ok=True)
    await settle()
    assert got_x.result()[0] is a

    # Alone in line, its own worker busy and another free: it waits for its own while the imbalance is within the
    # bound (4), and takes the free one (the conversation moves) beyond it (0 here).
    got_y.result()[1].release(ok=True)
    got_x.result()[1].release(ok=True)
    held = registry.acquire(a, "m")
    waits = asyncio.create_task(queue.take("m", x, "client-1", "rx2"))
    await settle()
    assert not waits.done() and b.in_flight == 0
    newcomer = await queue.take("m", Conversation("z", first_turn=True), "client-3", "rz")  # behind x in line, but
    assert newcomer[0] is b and queue.waiting("m") == 1  # b is free and x leaves it: at once, and x still waits
    newcomer[1].release(ok=True)
    held.release(ok=True)
    await settle()
    assert waits.result()[0] is a
    waits.result()[1].release(ok=True)
    policy.max_excess = 0
    held = registry.acquire(a, "m")
    moves = await queue.take("m", x, "client-1", "rx3")
    assert moves[0] is b and policy.preferred(x) == "b"


async def test_a_cool_down_ending_reaches_the_line_with_no_event():
    """The one way capacity comes back with no event: a benched worker's cool-down ends. The line is pumped on a
    timer while anyone waits."""
    clock = Clock()
    registry = Registry(expiry_s=600, clock=clock, breaker_failures=1, breaker_cooldown_s=30)
    busy, benched = registry.register(reg("busy", cap=1)), registry.register(reg("benched", cap=1))
    queue = RequestQueue(registry, ShortestQueue(), size=10, timeout_s=30)
    assert benched.breaker.failed()  # one failure before a first token benches it (the dispatcher counts it)
    held = registry.acquire(busy, "m")
    pumping = asyncio.create_task(queue.pump_while_waiting(0.01))
    try:
        waiting = asyncio.create_task(queue.take("m", None, "A", "r1"))
        await settle()
        assert queue.waiting("m") == 1 and not waiting.done()
        clock.now += 30  # the cool-down ends: no request ended, no worker beat
        worker, lease = await asyncio.wait_for(waiting, timeout=10)
        assert worker is benched and queue.waiting("m") == 0
        lease.release(ok=True)
        held.release(ok=True)
    finally:
        pumping.cancel()
