"""The relay token on the wire (issue 15, item 1), through the controller's real dispatcher and aiohttp client against
small HTTP servers on loopback: every relayed request carries the token its worker was issued, and a worker that
refuses it (it registered again since) is a failed attempt on that worker, never an "invalid API key" for the client."""

from __future__ import annotations

import random

from aiohttp import web

from common.errors import ErrorCode
from common.protocol import ModelCard, WorkerRegistration
from common.sse import payloads
from controller.app import worker_client
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.relay import Dispatcher
from controller.settings import ControllerSettings
from tests.support.loopback_workers import LoopbackWorkers, status, stream
from tests.support.stream_chunks import CHUNK

async def test_each_worker_gets_its_own_token_and_a_refused_token_fails_over():
    seen: dict[str, str] = {}

    def recording(name, behaviour):
        async def answer(request: web.Request):
            seen[name] = request.headers.get("X-Worker-Token", "")
            return await behaviour(request)
        return answer

    async with LoopbackWorkers() as workers:
        registry = Registry(expiry_s=60)
        for name, token, behaviour in (("stale", "t-stale", status(ErrorCode.UNAUTHORIZED)),
                                       ("good", "t-good", stream(CHUNK, "[DONE]"))):
            registry.register(WorkerRegistration(worker_id=name, url=await workers.start(recording(name, behaviour)),
                                                 models=[ModelCard(id="m")], max_concurrency=2), relay_token=token)
        settings = ControllerSettings(first_token_timeout_s=2, token_timeout_s=2)
        async with worker_client(settings) as client:
            dispatcher = Dispatcher(registry, ShortestQueue(random.Random(0)), client, settings)
            registry.get("good").external = 1  # busier: the stale worker is tried first
            up = await dispatcher.open(b'{"model": "m"}', "m", "rid")
            assert up.worker.worker_id == "good"  # the client never sees the worker's 401
            assert [e async for e in payloads(dispatcher.relay(up))]
    assert seen == {"stale": "t-stale", "good": "t-good"}
    assert registry.get("stale").failures >= 1
