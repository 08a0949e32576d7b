"""A client that can leave at any moment: the request goes out on a plain socket, and `close()` drops the
connection whatever the server is doing (before its response headers too, which an HTTP client library only allows
once the headers are in)."""

from __future__ import annotations

import json
import socket
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
