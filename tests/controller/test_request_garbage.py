"""A finished chat request leaves nothing for Python's cycle collector: its objects are freed by reference counting
the moment it ends. Objects caught in a reference cycle live on until a collection, and each collection stops the
whole controller for as long as it takes to walk them: under 500 streams a full one took 20-45 ms, and it fell on
whichever requests were waiting (issue 26, the 500-stream p99). On main every request left ~30 such objects: its
record and the scope (each held the other), uvicorn's request cycle and the scope (through the extensions our
protocol adds), and the stream's Upstream, Relay and StreamPump (each held the next).

The real controller app under our server protocol, in the test's event loop; stand-in workers registered over HTTP;
streamed and non-streamed requests over real sockets, with the collector off; then one collection, its findings kept
(DEBUG_SAVEALL) and looked at. The same for requests that each come on a connection of their own, closed after: before
6d89194 each closed connection was a cycle of our protocol, its transport (which holds the protocol's methods), its flow
control and its last request's whole scope, ~40 objects (a worker under 500 streams, each on its own connection,
walked those of hundreds in a full collection: 290-400 ms, issue 26)."""

from __future__ import annotations

import collections
import gc
from collections.abc import Awaitable, Callable

import httpx

from common.bounded_http import BoundedHttpTools, bounded_http
from controller.app import create_app
from controller.settings import ControllerSettings
from tests.support.chat_http import body
from tests.support.cycles import collector_off
from tests.support.served_app import served, until
from tests.support.standin_workers import standins, tokens

OURS = ("controller.", "common.", "uvicorn.protocols.")


def _open_connections_to(url: str) -> list[BoundedHttpTools]:
    """The server's connections at `url` whose end it has not seen yet (uvicorn drops a connection's parser then)."""
    port = int(url.rsplit(":", 1)[1])
    return [p for p in gc.get_objects() if isinstance(p, BoundedHttpTools) and p.server and p.server[1] == port
            and p.parser is not None]


def _cycles_of_ours(garbage: list) -> collections.Counter:
    return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage
                               if type(o).__module__.startswith(OURS))


async def _left_in_cycles(post: Callable[[bool], Awaitable[httpx.Response]], rounds: int,
                          settle: Callable[[], Awaitable[None]] | None = None) -> collections.Counter:
    """What `rounds` of a streamed and a non-streamed request through `post` (its argument: stream or not) left of
    ours in reference cycles, the collector off while they ran; `settle` waits for what must end before looking."""
    for stream in (True, False, True, False):  # first connections, caches and lazy imports are not a request's
        await post(stream)
    with collector_off() as collect:
        for _ in range(rounds):
            streamed = await post(True)
            assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
            whole = await post(False)
            assert whole.status_code == 200 and whole.json()["choices"]
        if settle is not None:
            await settle()
        return _cycles_of_ours(collect())


async def test_a_finished_request_leaves_no_reference_cycles():
    app = create_app(ControllerSettings(heartbeat_expiry_s=600.0))
    async with served(app, http=bounded_http()) as url, standins(url, {"w": tokens(3, gap_s=0.0)}):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            left = await _left_in_cycles(lambda stream: http.post("/v1/chat/completions",
                                                                  json=body("m", stream=stream)), 10)
    assert not left, f"20 requests left objects in reference cycles: {dict(left)}"


async def test_a_closed_connection_leaves_no_reference_cycles():
    app = create_app(ControllerSettings(heartbeat_expiry_s=600.0))
    async with served(app, http=bounded_http()) as url, standins(url, {"w": tokens(3, gap_s=0.0)}):

        async def on_a_connection_of_its_own(stream: bool) -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                return await http.post("/v1/chat/completions", json=body("m", stream=stream))

        async def all_closed() -> None:  # the server sees each connection's end a moment after the client closed it
            await until(lambda: not _open_connections_to(url), 5, "the server saw every connection close")

        left = await _left_in_cycles(on_a_connection_of_its_own, 5, all_closed)
    assert not left, f"10 requests on connections of their own left objects in reference cycles: {dict(left)}"
