"""A finished chat request leaves nothing for Python's cycle collector: its objects are freed by reference counting
the moment it ends. Objects caught in a reference cycle live on until a collection, and each collection stops the
whole controller for as long as it takes to walk them: under 500 streams a full one took 20-45 ms, and it fell on
whichever requests were waiting (issue 26, the 500-stream p99). On main every request left ~30 such objects: its
record and the scope (each held the other), uvicorn's request cycle and the scope (through the extensions our
protocol adds), and the stream's Upstream, Relay and StreamPump (each held the next).

The real controller app under our server protocol, in the test's event loop; stand-in workers registered over HTTP;
streamed and non-streamed requests over real sockets, with the collector off; then one collection, its findings kept
(DEBUG_SAVEALL) and looked at."""

from __future__ import annotations

import collections
import gc

import httpx

from common.bounded_http import bounded_http
from controller.app import create_app
from controller.settings import ControllerSettings
from tests.support.chat_http import body
from tests.support.served_app import served
from tests.support.standin_workers import standins, tokens

OURS = ("controller.", "common.", "uvicorn.protocols.")


def _cycles_of_ours(garbage: list) -> collections.Counter:
    return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage
                               if type(o).__module__.startswith(OURS))


async def test_a_finished_request_leaves_no_reference_cycles():
    app = create_app(ControllerSettings(heartbeat_expiry_s=600.0))
    async with served(app, http=bounded_http()) as url, standins(url, {"w": tokens(3, gap_s=0.0)}):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for _ in range(2):  # first connections, caches and lazy imports are not a request's
                await http.post("/v1/chat/completions", json=body("m", stream=True))
                await http.post("/v1/chat/completions", json=body("m"))
            gc.collect()
            gc.disable()
            try:
                for _ in range(10):
                    streamed = await http.post("/v1/chat/completions", json=body("m", stream=True))
                    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
                    whole = await http.post("/v1/chat/completions", json=body("m"))
                    assert whole.status_code == 200 and whole.json()["choices"]
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                left = _cycles_of_ours(gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
    assert not left, f"20 requests left objects in reference cycles: {dict(left)}"
