"""Join a fast stream of text deltas into at most one browser update per interval.

Every update re-renders the growing answer in the page (markdown, code highlighting, math: a cost that grows with
the answer's length) and goes through Gradio's queue: one update per token makes the page fall behind the model,
and a page that is behind keeps changing after Stop. The first delta goes out at once (time to first token is what
a reader feels most); after that, deltas that arrive within the interval are joined, and the interval grows with
the answer (50 ms for a short one, up to 250 ms for a long one), so rendering keeps up at any length. Nothing waits
on a timer: a delta is held back only until the next one arrives or the stream ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

MIN_INTERVAL_S = 0.05
MAX_INTERVAL_S = 0.25
CHARS_PER_MS = 20  # +1 ms of interval per 20 characters shown


def interval_for(shown_chars: int) -> float:
    return min(MAX_INTERVAL_S, MIN_INTERVAL_S + shown_chars / CHARS_PER_MS / 1000)


async def coalesce(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    pending: list[str] = []
    shown = 0
    last = None
    async for delta in deltas:
        pending.append(delta)
        now = time.monotonic()
        if last is None or now - last >= interval_for(shown):
            out = "".join(pending)
            pending.clear()
            shown += len(out)
            last = now
            yield out
    if pending:
        yield "".join(pending)
