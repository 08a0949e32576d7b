"""Clients on plain sockets, for what an HTTP client library will not do: leave at any moment (before the response
headers too), send headers that never end, or a body shorter than it declared."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.parse


class LeavingClient:
    def __init__(self, url: str, path: str, body: dict, headers: dict[str, str] | None = None):
        parts = urllib.parse.urlsplit(url)
        payload = json.dumps(body).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Content-Type: application/json",
                 f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.sendall("\r\n".join(lines).encode() + payload)

    def read_some(self, nbytes: int = 65536) -> bytes:
        return self.sock.recv(nbytes)

    def close(self) -> None:
        self.sock.close()


class RawClient:
    """One HTTP/1.1 request (a chat request unless another path is given) on its own socket, in asyncio; `leave()`
    closes the socket."""

    async def send(self, base_url: str, payload: dict, path: str = "/v1/chat/completions") -> RawClient:
        url, body = urllib.parse.urlsplit(base_url), json.dumps(payload).encode()
        self.reader, self.writer = await asyncio.open_connection(url.hostname, url.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
        await self.writer.drain()
        return self

    async def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        data = b""
        async with asyncio.timeout(timeout):
            while marker not in data:
                chunk = await self.reader.read(65536)
                assert chunk, f"connection ended before {marker!r}: {data!r}"
                data += chunk
        return data

    async def leave(self) -> float:
        self.writer.close()
        await self.writer.wait_closed()
        return time.monotonic()


async def read_to_close(url: str, data: bytes, timeout: float = 10) -> bytes:
    """`data` sent on a connection of its own; everything the server sends back, until it closes the connection."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def send_until_refused(sock: socket.socket, head: bytes, filler: bytes, limit: int) -> int:
    """Send `head`, then `filler` over and over (at most `limit` bytes in all) until the server stops taking it;
    returns how many bytes went out."""
    sent = 0
    try:
        sock.sendall(head)
        sent = len(head)
        while sent < limit:
            sock.sendall(filler)
            sent += len(filler)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within `timeout` s."""
    deadline = time.monotonic() + timeout
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


def status_of(response: bytes) -> int | None:
    """The status of the last response in `response` (an interim 100 Continue may come first)."""
    lines = [ln for ln in response.split(b"\r\n") if ln.startswith(b"HTTP/1.")]
    return int(lines[-1].split()[1]) if lines else None


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")
