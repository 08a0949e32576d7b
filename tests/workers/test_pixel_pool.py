"""The worker-wide preprocessing budget (workers/slots.py PixelPool): requests past it wait their turn, in order; a
waiter whose client left takes nothing and lets the next one in; one request bigger than the pool runs alone."""

from __future__ import annotations

import asyncio

import pytest

from workers.slots import PixelPool


async def test_waits_in_order_and_a_leaving_waiter_takes_nothing():
    pool = PixelPool(100)
    assert await pool.acquire(70) == 70
    second = asyncio.create_task(pool.acquire(50))
    third = asyncio.create_task(pool.acquire(20))  # would fit now, but waits behind the second (first come)
    await asyncio.sleep(0.01)
    assert not second.done() and not third.done() and pool.in_use == 70
    second.cancel()  # its client left while it waited
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await asyncio.wait_for(third, 1) == 20 and pool.in_use == 90
    pool.release(70)
    pool.release(20)
    assert pool.in_use == 0


async def test_a_request_bigger_than_the_pool_runs_alone():
    pool = PixelPool(100)
    assert await pool.acquire(10) == 10
    big = asyncio.create_task(pool.acquire(1_000))
    await asyncio.sleep(0.01)
    assert not big.done()
    pool.release(10)
    assert await asyncio.wait_for(big, 1) == 100 and pool.in_use == 100
    pool.release(100)
    assert await pool.acquire(0) == 0 and pool.in_use == 0


async def test_granted_at_the_moment_of_cancelling_gives_the_pixels_back():
    pool = PixelPool(100)
    await pool.acquire(100)
    waiter = asyncio.create_task(pool.acquire(60))
    await asyncio.sleep(0.01)
    pool.release(100)  # grants the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.in_use == 0
