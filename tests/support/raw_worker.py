"""A worker at the byte level, for the controller's client and relay tests: a server on loopback that reads each
request and lets the test write exactly the bytes, and in the writes, it likes."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.stack import free_port

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request from the connection, its body read and dropped; -> its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return head


@contextlib.asynccontextmanager
async def raw_server(answer):
    """A server on loopback that reads one request head and lets `answer(reader, writer)` write what it likes;
    -> (url, the connections it accepted)."""
    accepted: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            while True:
                await read_request(reader)
                await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/v1/chat/completions", accepted
