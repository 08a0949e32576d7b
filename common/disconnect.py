"""Clients that leave: the one way the controller and the workers notice and stop work nobody waits for any more.

`ClientWatch` (and `until_client_leaves`, one step of it) is the one disconnect helper (as vLLM's
`with_cancellation`, lmdeploy's `race_awaitable_with_disconnect`); `ClientGone` is what it raises, and what a body
read raises when the client leaves while sending. The error handlers (common/http.py `install_error_handlers`, in both
apps) turn it into a 499 ("client closed request", nginx's code), seen only by the access log and the metrics, never
as an error.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict]]  # the ASGI `receive` (a Request's is `request.receive`)
# scope["extensions"][LEFT]: where our server protocol (common/bounded_http.py ClientLeft) tells a watch that the
# client left, from the connection's own callback; under any other server a task waits for the ASGI disconnect.
LEFT = "internvl.client_left"


class ClientGone(Exception):
    """The client disconnected before its answer was ready: there is no one to answer; its work has been stopped."""


class ClientWatch:
    """One request's watch for its client leaving, from once its body has been read until `stop()`: one watcher
    task for the whole request however many steps it guards (the controller guards its wait for a worker, then the
    relayed stream; a task per step was a measurable share of its CPU per request, issue 26).

    `await watch.guard(work)` awaits `work` in this task (no task of its own), so cancelling it unwinds it here: by
    the time ClientGone is raised its cleanup has run, whatever it held is let go (a worker's connection, a place in
    a queue) and threads it waits for are out (a worker's slot, workers/slots.py). A client that left between two
    steps makes the next `guard` raise ClientGone at once. From its start the server's next message must be the
    disconnect: start it once the request body has been read; stop it before the response's last write is done
    (after that, the server reports every request as disconnected). Given the request's `scope`, the watch takes the
    server's word where it offers one (`LEFT`): no watcher task then (issue 26: its steps were a measurable share of
    the controller's CPU per request)."""

    __slots__ = ("_cancelled", "_guarded", "_hook", "_loop", "_watcher", "gone")

    def __init__(self, receive: Receive, scope: dict | None = None):
        self.gone = False
        self._guarded: asyncio.Task | None = None  # the task inside `guard` now
        self._cancelled = False  # the watcher cancelled it
        self._hook = scope.get("extensions", {}).get(LEFT) if scope is not None else None
        self._watcher: asyncio.Future | None = None
        if self._hook is not None:
            self._loop = self._hook.loop  # (no lookup per step: CPython 3.11 asks the kernel for its pid in each)
            self._hook.watch(self._left)
        else:
            self._loop = asyncio.get_running_loop()
            self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._left()

    def _left(self) -> None:
        self.gone = True
        if self._guarded is not None:
            self._cancelled = True
            self._guarded.cancel()

    async def guard(self, work: Awaitable[T]) -> T:
        """`work`'s result, unless the client leaves first: then `work` is cancelled and ClientGone raised."""
        if self.gone:
            if inspect.iscoroutine(work):
                work.close()  # never started: nothing to unwind
            raise ClientGone
        task = asyncio.current_task(self._loop)
        assert task is not None
        self._guarded = task
        try:
            return await work
        except asyncio.CancelledError:
            if not self._cancelled:
                raise  # cancelled from outside (shutdown): not ours to turn into anything else
            self._cancelled = False
            task.uncancel()
            raise ClientGone from None
        finally:
            self._guarded = None

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        else:
            self._hook.unwatch()


async def until_client_leaves(receive: Receive, work: Awaitable[T], scope: dict | None = None) -> T:
    """Await `work` unless the client disconnects first: then `work` is cancelled and ClientGone raised (a
    ClientWatch for one step; see there)."""
    watch = ClientWatch(receive, scope)
    try:
        return await watch.guard(work)
    finally:
        watch.stop()
