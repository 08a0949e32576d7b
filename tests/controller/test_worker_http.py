"""controller/worker_http.py and worker_connection.py, the controller's client to its workers, against real servers
on loopback: what a worker that misbehaves can and cannot do to the controller (the relay's own behaviour, on top of
this client, is tested in test_relay_*.py, test_cancellation.py and test_faults.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from controller.worker_connection import (_HIGH_WATER, MAX_HEAD_BYTES, WorkerConnectionError, WorkerResponse,
                                          WorkerUnreachable)
from controller.worker_http import WorkerClient
from tests.support.raw_worker import OK_HEAD, chunk, raw_server
from tests.support.stack import free_port

async def one_event(reader, writer) -> None:
    writer.write(OK_HEAD + chunk(b"data: [DONE]\r\n\r\n") + b"0\r\n\r\n")
    await writer.drain()


async def test_a_connection_idle_past_its_limit_is_not_used_again():
    async with raw_server(one_event) as (url, accepted), WorkerClient(connect_timeout_s=2, idle_s=0.3) as client:
        for _ in range(2):  # back to back: one connection
            response = await client.request("POST", url, b"{}")
            assert await response.readany() == b"data: [DONE]\r\n\r\n" and await response.readany() == b""
            response.release()
        assert len(accepted) == 1
        idle_from = time.monotonic()
        while time.monotonic() - idle_from < 0.35:  # past idle_s (the worker's own limit is later: 5 s)
            await asyncio.sleep(0.05)
        response = await client.request("POST", url, b"{}")
        await response.read(1024)
        response.release()
        assert len(accepted) == 2


async def test_a_response_head_past_the_limit_is_a_connection_error_not_memory():
    async def huge_head(reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(MAX_HEAD_BYTES // 1000 + 8):
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000))
        writer.write(b"\r\n")
        await writer.drain()

    async with raw_server(huge_head) as (url, _), WorkerClient(connect_timeout_s=2) as client:
        with pytest.raises(WorkerConnectionError, match="over 64 KiB"):
            await client.request("POST", url, b"{}")


async def test_an_answer_that_is_not_http_is_a_connection_error():
    async def garbage(reader, writer) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as (url, _), WorkerClient(connect_timeout_s=2) as client:
        with pytest.raises(WorkerConnectionError, match="not valid HTTP"):
            await client.request("POST", url, b"{}")


async def test_a_worker_that_closes_mid_body_is_a_connection_error_after_what_it_sent():
    async def cut(reader, writer) -> None:
        writer.write(OK_HEAD + chunk(b"data: 1\r\n\r\n"))
        await writer.drain()
        writer.close()

    async with raw_server(cut) as (url, _), WorkerClient(connect_timeout_s=2) as client:
        response = await client.request("POST", url, b"{}")
        assert await response.readany() == b"data: 1\r\n\r\n"
        with pytest.raises(WorkerConnectionError, match="closed the connection"):
            await response.readany()
        response.close()


async def test_nothing_listening_is_unreachable():
    async with WorkerClient(connect_timeout_s=2) as client:
        with pytest.raises(WorkerUnreachable, match="cannot connect"):
            await client.request("POST", f"http://127.0.0.1:{free_port()}/v1/chat/completions", b"{}")


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    async with raw_server(one_event) as (url, accepted), WorkerClient(connect_timeout_s=2) as client:
        with pytest.raises(ValueError, match="line break"):
            await client.request("POST", url, b"{}", {"X-Request-ID": "a\r\nX-Injected: 1"})


async def test_a_worker_faster_than_its_reader_is_held_back_and_nothing_is_lost():
    total = 24 * 1024 * 1024
    blocked = asyncio.Event()

    async def flood(reader, writer) -> None:
        writer.write(OK_HEAD)
        piece = b"x" * 65536
        for _ in range(total // len(piece)):
            writer.write(chunk(piece))
            if writer.transport.get_write_buffer_size() > 4 * 1024 * 1024:
                blocked.set()  # the client stopped taking bytes: they wait on the worker's side
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(flood) as (url, _), WorkerClient(connect_timeout_s=2) as client:
        response = await client.request("POST", url, b"{}")
        await asyncio.wait_for(blocked.wait(), timeout=30)  # nobody reads: the worker is held back...
        held = response.read_nowait()
        assert 0 < len(held) <= _HIGH_WATER + 256 * 1024  # ...and the controller holds about one megabyte
        got = len(held)
        while data := await response.readany():
            got += len(data)
        assert got == total and response.at_eof()
        response.release()


async def test_a_head_whose_end_spans_two_reads_is_not_counted_with_the_body_after_it():
    """The head's size is counted by the read: its blank line cut between two reads, with more than the head's
    limit of body after it in the second, is a head of a few bytes."""
    body = b"x" * (MAX_HEAD_BYTES + 1000)

    async def split_end(reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r" % len(body))
        await writer.drain()
        await asyncio.sleep(0.2)  # two reads
        writer.write(b"\n" + body)
        await writer.drain()

    async with raw_server(split_end) as (url, _), WorkerClient(connect_timeout_s=2) as client:
        response = await client.request("POST", url, b"{}")
        assert response.status == 200 and await response.read(len(body) + 1) == body
        response.release()


class _ThreadedWorker:
    """A worker in its own thread (blocking sockets), so it can answer while the client's event loop is held: the
    first request's answer waits for `go_first`, whole in one write; every later one is answered at once."""

    ANSWER = OK_HEAD + chunk(b"data: [DONE]\r\n\r\n") + b"0\r\n\r\n"

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/chat/completions"
        self.requests = 0
        self.go_first, self.first_sent = threading.Event(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                reader.read(length)
                self.requests += 1
                if self.requests == 1:
                    self.go_first.wait(10)
                conn.sendall(self.ANSWER)
                if self.requests == 1:
                    self.first_sent.set()

    def close(self) -> None:
        self.listener.close()


async def test_an_answer_taken_early_and_over_before_its_request_wakes_leaves_the_connection_to_the_next_request():
    """The relay takes a stream from the connection's own callback (`early`) the moment its first event is there; a
    short answer can come whole in that read, be relayed to its end and its connection released, all before its
    request's task has woken for the head. A request that took that connection from the pool in between (its task
    ran first) had its wake-up taken by the first one and waited for nothing (issue 26)."""
    worker = _ThreadedWorker()
    loop = asyncio.get_running_loop()
    taken: list[WorkerResponse] = []

    class Relayed:  # what the relay's stream does with a response taken early: reads it to its end, releases it
        def __init__(self, response: WorkerResponse):
            self.response = response
            response.deliver_to(self)

        def body_received(self, data: bytes) -> None:
            pass

        def body_ended(self, error) -> None:
            self.response.release()

    def early(response: WorkerResponse) -> None:
        if not taken:
            taken.append(response)
            Relayed(response)

    second: list[asyncio.Future] = []
    trigger, pull = socket.socketpair()
    pull.setblocking(False)

    def start_second() -> None:
        loop.remove_reader(pull)
        second.append(asyncio.ensure_future(client.request("POST", worker.url, b"{}")))

    try:
        async with WorkerClient(connect_timeout_s=2) as client:
            first = asyncio.ensure_future(client.request("POST", worker.url, b"{}", early=early))
            while worker.requests < 1:
                await asyncio.sleep(0.01)
            # Held here, the loop's next poll sees two sockets ready, in this order: the one that starts the second
            # request (its task runs first), then the first answer, whole
            loop.add_reader(pull, start_second)
            trigger.send(b"x")
            worker.go_first.set()
            assert worker.first_sent.wait(5)
            time.sleep(0.05)  # (the bytes are in the socket: nothing else to wait for)
            assert await asyncio.wait_for(first, 5) is taken[0]
            while not second:
                await asyncio.sleep(0.01)
            response = await asyncio.wait_for(second[0], 5)
            assert response is not taken[0] and response.status == 200
            assert await response.read(1024) == b"data: [DONE]\r\n\r\n"
            response.release()
    finally:
        trigger.close()
        pull.close()
        worker.close()
