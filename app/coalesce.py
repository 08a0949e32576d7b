"""Join a fast stream of text deltas into at most one browser update per interval.

Every update re-renders the growing answer in the page (markdown, code highlighting, math: a cost that grows with
the answer's length) and goes through Gradio's queue: one update per token makes the page fall behind the model,
and a page that is behind keeps changing after Stop. The first delta goes out at once (time to first token is what
a reader feels most); after that, deltas that arrive within the interval are joined, and the interval grows with
the answer (50 ms for a short one, up to 250 ms for a long one), so rendering keeps up at any length. A delta is
never held longer than the interval, even when the model pauses.

The source is read by its own task (a timed wait on it directly would cancel it, which closes the HTTP stream);
closing or cancelling the coalescer cancels that task, which closes the source: Stop still aborts generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

MIN_INTERVAL_S = 0.05
MAX_INTERVAL_S = 0.25
CHARS_PER_MS = 20  # +1 ms of interval per 20 characters shown
_END = object()


def interval_for(shown_chars: int) -> float:
    return min(MAX_INTERVAL_S, MIN_INTERVAL_S + shown_chars / CHARS_PER_MS / 1000)


async def coalesce(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for delta in deltas:
                queue.put_nowait(delta)
            queue.put_nowait(_END)
        except Exception as exc:  # delivered in order, after the text that came before it
            queue.put_nowait(exc)

    reader = asyncio.create_task(pump())
    pending: list[str] = []
    shown, last = 0, None
    try:
        while True:
            wait = None if not pending else max(0.0, last + interval_for(shown) - time.monotonic())
            try:
                item = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                item = None  # the interval is over: show what is pending
            if item is _END:
                break
            if isinstance(item, Exception):
                if pending:
                    yield "".join(pending)
                raise item
            if item is not None:
                pending.append(item)
            now = time.monotonic()
            if pending and (last is None or now - last >= interval_for(shown)):
                out = "".join(pending)
                pending.clear()
                shown += len(out)
                last = now
                yield out
        if pending:
            yield "".join(pending)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
