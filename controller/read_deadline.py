"""How long the relay waits for a worker's next bytes: one timer per stream, not one per read.

`asyncio.timeout` around each network read of a stream costs a Timeout object, a timer scheduled and cancelled and
the task's cancel bookkeeping, every read: 7% of the controller's busy samples under 500 streams (py-spy,
bench/overhead_bench.py --profile; 1% with this). A stream's reads mostly return at once (the bytes are there), so here a read only
notes when it started; one timer per stream wakes up when the oldest possible deadline is due, and either re-arms for
the read under way or, when that read has waited the whole timeout, cancels it. Only time spent waiting on the
worker counts: a client slow to take what was sent (the task waiting in a write) never makes the worker late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class ReadDeadline:
    """The idle timeout of one stream's reads. `await deadline.read(aw)` raises TimeoutError when `aw` waited
    `timeout_s`; any other cancellation passes through as it came. Call `close()` when the stream ends. `since`: the
    loop time the first read's wait began, when it began before this (a request written from the server's callbacks,
    controller/fast_chat.py)."""

    __slots__ = ("_expired", "_handle", "_loop", "_since", "_started", "_task", "timeout_s")

    def __init__(self, timeout_s: float, loop: asyncio.AbstractEventLoop | None = None, since: float | None = None):
        self.timeout_s = timeout_s
        self._since = since
        self._loop = loop or asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._started: float | None = None  # when the read under way started; None between reads
        self._expired = False

    async def read(self, aw: Awaitable[T]) -> T:
        self._task = asyncio.current_task(self._loop)
        self._started = self._loop.time() if self._since is None else self._since
        self._since = None
        if self._handle is None:
            self._handle = self._loop.call_at(self._started + self.timeout_s, self._due)
        try:
            return await aw
        except asyncio.CancelledError:
            if self._expired and self._task is not None and self._task.uncancel() == 0:
                raise TimeoutError from None  # ours alone: a cancellation from elsewhere wins
            raise
        finally:
            self._started = None
            self._expired = False

    def _due(self) -> None:
        self._handle = None
        if self._started is None:
            return  # between reads: the next read arms a new timer
        due = self._started + self.timeout_s
        if self._loop.time() < due:  # a later read than the one the timer was set for
            self._handle = self._loop.call_at(due, self._due)
        elif self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
