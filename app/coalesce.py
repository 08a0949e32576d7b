"""How often the page gets a new version of the growing answer (the joining itself: common/coalesce.py).

Every update re-renders the whole answer in the page, a cost that grows with its length, and a page that falls
behind keeps changing after Stop: 50 ms between updates for a short answer, growing to 250 ms for a long one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from common.coalesce import coalesce as _coalesce

MIN_INTERVAL_S = 0.05
MAX_INTERVAL_S = 0.25
CHARS_PER_MS = 20  # +1 ms of interval per 20 characters shown


def interval_for(shown_chars: int) -> float:
    return min(MAX_INTERVAL_S, MIN_INTERVAL_S + shown_chars / CHARS_PER_MS / 1000)


def coalesce(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    return _coalesce(deltas, interval_for)
