"""The worker's HTTP surface: the same OpenAI-compatible chat API as the controller, plus /health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from common.auth import WorkerAccess
from common.errors import ServingError
from common.http import RELAY_INCLUDE_USAGE, RELAY_STREAM, install_error_handlers
from common.logging_setup import install_request_ids, request_id_var
from common.metrics import Metrics, install_metrics
from common.protocol import ChatCompletionRequest, ModelCard, ModelList, StreamOptions
from workers.body_parser import BodyParser
from workers.chat_response import ChatResponse
from workers.engines.base import Engine
from workers.limits import MediaLimits
from workers.registration import Registrar, controller_client
from workers.serving import ChatService
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


def model_card(engine: Engine, limits: MediaLimits) -> ModelCard:
    spec = engine.spec
    return ModelCard(id=engine.model_id, family=spec.family, engine=engine.name, context_length=engine.context_length,
                     random_weights=spec.random_weights, limits=limits.advertised(engine.context_length),
                     capabilities=["vision", "video"] + (["thinking"] if spec.thinking else []))


def relayed(req: ChatCompletionRequest, request: Request) -> ChatCompletionRequest:
    """The controller forwards its client's body unchanged and asks in headers for what it needs on top: always a
    stream (so failover and counting work alike), and the usage event when its client wants one answer."""
    if request.headers.get(RELAY_STREAM) != "1":
        return req
    update: dict = {} if req.stream else {"stream": True}
    if request.headers.get(RELAY_INCLUDE_USAGE) == "1":
        update["stream_options"] = StreamOptions(include_usage=True)
    return req.model_copy(update=update) if update else req  # (a copy costs ~50 us on every relayed first token)


def create_app(settings: WorkerSettings, engine: Engine) -> FastAPI:
    metrics = Metrics()
    service = ChatService(engine, settings, metrics)
    metrics.track_load(lambda: service.in_flight, lambda: service.queued)
    metrics.track_media_cache(service.media_cache)
    bodies = BodyParser(settings.body_parsers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await bodies.start()
        if engine.spec.random_weights:
            log.warning("SERVING THE DEMO CHECKPOINT: its weights are random and its answers are noise")
        async with controller_client() as client:
            registrar = None
            task = None
            if settings.controller_url:
                registrar = Registrar(settings, client, model_card(engine, service.limits),
                                      lambda: (service.in_flight, service.queued))
                task = asyncio.create_task(registrar.run())
            app.state.registrar = registrar
            try:
                yield
            finally:
                if task is not None:
                    task.cancel()
                    await registrar.unregister()
                bodies.stop()
                await engine.stop()

    app = FastAPI(title="InternVL worker", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.service = service
    app.state.registrar = None
    access = WorkerAccess(settings.api_keys, settings.controller_url,
                          lambda: app.state.registrar.relay_token if app.state.registrar else None)
    install_error_handlers(app)
    install_metrics(app, metrics, access.check)
    install_request_ids(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            await engine.check_health()
        except ServingError as err:
            return JSONResponse(err.body(), status_code=503)
        registrar = app.state.registrar
        return JSONResponse({"status": "ok", "worker_id": settings.worker_id, "model": engine.model_id,
                             "engine": engine.name, "in_flight": service.in_flight, "queued": service.queued,
                             "stages": service.slots.stages(), "engine_running": engine.running,
                             "preprocess_pixels": service.slots.pixels.in_use,
                             "random_weights": engine.spec.random_weights,
                             "registered": registrar.registered if registrar else None,
                             "registration_problem": registrar.problem if registrar else None})

    @app.get("/v1/models")
    async def models() -> ModelList:  # open, like /health (which names the model too)
        return ModelList(data=[model_card(engine, service.limits)])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        access.check(request)
        req = relayed(await bodies.parse(request, service.limits.max_body_bytes, engine.context_length,
                                         engine.max_token_chars), request)
        service.refuse_wrong(req)
        # The client's (or controller's) X-Request-ID names the request in the logs; the engine's key is the slot's.
        return ChatResponse(service, req, request_id_var.get(), settings.stream_interval_ms / 1000)

    return app
