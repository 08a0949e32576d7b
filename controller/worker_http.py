"""The controller's HTTP/1.1 client to its workers: kept-alive connections on the event loop's own transports and
httptools' C parser (the one uvicorn uses), with no task, stream object or coroutine of its own per read.

The relay reads every token of every answer through this client, so its cost per request and per read is the
controller's. aiohttp's client, used before, was ~40% of the controller's CPU per request: a relay on uvicorn with
aiohttp took 770 us per request where the same relay with a client on raw protocols took 445 us (bench/relay_floor.py,
"minimal relay" and "hybrid" in BENCHMARKS.md). The relay needs little of what a general client does: one request at
a time per connection to a known worker, no redirects, cookies, proxies or decompression. This is that, and only
that: a request written in one go (a large body in slices the socket takes as it can), the status once the headers
have come, the body as the network brings it, bounded both ways (headers, error bodies, unread bytes). This file
holds the pool and the requests; one connection and the response under way on it are controller/worker_connection.py's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import urlsplit

from controller.worker_connection import Connection, WorkerResponse, WorkerUnreachable

_SLICE = 256 * 1024  # a large request body goes in slices: no step copies it whole
_READ_SIZE = 256 * 1024  # the most one network read takes (the event loop's own reads take as much)


@lru_cache(maxsize=1024)  # a handful of worker URLs, each parsed once
def _target(url: str) -> tuple[tuple[str, int, bool], str, str]:
    """((host, port, tls), request path, Host header value) of an http:// or https:// URL; the path and the Host
    value as their UTF-8 bytes, one character each (the request's head is encoded as latin-1 in one go)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a worker URL: {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ((parts.hostname, parts.port or (443 if tls else 80), tls), path.encode().decode("latin-1"),
            parts.netloc.encode().decode("latin-1"))


class WorkerClient:
    """Connections kept alive per worker, dropped after `idle_s` unused: sooner than the workers drop them (uvicorn's
    keep-alive, 5 s), so a request never goes out on a connection the worker is closing."""

    def __init__(self, connect_timeout_s: float, idle_s: float = 3.0):
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self.read_buffer = memoryview(bytearray(_READ_SIZE))  # every connection's reads land here (`Connection`)
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._tls: ssl.SSLContext | None = None

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def request(self, method: str, url: str, body: bytes | bytearray = b"",
                      headers: dict[str, str] | None = None,
                      early: Callable[[WorkerResponse], None] | None = None) -> WorkerResponse:
        """Send the request; the response once its headers have come. Cancelled or failed, the connection closes.
        `early` is called from the connection's own callback each time body bytes arrive before this returns: the
        caller's chance to act on the response's first bytes with no task woken (the relay's first event, issue 26);
        it may take them (`deliver_to`); its connection goes back to the pool no sooner than this returns."""
        key, path, host = _target(url)
        head = _head(method, path, host, headers, body)
        conn = self._take(key) or await self._connect(key)
        conn.early = early
        return await self.response(conn, head, body)

    def send_now(self, url: str, body: bytes | bytearray, headers: dict[str, str],
                 early: Callable[[WorkerResponse], None]) -> Connection | None:
        """A POST of a small body written in one go, from the caller's step, on a connection kept alive; None (and
        nothing sent) when none is idle: `send`. The connection tells `early` of body bytes, and `Connection.watcher`
        of anything new, until its response is taken (`response`) or its owner lets go of them. The request served
        from the server's callbacks starts here (controller/fast_chat.py)."""
        key, head = _post(url, headers, body)
        conn = self._take(key)
        if conn is not None:
            _start(conn, head + body, early)
        return conn

    async def send(self, url: str, body: bytes | bytearray, headers: dict[str, str],
                   early: Callable[[WorkerResponse], None]) -> Connection:
        """`send_now`, on a new connection when none is idle. WorkerUnreachable when none can be made."""
        key, head = _post(url, headers, body)
        conn = self._take(key) or await self._connect(key)
        _start(conn, head + body, early)
        return conn

    async def response(self, conn: Connection, head: bytes = b"", body: bytes | bytearray = b"") -> WorkerResponse:
        """The response to the request on `conn` once its headers have come (see `request`): written here first
        when given (`head`, `body`), else written already (`send_now`)."""
        conn.requesting = True
        try:
            if head:
                await self._write(conn, head, body)
            while not conn.status:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
            conn.early = None
            return WorkerResponse.of(conn)
        except BaseException:
            conn.early = None
            if not conn.handed_over():  # (else the response is its consumer's, which ends it)
                conn.transport.abort()
            raise
        finally:
            conn.requesting = False
            if conn.put_back_asked:
                conn.put_back_asked = False
                self.put_back(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.transport.abort()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' connection_lost callbacks run

    # -- pool
    def _take(self, key: tuple[str, int, bool]) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_s and not conn.transport.is_closing():
                conn.reset()
                return conn
            conn.transport.close()
        return None

    async def _connect(self, key: tuple[str, int, bool]) -> Connection:
        host, port, tls = key
        loop = asyncio.get_running_loop()
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: Connection(self, key, loop), host, port,
                                                       ssl=self._tls if tls else None)
        except TimeoutError as exc:
            raise WorkerUnreachable(f"no connection to {host}:{port} within {self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            raise WorkerUnreachable(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        self._open.add(conn)
        return conn

    def put_back(self, conn: Connection) -> None:
        if conn.requesting:
            conn.put_back_asked = True  # (`request` puts it back as it returns)
            return
        if conn.complete and not conn.chunks and conn.error is None and conn.keep_alive \
                and not conn.transport.is_closing() and conn in self._open:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.transport.abort()

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    @staticmethod
    async def _write(conn: Connection, head: bytes, body: bytes | bytearray) -> None:
        if len(body) <= _SLICE:
            conn.transport.write(head + body if body else head)
            return
        conn.transport.write(head)
        view = memoryview(body)  # not released here: the transport may still hold slices of it
        for at in range(0, len(view), _SLICE):
            if conn.error is not None:
                raise conn.error
            conn.transport.write(view[at:at + _SLICE])
            if conn.drained is not None:
                await conn.drained


def _post(url: str, headers: dict[str, str], body: bytes | bytearray) -> tuple[tuple[str, int, bool], bytes]:
    """(the pool's key, the request's head) of a POST to `url` (its head made before any connection is taken)."""
    key, path, host = _target(url)
    return key, _head("POST", path, host, headers, body)


def _start(conn: Connection, request: bytes, early: Callable[[WorkerResponse], None]) -> None:
    conn.early = early
    conn.transport.write(request)


def _head(method: str, path: str, host: str, headers: dict[str, str] | None, body: bytes | bytearray) -> bytes:
    """A request's line and headers. ValueError for a header value with a line break."""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"]  # (one encode for the head, not two a line)
    for name, value in (headers or {}).items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
