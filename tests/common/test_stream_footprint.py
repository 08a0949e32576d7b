"""What an open worker stream holds while it waits for its next token (issue 26): its request's task and the
coalescer's reader, no more. Under 500 streams a worker's every task, cancel scope and exit stack is walked by each
of its cycle collector's full collections, and those pauses stalled every stream it served: sse-starlette's response
ran four more tasks per stream (a task group) and a cancel scope per event."""

from __future__ import annotations

import asyncio
import gc

from fastapi import FastAPI

from common.bounded_http import bounded_http
from common.sse import DONE, sse_response
from tests.support.served_app import served, until

STREAMS = 40


async def test_an_open_stream_holds_two_tasks_and_few_objects():
    started, release = [], asyncio.Event()

    async def events(i: int):
        yield f"token {i}"
        started.append(i)
        await release.wait()  # the next token is not there yet
        yield DONE

    app = FastAPI()
    app.get("/s/{i}")(lambda i: sse_response(events(int(i)), interval_s=0.005))
    async with served(app, http=bounded_http()) as url:
        port = int(url.rsplit(":", 1)[1])
        gc.collect()
        tasks_before, objects_before = len(asyncio.all_tasks()), len(gc.get_objects())
        conns = []
        for i in range(STREAMS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /s/{i} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            conns.append((reader, writer))
        await until(lambda: len(started) == STREAMS, 10, "every stream sent its first token")
        for reader, _ in conns:  # each client has its first event: the stream waits on its source
            got = b""
            while b"data: token" not in got:
                got += await asyncio.wait_for(reader.read(65536), 10)
        gc.collect()
        tasks = (len(asyncio.all_tasks()) - tasks_before) / STREAMS
        objects = (len(gc.get_objects()) - objects_before) / STREAMS
        release.set()
        for reader, writer in conns:
            got = b""
            async with asyncio.timeout(10):
                while b"data: [DONE]" not in got:
                    got += await reader.read(65536)
            writer.close()
    print(f"per open stream: {tasks:.1f} tasks, {objects:.0f} objects tracked by the cycle collector")
    assert tasks <= 2, f"{tasks:.1f} tasks per open stream"  # 6 with sse-starlette
    assert objects <= 220, f"{objects:.0f} objects per open stream"  # 312 with sse-starlette
