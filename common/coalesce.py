"""Join a fast stream of items (text deltas, framed events) into at most one output per interval.

Each output costs its reader something per item, whatever its size: the web page re-renders the whole growing
answer (markdown, highlighting, math) and goes through Gradio's queue; a socket write costs a system call and, on
loopback, the receiver's whole network path. The first item goes out at once (time to first token is what a reader
feels most); after that, items that arrive within `interval_for(shown)` of the last output are joined and go out
when that interval is over. An item is never held longer than the interval, even when the source pauses, and a
source slower than the interval sees every item go out by itself, undelayed.

After its first item, the source is read by its own task (a timed wait on it directly would cancel it, which closes
an HTTP stream);
closing or cancelling the coalescer cancels that task, which closes the source: a reader that leaves still stops
the generation behind it. Given `keepalive`, an item goes out whenever nothing else has for that long (an SSE
comment: proxies close streams that stay silent), from a timer, so a stream costs no task for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T", str, bytes)
_END = object()
_TICK = 0.01  # a timer may fire this much before its time (uvloop counts in whole milliseconds)


async def coalesce(items: AsyncIterator[T], interval_for: Callable[[int], float],
                   keepalive: tuple[float, T] | None = None) -> AsyncIterator[T]:
    """`interval_for(shown)`: seconds between outputs once `shown` characters (or bytes) went out. `keepalive`:
    (seconds, item), the item to send after that long without output."""
    # The first item is read here, in the reader's own task: handed over through the queue it waited two turns of
    # the event loop, on every answer's time to first token (issue 26). No timed wait is needed for it.
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except Exception as exc:  # delivered in order, after what came before it
            queue.put_nowait(exc)

    reader = asyncio.create_task(pump())
    pending: list = []
    shown, last = len(first), time.monotonic()
    beat: asyncio.TimerHandle | None = None

    def quiet() -> None:
        nonlocal beat
        idle_s, item = keepalive
        wait = last + idle_s - time.monotonic()
        if wait <= _TICK:
            queue.put_nowait(item)  # joined with whatever else is pending, like any item
            wait = idle_s
        beat = asyncio.get_running_loop().call_later(wait, quiet)

    if keepalive is not None:
        beat = asyncio.get_running_loop().call_later(keepalive[0], quiet)
    try:
        yield first
        while True:
            if pending:
                try:
                    # asyncio.timeout, not wait_for: wait_for starts a task per call, paid per item.
                    async with asyncio.timeout(max(0.0, last + interval_for(shown) - time.monotonic())):
                        item = await queue.get()
                except TimeoutError:
                    item = None  # the interval is over: out with what is pending
            else:
                item = await queue.get()
            if item is _END:
                break
            if isinstance(item, Exception):
                if pending:
                    yield pending[0][:0].join(pending)
                raise item
            if item is not None:
                pending.append(item)
            now = time.monotonic()
            if pending and now - last >= interval_for(shown):
                out = pending[0][:0].join(pending)
                pending.clear()
                shown += len(out)
                last = now
                yield out
        if pending:
            yield pending[0][:0].join(pending)
    finally:
        if beat is not None:
            beat.cancel()
        # `quiet`'s closure holds the timer (which holds `quiet`) and `quiet` itself: cycles the collector would have
        # to find, one per answer (issue 26: a worker's full collections walked those of hundreds of streams)
        beat = quiet = None  # type: ignore[assignment]
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
