"""Clients that leave: the one way the controller and the workers notice and stop work nobody waits for any more.

`until_client_leaves` is the one disconnect helper (as vLLM's `with_cancellation`, lmdeploy's
`race_awaitable_with_disconnect`); `ClientGone` is what it raises, and what a body read raises when the client leaves
while sending. The error handlers (common/http.py `install_error_handlers`, in both apps) turn it into a 499
("client closed request", nginx's code), seen only by the access log and the metrics, never as an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict]]  # the ASGI `receive` (a Request's is `request.receive`)


class ClientGone(Exception):
    """The client disconnected before its answer was ready: there is no one to answer; its work has been stopped."""


async def until_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first: then `work` is cancelled and ClientGone raised.

    `work` runs in this task (no task of its own: one watcher task is the whole cost), so cancelling it unwinds it
    here: by the time ClientGone is raised its cleanup has run, whatever it held is let go (a worker's connection, a
    place in a queue) and threads it waits for are out (a worker's slot, workers/slots.py). Call it once the request
    body has been read: from then on the server's next message is the disconnect."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to turn into anything else
        task.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()
