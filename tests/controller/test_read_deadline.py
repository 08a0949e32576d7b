"""controller/read_deadline.py: the relay's idle timeout of a worker's stream, one timer per stream."""

from __future__ import annotations

import asyncio

import pytest

from controller.read_deadline import ReadDeadline


async def test_a_read_that_waits_the_whole_timeout_fails():
    deadline = ReadDeadline(0.2)
    never = asyncio.get_running_loop().create_future()
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await deadline.read(never)
    assert 0.19 <= asyncio.get_running_loop().time() - started < 5
    assert never.cancelled()  # what it waited for is let go
    deadline.close()


async def test_many_prompt_reads_outlast_the_timeout_together():
    """The timer set for the first read re-arms for the read under way: only one read's wait counts."""
    deadline = ReadDeadline(0.2)
    for _ in range(8):  # 8 x 0.1 s: four times the timeout in all
        assert await deadline.read(asyncio.sleep(0.1, "bytes")) == "bytes"
    deadline.close()


async def test_time_between_reads_does_not_count():
    """A client slow to take what was sent keeps the task away from the next read: the worker is not late."""
    deadline = ReadDeadline(0.2)
    assert await deadline.read(asyncio.sleep(0, 1)) == 1
    await asyncio.sleep(0.5)  # as a slow write to the client would
    assert await deadline.read(asyncio.sleep(0.1, 2)) == 2
    deadline.close()


async def test_a_cancellation_from_elsewhere_passes_through():
    deadline = ReadDeadline(0.2)
    reader = asyncio.ensure_future(deadline.read(asyncio.sleep(10)))
    await asyncio.sleep(0.05)
    reader.cancel()  # the client left (until_client_leaves cancels the task)
    with pytest.raises(asyncio.CancelledError):
        await reader
    deadline.close()


async def test_both_at_once_is_a_cancellation_not_a_timeout():
    """The deadline's cancel and an outside one together: the outside one is not swallowed."""
    deadline = ReadDeadline(0.1)

    async def read_and_get_cancelled_too():
        task = asyncio.current_task()
        asyncio.get_running_loop().call_later(0.1, task.cancel)  # due with the deadline
        return await deadline.read(asyncio.sleep(10))

    reader = asyncio.ensure_future(read_and_get_cancelled_too())
    with pytest.raises(asyncio.CancelledError):
        await reader
    deadline.close()


async def test_close_leaves_no_timer():
    deadline = ReadDeadline(30)
    await deadline.read(asyncio.sleep(0))
    handle = deadline._handle
    assert handle is not None
    deadline.close()
    assert handle.cancelled() and deadline._handle is None
