"""Join a fast stream of text deltas into at most one browser update per interval.

Every update re-renders the growing answer (markdown, code highlighting, math) in the page and re-sends the
history's state through Gradio: one update per token makes the page fall behind the model. The first delta goes
out at once (time to first token is what a reader feels most); after that, deltas that arrive within `interval_s`
are joined. Nothing waits on a timer: a delta is held back only until the next one arrives or the stream ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator


async def coalesce(deltas: AsyncIterator[str], interval_s: float = 0.05) -> AsyncIterator[str]:
    pending: list[str] = []
    last = None
    async for delta in deltas:
        pending.append(delta)
        now = time.monotonic()
        if last is None or now - last >= interval_s:
            yield "".join(pending)
            pending.clear()
            last = now
    if pending:
        yield "".join(pending)
