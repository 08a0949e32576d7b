"""How the controller and the workers run under uvicorn: one place for the settings they share.

uvicorn's server wakes ten times a second for its housekeeping (the Date header, a look at whether it should stop),
busy or idle. On these machines each timer wakeup of an idle process costs it about 0.25 ms of CPU time (2.6 ms per
second for a bare event loop that sleeps 0.1 s at a time), and the controller's CPU per relayed token counted it:
an idle controller took 3.3 ms of CPU per second, a Rust router none (issue 26, BENCHMARKS.md). `QuietServer` does
the same housekeeping once a second, and a signal still stops it at once.

Once started, everything the process has made (its modules, the app, a worker's model) lives as long as it does, and
`QuietServer` freezes it (`gc.freeze`): out of the cycle collector's full collections, which stop the whole process
for as long as they walk what it holds. A worker's walked its ~270,000 startup objects in each: up to 130 ms under
500 streams, a stall of every stream it served (issue 26; frozen counts in /metrics, common/metrics.py).

What it holds while serving still gets walked: under 500 streams, a worker's live per-stream state (~90,000 objects)
took 10-90 ms a walk, and at Python's default thresholds a full collection came every few seconds (17 in 12 load
rounds). Requests leave no cycles here (tests/controller/test_request_garbage.py), so `QuietServer` asks for a full
collection ten times less often (`FULL_AFTER`: 2 in the same rounds); the younger generations are collected as
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import Callable

import uvicorn
from uvicorn.main import STARTUP_FAILURE

from common.bounded_http import bounded_http

FULL_AFTER = 100  # collections of the middle generation before a full one (Python's default: 10)


class QuietServer(uvicorn.Server):
    """uvicorn's Server, with its housekeeping tick once a second instead of every 0.1 s, what it made to start
    frozen out of the cycle collector's walks, and full collections ten times rarer."""

    _stop: Callable[[], None] | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)  # (the app's lifespan first: a worker's model is loaded by now)
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_AFTER)

    async def main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._stop = lambda: loop.call_soon_threadsafe(stop.set)  # (from a signal handler: wakes the loop)
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # on_tick refreshes the Date header when counter % 10 == 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if self._stop is not None:
            self._stop()


def proxy_headers(app) -> bool:
    """Whether uvicorn should apply its proxy headers middleware to `app`: not to one that applies it itself (the
    controller's, controller/chat_route.py)."""
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
