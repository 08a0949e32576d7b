"""The controller's HTTP surface. Routes are thin: they check access, parse, and hand off to the registry or the
dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from common.auth import new_relay_token, refuse_relayed
from common.direct_body import DirectBody
from common.disconnect import ClientWatch
from common.http import (RELAY_INCLUDE_USAGE, RELAY_STREAM, check_api_key, install_error_handlers, parse_json_body,
                         read_body)
from common.logging_setup import install_request_ids, request_id_var
from common.metrics import Metrics, ModelLoad, install_metrics
from common.protocol import ModelList, WorkerHeartbeat, WorkerList, WorkerRegistration
from common.sse import SSEBytesResponse, payloads
from controller.admission import announce, check_registrant, check_worker_identity
from controller.aggregate import collect
from controller.chat_parts import MAX_KEY, SERVED_BY, conversation_of, early_start
from controller.direct_routes import CHAT_PATH, ControllerApp
from controller.fast_chat import HANDED_OVER, FastChat, HandedOver
from controller.policies import POLICIES, Affinity, Policy
from controller.registry import Registry
from controller.request_peek import peek_request
from controller.relay import Dispatcher
from controller.settings import ControllerSettings
from controller.worker_http import WorkerClient

log = logging.getLogger(__name__)


async def _expire_loop(registry: Registry) -> None:
    while True:  # (wakes when a worker could be due, not every few seconds: an idle controller's wakeups cost it CPU)
        await asyncio.sleep(max(registry.next_expiry_in(), 0.05))
        for worker_id in registry.expire():
            log.warning("worker %s missed its heartbeats for %.1f s and was removed", worker_id, registry.expiry_s)


def worker_client(settings: ControllerSettings) -> WorkerClient:
    """The one HTTP client to the workers (controller/worker_http.py): the relay reads every token through it."""
    return WorkerClient(settings.connect_timeout_s)


def make_policy(settings: ControllerSettings, rng: random.Random | None) -> Policy:
    if settings.dispatch_policy == "affinity":
        return Affinity(rng, max_excess=settings.affinity_max_excess)
    return POLICIES[settings.dispatch_policy](rng)


def create_app(settings: ControllerSettings, rng: random.Random | None = None) -> ControllerApp:
    registry = Registry(settings.heartbeat_expiry_s, breaker_failures=settings.breaker_failures,
                        breaker_cooldown_s=settings.breaker_cooldown_s)
    metrics = Metrics()
    metrics.track_load(lambda: sum(w.in_flight for w in registry.all()),
                       lambda: sum(w.queued for w in registry.all()))
    metrics.track_workers(lambda: sum(w.healthy for w in registry.all()),
                          lambda: sum(not w.healthy for w in registry.all()))

    def model_loads() -> dict[str, ModelLoad]:
        dispatcher: Dispatcher | None = getattr(app.state, "dispatcher", None)
        queue = dispatcher.queue if dispatcher is not None else None
        running = registry.running()
        models = {m for w in registry.all() for m in w.models} | set(running) | set(queue.models() if queue else ())
        loads = {}
        for model in models:
            in_line = queue.waiting(model) if queue else 0
            engines = sum(w.queued for w in registry.serving(model))
            loads[model] = ModelLoad(in_line, in_line + engines, running.get(model, 0))
        return loads

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with worker_client(settings) as client:
            app.state.dispatcher = Dispatcher(registry, make_policy(settings, rng), client, settings, metrics)
            loops = [asyncio.create_task(_expire_loop(registry)),
                     asyncio.create_task(app.state.dispatcher.queue.pump_while_waiting(0.25))]
            announce(settings)
            try:
                yield
            finally:
                for loop in loops:
                    loop.cancel()

    app = ControllerApp(title="InternVL controller", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    metrics.track_models(model_loads)
    install_error_handlers(app)
    install_metrics(app, metrics, settings.api_keys)
    install_request_ids(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "workers": len(registry.all()), "models": [c.id for c in registry.model_cards()]}

    @app.post("/workers/register")
    async def register(request: Request) -> dict:
        check_registrant(request, settings)  # before anything is parsed or probed
        reg = await parse_json_body(request, WorkerRegistration, 1024 * 1024)
        if settings.check_worker_reachable:
            await check_worker_identity(request.app.state.dispatcher.client, reg, settings,
                                        settings.connect_timeout_s)
        token = new_relay_token()
        registry.register(reg, relay_token=token)
        log.info("worker %s registered at %s serving %s", reg.worker_id, reg.url, [m.id for m in reg.models])
        return {"registered": reg.worker_id, "heartbeat_expiry_s": settings.heartbeat_expiry_s,
                "relay_token": token}

    async def heartbeat(request: Request) -> Response:
        check_registrant(request, settings)
        registry.heartbeat(await parse_json_body(request, WorkerHeartbeat, 64 * 1024))
        return JSONResponse({"ok": True})

    app.serve_ahead("/workers/heartbeat", heartbeat)  # each worker's every few seconds (controller/direct_routes.py)

    @app.post("/workers/unregister")
    async def unregister(request: Request) -> dict:
        check_registrant(request, settings)
        hb = await parse_json_body(request, WorkerHeartbeat, 64 * 1024)
        return {"removed": registry.remove(hb.worker_id)}

    @app.get("/workers")
    async def workers(request: Request) -> WorkerList:
        check_api_key(request, settings.api_keys)
        return WorkerList(workers=registry.status())

    @app.get("/queue/{request_id}")
    async def queue_position(request: Request, request_id: str) -> dict:
        """Where a request waits in the controller's line (the web UI polls it with the X-Request-ID it sent)."""
        check_api_key(request, settings.api_keys)
        place = request.app.state.dispatcher.queue.position(request_id)
        if place is None:
            return {"request_id": request_id, "queued": False}
        model, position, waiting = place
        return {"request_id": request_id, "queued": True, "model": model, "position": position, "waiting": waiting}

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        check_api_key(request, settings.api_keys)
        return ModelList(data=registry.model_cards(settings.max_body_bytes))

    async def chat_completions(request: Request) -> Response:
        # A request begun below ASGI (controller/fast_chat.py) comes with its first attempt under way: the dispatch
        # goes on with it; if this ends before (the client left meanwhile), it ends here (a no-op once dispatched)
        handed: HandedOver | None = request.scope.get("extensions", {}).pop(HANDED_OVER, None)
        try:
            return await answer(request, handed)
        except BaseException:
            if handed is not None:
                handed.begun.abandon()
            raise

    async def answer(request: Request, handed: HandedOver | None) -> Response:
        refuse_relayed(request)
        check_api_key(request, settings.api_keys)
        body = await read_body(request, settings.max_body_bytes)
        asked = await peek_request(body)  # the worker validates the rest; the body goes to it unchanged
        relay_headers = {RELAY_STREAM: "1"}  # workers always stream to us: failover and counting work alike
        if not asked.stream:
            relay_headers[RELAY_INCLUDE_USAGE] = "1"  # the one answer carries usage
        dispatcher: Dispatcher = request.app.state.dispatcher
        # request_id_var: set by RequestIdMiddleware, forwarded to the worker for its logs
        peer = request.scope.get("client")
        client = asked.user or (peer[0] if peer else "")  # takes turns in the waiting line
        # A stream under our server starts from inside the dispatch, its head with its first event (early_start)
        if handed is not None:
            direct = handed.direct
        else:
            direct = DirectBody.unstarted(request.scope) if asked.stream else None
        opened = dispatcher.open(body, asked.model, request_id_var.get(), relay_headers,
                                 conversation_of(request, asked), client[:MAX_KEY],
                                 early_start(dispatcher, direct, request.scope) if direct is not None else None,
                                 handed and handed.begun)
        # One watch from here to the answer's end (common/disconnect.py)
        watch = ClientWatch(request.receive, request.scope)
        try:
            upstream = await watch.guard(opened)
            blocks = dispatcher.relay(upstream)
            served_by = {SERVED_BY: upstream.worker.worker_id}  # for logs and the UI's conversation log
            if asked.stream:
                response, watch = SSEBytesResponse(blocks, served_by, watch, direct), None  # it watches on, stops it
                return response
            try:
                completion = await watch.guard(collect(payloads(blocks), asked.model))
            finally:
                await blocks.aclose()
        finally:
            if watch is not None:
                watch.stop()
        return JSONResponse(completion.model_dump(exclude_none=True), headers=served_by)

    app.serve_ahead(CHAT_PATH, chat_completions)  # every chat request's (controller/direct_routes.py)
    app.below_asgi = FastChat(app, CHAT_PATH)  # the usual one's, from the connection's callbacks (fast_chat.py)
    return app
