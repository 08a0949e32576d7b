"""The least a Python relay on the controller's own stack can do, for bench/relay_floor.py: uvicorn (with the
controller's protocol class) takes a request, the controller's client (controller/worker_http.py) forwards its body
to one worker, and the worker's bytes go back as they come. No routing, counting, failover, limits or checks: what
is left of the controller's CPU per request once everything it does is taken away. Bench-only: never part of the
product. (Until 2026-12-05 it forwarded with aiohttp, the controller's client then: BENCHMARKS.md.)

    python bench/minimal_relay.py PORT WORKER_URL   (the worker's key in MINIMAL_RELAY_WORKER_KEY)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.bounded_http import bounded_http  # noqa: E402
from common.glibc_malloc import set_malloc  # noqa: E402
from controller.__main__ import RELAY_MALLOC  # noqa: E402
from controller.worker_http import WorkerClient  # noqa: E402


def relay_app(worker_url: str, worker_key: str):
    target = f"{worker_url}/v1/chat/completions"
    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {worker_key}"}
    session: list[WorkerClient] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                session.append(WorkerClient(connect_timeout_s=5.0))
                await send({"type": "lifespan.startup.complete"})
            await session[0].close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        response = await session[0].request("POST", target, body, auth)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(b"content-type", b"text/event-stream")]})
        while chunk := await response.readany():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        response.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


if __name__ == "__main__":
    set_malloc(RELAY_MALLOC, "as the controller")
    uvicorn.run(relay_app(sys.argv[2], os.environ.get("MINIMAL_RELAY_WORKER_KEY", "")), host="127.0.0.1",
                port=int(sys.argv[1]), http=bounded_http(), log_level="warning", access_log=False)
