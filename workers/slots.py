"""The worker's request slots: one per admitted request, its own record that the request exists, what stage it is
in, and the one way to stop its work. The worker's in-flight count (in /health, /metrics and every heartbeat) is the
number of slots held. (Not the controller's lease in controller/registry.py: that is one dispatch onto a worker.)

One owner: `RequestSlots.hold` is the only way to take a slot, and leaving its `async with` the only way it goes;
the chat response (workers/chat_response.py) holds it for as long as it lives, as TGI holds its permit for the life
of the stream. So a slot is released exactly once, whatever ends the request.

Stopping: the response awaits the request's work through the one disconnect helper (common/disconnect.py
`until_client_leaves`), which cancels it when the client leaves. Cancelling reaches every stage: a wait for the
preprocessing budget or for the model is an await and ends at once; work running in a thread (media decoding,
tiling, tokenizing) sees `cancelled` set and stops at its next check, and the work waits for the thread to be out
before the cancellation goes on (so before ClientGone is raised and the slot goes), so the pixels it holds are
really free; the engine's stream is closed when the slot goes, which is how an engine stops a generation
(workers/engines/base.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from common.errors import ErrorCode, ServingError

log = logging.getLogger(__name__)
T = TypeVar("T")


class RequestCancelled(Exception):
    """Raised inside a worker thread that noticed its request was cancelled (the client left)."""


class RequestSlot:
    """Taken and released by `RequestSlots.hold` only."""

    def __init__(self, slots: RequestSlots, client_id: str, pixels: PixelPool):
        self.id = uuid.uuid4().hex  # the engine's key: ours, unique; the client's X-Request-ID is only logged
        self.client_id = client_id
        self.stage = "admitted"
        self.cancelled = threading.Event()  # read by worker threads between frames, images, steps
        self._slots = slots
        self._pixels = pixels
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self.released = False

    def check(self) -> None:
        """For worker threads: stop here when the request was cancelled."""
        if self.cancelled.is_set():
            raise RequestCancelled

    async def in_thread(self, fn: Callable[..., T], *args: Any, pixels: int = 0) -> T:
        """Run `fn(*args)` in a thread, after taking `pixels` from the worker's preprocessing budget (a wait the
        client's leaving ends). The pixels go back when the thread is out. When the request is cancelled meanwhile,
        the thread is told (`cancelled`) and awaited before the cancellation goes on."""
        taken = await self._pixels.acquire(pixels)
        try:
            self.check()
        except RequestCancelled:
            self._pixels.release(taken)
            raise
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        future.add_done_callback(lambda _: self._pixels.release(taken))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.cancelled.set()
            await asyncio.wait([future])  # the thread stops at its next check
            if not future.cancelled():
                future.exception()  # retrieved: RequestCancelled, or a failure nobody waits for any more
            raise

    def on_release(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Something to close when the slot goes (e.g. the engine's stream)."""
        self._cleanups.append(cleanup)

    async def _release(self) -> None:
        """End the request: close what it holds and drop it from the count. Called once, by `RequestSlots.hold`."""
        self.released = True
        self.cancelled.set()
        try:
            for cleanup in self._cleanups:
                with contextlib.suppress(Exception):
                    await cleanup()
        finally:
            self._slots._drop(self)


class RequestSlots:
    """The worker's admitted requests. `hold` refuses with worker_busy at max_concurrency."""

    def __init__(self, max_concurrency: int, pixels: PixelPool):
        self.max_concurrency = max_concurrency
        self.pixels = pixels
        self._live: dict[str, RequestSlot] = {}

    def __len__(self) -> int:
        return len(self._live)

    @contextlib.asynccontextmanager
    async def hold(self, client_id: str) -> AsyncIterator[RequestSlot]:
        """The request's slot for the body of the `async with`; released when it is left, however."""
        if len(self._live) >= self.max_concurrency:
            raise ServingError(ErrorCode.WORKER_BUSY, f"worker is at capacity ({len(self._live)} requests running); "
                               "retry shortly or add workers")
        slot = RequestSlot(self, client_id, self.pixels)
        self._live[slot.id] = slot
        log.info("admitted as %s", slot.id)  # the line that ties the client's id (request_id=) to the engine's
        try:
            yield slot
        finally:
            await slot._release()

    def _drop(self, slot: RequestSlot) -> None:
        self._live.pop(slot.id, None)

    def stages(self) -> dict[str, int]:
        return dict(Counter(slot.stage for slot in self._live.values()))


class PixelPool:
    """The worker-wide budget of decoded pixels being prepared at once (images and video frames): requests wait their
    turn rather than grow the process. A request bigger than the whole pool waits until it can have all of it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []

    async def acquire(self, pixels: int) -> int:
        """-> the pixels taken (at most the capacity); waiting is first come, first served."""
        pixels = min(max(0, pixels), self.capacity)
        if not pixels:
            return 0
        if not self._waiters and self.in_use + pixels <= self.capacity:
            self.in_use += pixels
            return pixels
        future = asyncio.get_running_loop().create_future()
        entry = (pixels, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                self.release(pixels)  # granted at the moment we were cancelled
            self._wake()
            raise
        return pixels

    def release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            pixels, future = self._waiters.pop(0)
            if not future.done():
                self.in_use += pixels
                future.set_result(None)

