"""common/coalesce.py: the first item at once, items within the interval joined, nothing held past the interval,
the end and errors flushed in order, and a reader that leaves closes the source."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.coalesce import coalesce
from tests.support.cycles import collector_off
from tests.support.waiting import wait_until_async

_END = object()


class Source:
    """An async iterator the test feeds by hand; `closed` is set when the coalescer closes it."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.Event()

    def put(self, *items) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def items(self):
        try:
            while (item := await self.queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed.set()


async def next_within(out, seconds: float):
    """The coalescer's next output and how long it took; fails if it takes longer than `seconds`."""
    started = time.monotonic()
    item = await asyncio.wait_for(anext(out), seconds)
    return item, time.monotonic() - started


async def test_first_item_goes_out_at_once_even_with_a_long_interval():
    src = Source()
    out = coalesce(src.items(), lambda shown: 30.0)
    src.put("first")
    item, took = await next_within(out, 2.0)
    assert item == "first" and took < 1.0
    await out.aclose()


async def test_items_within_the_interval_are_joined_and_go_out_when_it_is_over():
    src = Source()
    interval = 0.3
    out = coalesce(src.items(), lambda shown: interval)
    src.put("a")
    assert (await next_within(out, 2.0))[0] == "a"
    src.put("b", "c", "d")  # all inside the interval that started with "a"
    started = time.monotonic()
    item, _ = await next_within(out, 5.0)
    waited = time.monotonic() - started
    assert item == "bcd"
    assert waited < interval + 1.0  # not held past the interval (slack for a loaded machine)
    await out.aclose()


async def test_the_last_item_is_not_held_while_the_source_pauses():
    """Two quick items, then the source is silent (the model thinks): the second goes out when the interval is over,
    not when the source speaks again."""
    src = Source()
    out = coalesce(src.items(), lambda shown: 0.2)
    src.put("a", "b")
    assert (await next_within(out, 2.0))[0] == "a"
    item, took = await next_within(out, 1.5)  # the source stays open and silent
    assert item == "b" and took < 1.5
    await out.aclose()


async def test_a_source_slower_than_the_interval_sees_each_item_alone_and_undelayed():
    src = Source()
    out = coalesce(src.items(), lambda shown: 0.05)
    seen = []
    for word in ("one", "two", "three"):
        await asyncio.sleep(0.15)  # the stimulus: gaps longer than the interval
        src.put(word)
        item, took = await next_within(out, 2.0)
        seen.append(item)
        assert took < 0.5
    assert seen == ["one", "two", "three"]
    await out.aclose()


async def test_the_end_flushes_what_is_pending_without_waiting_for_the_interval():
    src = Source()
    out = coalesce(src.items(), lambda shown: 30.0)
    src.put("a", "b", "c", _END)
    started = time.monotonic()
    items = [item async for item in out]
    assert items == ["a", "bc"] and time.monotonic() - started < 2.0


async def test_an_error_from_the_source_comes_after_what_came_before_it():
    src = Source()
    out = coalesce(src.items(), lambda shown: 30.0)
    src.put("a", "b", RuntimeError("engine died"))
    got = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for item in out:
            got.append(item)
    assert got == ["a", "b"]


async def test_the_interval_is_asked_with_what_was_shown_so_far_and_bytes_join_too():
    src = Source()
    asked: list[int] = []

    def interval_for(shown: int) -> float:
        asked.append(shown)
        return 30.0

    out = coalesce(src.items(), interval_for)
    src.put(b"ab", b"c", b"de", _END)
    assert [item async for item in out] == [b"ab", b"cde"]
    assert asked and set(asked) == {2}  # after b"ab" went out; before that no interval was needed


async def test_a_reader_that_leaves_closes_the_source():
    src = Source()
    out = coalesce(src.items(), lambda shown: 0.05)
    src.put("a")
    assert (await next_within(out, 2.0))[0] == "a"
    await out.aclose()
    await asyncio.wait_for(src.closed.wait(), 2.0)


async def test_cancelling_the_reader_closes_the_source():
    src = Source()

    async def read_all():
        return [item async for item in coalesce(src.items(), lambda shown: 0.05)]

    task = asyncio.create_task(read_all())
    src.put("a")
    await wait_until_async(src.queue.empty, 2, "the reader taking the item")  # then waiting on a silent source
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(src.closed.wait(), 2.0)


async def test_a_ready_first_item_goes_out_without_a_turn_of_the_event_loop():
    """The first item is every answer's first token: read in the reader's own task, not handed over through a queue
    by the source's task, it waits for no other callback (issue 26)."""

    async def ready():
        yield "first"
        yield "second"

    other_ran = []
    asyncio.get_running_loop().call_soon(other_ran.append, True)  # runs at the loop's next turn
    out = coalesce(ready(), lambda shown: 30.0)
    assert await anext(out) == "first"
    assert not other_ran, "the first item waited for a turn of the event loop"
    await out.aclose()


async def test_a_silent_source_gets_the_keepalive_item_and_a_busy_one_none():
    src = Source()
    out = coalesce(src.items(), lambda shown: 0.01, keepalive=(0.2, ": ping"))
    src.put("a")
    assert (await next_within(out, 2.0))[0] == "a"
    item, took = await next_within(out, 2.0)  # the source says nothing
    assert item == ": ping" and took >= 0.2 - 0.02
    assert (await next_within(out, 2.0))[0] == ": ping"  # and goes on saying nothing
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # three keepalive intervals, an item every 50 ms
        src.put("b")
        assert (await next_within(out, 2.0))[0] == "b"
        await asyncio.sleep(0.05)
    src.put(_END)
    assert [item async for item in out] == []


async def test_an_answer_with_a_keepalive_leaves_no_reference_cycles():
    """Each answer's keep-alive timer and the function it calls (which reschedules itself) are freed with the answer,
    not left to the cycle collector: a worker's full collections walked those of hundreds of streams (issue 26)."""

    async def items():
        for i in range(3):
            yield f"t{i}"

    def of_coalesce(o) -> bool:
        code = getattr(o, "__code__", None) or getattr(getattr(o, "_callback", None), "__code__", None)
        return code is not None and code.co_filename.endswith("coalesce.py")

    with collector_off() as collect:
        for _ in range(5):
            out = [block async for block in coalesce(items(), lambda shown: 0.0, keepalive=(15.0, ": ping"))]
            assert "".join(out) == "t0t1t2"
        left = [o for o in collect() if of_coalesce(o)]
    assert not left, f"5 answers left their keep-alive in reference cycles: {left[:4]}"
