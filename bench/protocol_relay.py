"""The least a Python relay can do below ASGI and aiohttp, for bench/relay_floor.py: uvloop's transports, httptools'
parsers in both directions, callbacks only (no task or coroutine per request). A request's body goes to one worker
on a kept-alive connection, and the worker's bytes go back as they come, re-chunked. No routing, counting, failover,
limits, checks or error handling: it measures the floor of a data path written on raw protocols, beside
bench/minimal_relay.py, the floor on the controller's own stack. It runs with the controller's malloc settings, as
the minimal relay does. Bench-only: never part of the product.

    python bench/protocol_relay.py PORT WORKER_URL   (the worker's key in MINIMAL_RELAY_WORKER_KEY)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.glibc_malloc import set_malloc  # noqa: E402
from controller.__main__ import RELAY_MALLOC  # noqa: E402


IDLE_S = 3.0


class Upstream(asyncio.Protocol):
    """One kept-alive connection to the worker; relays one response at a time to `client`."""

    def __init__(self, pool: list[Upstream]):
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Downstream | None = None
        self.idle_since = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.client.transport.write(b"HTTP/1.1 %d OK\r\ncontent-type: text/event-stream\r\n"
                                    b"transfer-encoding: chunked\r\n\r\n" % self.parser.get_status_code())

    def on_body(self, chunk: bytes) -> None:
        self.client.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        client.transport.write(b"0\r\n\r\n")
        if self.parser.should_keep_alive():
            self.idle_since = time.monotonic()
            self.pool.append(self)
        else:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Downstream(asyncio.Protocol):
    """One client connection: parses a request, hands its body to an upstream connection."""

    def __init__(self, relay: Relay):
        self.relay = relay
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        self.relay.forward(self, body)


class Relay:
    def __init__(self, worker_url: str, key: str):
        target = urlsplit(worker_url)
        self.host, self.port = target.hostname, target.port
        self.head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {target.netloc}\r\n"
                     f"content-type: application/json\r\nauthorization: Bearer {key}\r\n").encode()
        self.idle: list[Upstream] = []

    def forward(self, client: Downstream, body: bytes) -> None:
        request = b"%bcontent-length: %d\r\n\r\n%b" % (self.head, len(body), body)
        while self.idle:
            upstream = self.idle.pop()
            # As the controller's client: a connection idle for 3 s is not used again, before the worker's keep-alive
            # (5 s) closes it under a request (with --tokens 60000 and five paths taking turns, one was)
            if time.monotonic() - upstream.idle_since < IDLE_S:
                self._send(upstream, client, request)
                return
            upstream.transport.close()
        connecting = asyncio.get_running_loop().create_connection(lambda: Upstream(self.idle), self.host, self.port)
        asyncio.ensure_future(connecting).add_done_callback(
            lambda done: self._send(done.result()[1], client, request))

    @staticmethod
    def _send(upstream: Upstream, client: Downstream, request: bytes) -> None:
        upstream.client = client
        upstream.transport.write(request)


async def serve(port: int, worker_url: str, key: str) -> None:
    relay = Relay(worker_url, key)
    server = await asyncio.get_running_loop().create_server(lambda: Downstream(relay), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    set_malloc(RELAY_MALLOC, "as the controller")
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2], os.environ.get("MINIMAL_RELAY_WORKER_KEY", "")))
