"""How the controller and the workers run under uvicorn: one place for the settings they share.

uvicorn's server wakes ten times a second for its housekeeping (the Date header, a look at whether it should stop),
busy or idle. On these machines each timer wakeup of an idle process costs it about 0.25 ms of CPU time (2.6 ms per
second for a bare event loop that sleeps 0.1 s at a time), and the controller's CPU per relayed token counted it:
an idle controller took 3.3 ms of CPU per second, a Rust router none (issue 26, BENCHMARKS.md). `QuietServer` has no
tick at all: the Date header is made when a response asks for it in a new second (`DatedState`), and the loop sleeps
until it is told to stop (a signal, or `should_exit` set from anywhere). Once a second, the tick was still most of an
idle controller's wakeups (12 of 17 in 12 s, strace) and ~0.6 of its 0.9 ms of CPU per second.

Once started, everything the process has made (its modules, the app, a worker's model) lives as long as it does, and
`QuietServer` freezes it (`gc.freeze`): out of the cycle collector's full collections, which stop the whole process
for as long as they walk what it holds. A worker's walked its ~270,000 startup objects in each: up to 130 ms under
500 streams, a stall of every stream it served (issue 26; frozen counts in /metrics, common/metrics.py).

What it holds while serving still gets walked: under 500 streams, a worker's live per-stream state (~90,000 objects)
took 10-90 ms a walk, and at Python's default thresholds a full collection came every few seconds (17 in 12 load
rounds). A controller's requests leave no cycles (tests/controller/test_request_garbage.py), so `QuietServer` asks for
a full collection ten times less often (`FULL_AFTER`: 2 in the same rounds); the younger generations are collected
as before. A worker's streamed requests left cycles until its closed connections and its answers' keep-alive let go
of what they held (the same test; tests/common/test_coalesce.py): a full collection then walked what hundreds of
streams had left, 290-400 ms under 500 streams; now 13-24 ms (BENCHMARKS.md, 2026-12-07).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from email.utils import formatdate

import uvicorn
from uvicorn.main import STARTUP_FAILURE
from uvicorn.server import ServerState

from common.bounded_http import bounded_http

FULL_AFTER = 100  # collections of the middle generation before a full one (Python's default: 10)


class DatedState(ServerState):
    """uvicorn's state shared by a server's connections, whose default headers (Date first) are made when a response
    asks for them in a new second, rather than by a tick every second whether anyone asks or not."""

    def __init__(self, config: uvicorn.Config):
        self._config = config
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []
        super().__init__()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._second:
            date = [(b"date", formatdate(second, usegmt=True).encode())] if self._config.date_header else []
            self._headers, self._second = date + self._config.encoded_headers, second
        return self._headers

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        """(uvicorn's own assignments: made here on demand instead)"""


class QuietServer(uvicorn.Server):
    """uvicorn's Server with no housekeeping tick (see the module's docstring), what it made to start frozen out of
    the cycle collector's walks, and full collections ten times rarer. uvicorn's `limit_max_requests` and
    `callback_notify`, which its tick served, are refused."""

    def __init__(self, config: uvicorn.Config):
        if config.limit_max_requests is not None or config.callback_notify is not None:
            raise ValueError("QuietServer has no tick to count requests or notify a supervisor: use uvicorn.Server")
        self._wake: Callable[[], None] | None = None
        super().__init__(config)
        self.server_state = DatedState(config)

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        """Set by a signal (uvicorn's `handle_exit`) or by anyone, from any thread: the sleeping loop wakes up."""
        self._should_exit = value
        if value and self._wake is not None:
            self._wake()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)  # (the app's lifespan first: a worker's model is loaded by now)
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_AFTER)

    async def main_loop(self) -> None:
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        self._wake = lambda: loop.call_soon_threadsafe(stop.set)  # (from a signal handler or a thread)
        if not self.should_exit:  # (after `_wake` is set: a stop asked in between is seen one way or the other)
            await stop.wait()


def proxy_headers(app) -> bool:
    """Whether uvicorn should apply its proxy headers middleware to `app`: not to one that applies it itself (the
    controller's, controller/direct_routes.py)."""
    return not getattr(app, "applies_proxy_headers", False)


def serve(app, *, host: str, port: int, log_level: str, head_timeout_s: float) -> None:
    """Serve `app` until SIGINT or SIGTERM (then up to 5 s for requests under way); exit 3 if it cannot start
    (as `uvicorn.run`: the port is taken, ...). Request heads and bodies are bounded (common/bounded_http.py);
    uvicorn's loggers go through our handler (log_config=None: request ids, one format)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, http=bounded_http(head_timeout_s=head_timeout_s),
                            proxy_headers=proxy_headers(app))
    server = QuietServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
