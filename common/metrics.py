"""Prometheus metrics for the controller and the workers, served at `/metrics`.

Both processes expose the same metric names (Prometheus tells them apart by job/instance):

    internvl_http_requests_total{route,method,status}   every HTTP answer, by route template (not raw path)
    internvl_errors_total{code}                         ServingError codes: HTTP error answers and mid-stream errors
    internvl_requests_in_flight                         chat requests being answered right now
    internvl_requests_queued                            requests waiting inside engines (as the engines report it)
    internvl_time_to_first_token_seconds                request arrival -> first generated token
    internvl_generation_tokens_per_second               completion tokens / (finish - first token)
    internvl_workers{state}                             controller only: registered workers, healthy or unhealthy
    internvl_queue_length{model}                        controller only: requests waiting in its line for a worker
    internvl_queue_wait_seconds                         controller only: time each request spent in that line
    internvl:num_requests_running{model}                controller only: requests being answered, by model
    internvl:num_requests_waiting{model}                controller only: requests waiting, in its line or inside
                                                        the engines of the model's workers (named like vLLM's
                                                        autoscaling metrics)
    internvl_media_cache_hits_total                     workers only: media whose preprocessed pixels were reused
    internvl_media_cache_misses_total                   workers only: media decoded and preprocessed
    internvl_media_cache_bytes                          workers only: bytes of pixels the media cache holds

Each app owns its own CollectorRegistry (never the global one), so several apps can live in one process (tests,
the Space's in-process mode) without clashing registrations.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, GCCollector, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import ErrorCode, ServingError
from common.http import check_api_key

disable_created_metrics()  # the `*_created` timestamp series only double the output; Prometheus does not need them

QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 120)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("internvl_http_requests", "HTTP requests answered, by route template and status",
                                ["route", "method", "status"], registry=r)
        # (route template, method, status) -> its counter: as bounded as the label sets (the parser knows only the
        # standard methods)
        self._request_counters: dict[tuple[str, str, int], Counter] = {}
        self.errors = Counter("internvl_errors", "errors by ServingError code (HTTP error answers and "
                              "mid-stream error events)", ["code"], registry=r)
        self.in_flight = Gauge("internvl_requests_in_flight", "chat requests being answered", registry=r)
        self.queued = Gauge("internvl_requests_queued", "requests waiting inside engines", registry=r)
        self.ttft = Histogram("internvl_time_to_first_token_seconds", "request arrival to first generated token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.speed = Histogram("internvl_generation_tokens_per_second", "completion tokens per second after the "
                               "first token, per request", buckets=SPEED_BUCKETS, registry=r)
        GCCollector(registry=r)  # python_gc_*: collections and what they found, per generation
        Gauge("internvl_gc_frozen_objects", "objects kept out of the cycle collector's walks (frozen once the "
              "server had started: common/serve.py)", registry=r).set_function(gc.get_freeze_count)
        threshold = Gauge("internvl_gc_threshold", "the cycle collector's thresholds (common/serve.py): generation 0 "
                          "is collected after this many new objects, an older one after this many collections of "
                          "the one below", ["generation"], registry=r)
        for generation in range(3):
            threshold.labels(str(generation)).set_function(lambda g=generation: gc.get_threshold()[g])
        self.workers: Gauge | None = None
        self.queue_wait: Histogram | None = None

    def track_load(self, in_flight: Callable[[], float], queued: Callable[[], float]) -> None:
        """Gauges read at scrape time from the owner's own counters, so they can never drift."""
        self.in_flight.set_function(in_flight)
        self.queued.set_function(queued)

    def track_workers(self, healthy: Callable[[], float], unhealthy: Callable[[], float]) -> None:
        self.workers = Gauge("internvl_workers", "workers registered with the controller", ["state"],
                             registry=self.registry)
        self.workers.labels("healthy").set_function(healthy)
        self.workers.labels("unhealthy").set_function(unhealthy)

    def track_models(self, by_model: Callable[[], dict[str, ModelLoad]]) -> None:
        """The controller's per-model gauges and its waiting line's wait histogram."""
        self.queue_wait = Histogram("internvl_queue_wait_seconds", "time a request waited in the controller's line "
                                    "for a free worker", buckets=QUEUE_BUCKETS, registry=self.registry)
        self.registry.register(_ModelLoadCollector(by_model))

    def observe_queue_wait(self, seconds: float) -> None:
        if self.queue_wait is not None:
            self.queue_wait.observe(seconds)

    def track_media_cache(self, cache: CacheCounts) -> None:
        """The worker's media cache counters, read at scrape time from the cache itself."""
        self.registry.register(_MediaCacheCollector(cache))

    def count_request(self, scope: dict, status: int) -> None:
        """One answered HTTP request, by its route's template (scope["route"]), method and status."""
        # Route templates only: raw paths of 404s would let any client grow the label set without bound.
        name = getattr(scope.get("route"), "path", None) or "unmatched"
        key = (name, scope.get("method", ""), status)
        counter = self._request_counters.get(key)
        if counter is None:  # (`labels` takes a lock and a dozen calls: one per label set, not per request)
            counter = self._request_counters[key] = self.requests.labels(name, key[1], str(status))
        counter.inc()

    def count_error(self, code: ErrorCode | str) -> None:
        self.errors.labels(str(ErrorCode(code).value if isinstance(code, ErrorCode) else code)).inc()

    def observe_first_token(self, started: float) -> None:
        self.ttft.observe(max(time.monotonic() - started, 0.0))

    def observe_speed(self, completion_tokens: int, first_token_at: float) -> None:
        """Skipped for answers too short to time (one token, or finished in the same instant)."""
        elapsed = time.monotonic() - first_token_at
        if completion_tokens > 1 and elapsed > 1e-4:
            self.speed.observe((completion_tokens - 1) / elapsed)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ModelLoad:
    in_line: int  # waiting in the controller's line
    waiting: int  # in the line, or inside the engines of the model's workers
    running: int  # being answered through the controller


class _ModelLoadCollector:
    def __init__(self, by_model: Callable[[], dict[str, ModelLoad]]):
        self.by_model = by_model

    def collect(self):
        loads = self.by_model()
        families = [
            GaugeMetricFamily("internvl_queue_length", "requests waiting in the controller's line", labels=["model"]),
            GaugeMetricFamily("internvl:num_requests_waiting", "requests waiting for a worker or inside the engines "
                              "of the model's workers", labels=["model"]),
            GaugeMetricFamily("internvl:num_requests_running", "requests being answered through the controller",
                              labels=["model"])]
        for model, load in sorted(loads.items()):
            for family, value in zip(families, (load.in_line, load.waiting, load.running)):
                family.add_metric([model], value)
        yield from families


class CacheCounts(Protocol):
    hits: int
    misses: int
    held_bytes: int


class _MediaCacheCollector:
    def __init__(self, cache: CacheCounts):
        self.cache = cache

    def collect(self):
        yield CounterMetricFamily("internvl_media_cache_hits", "media whose preprocessed pixels came from the cache",
                                  value=self.cache.hits)
        yield CounterMetricFamily("internvl_media_cache_misses", "media decoded and preprocessed (not in the cache)",
                                  value=self.cache.misses)
        yield GaugeMetricFamily("internvl_media_cache_bytes", "bytes of pixels held by the media cache",
                                value=self.cache.held_bytes)


class CountRequests:
    """Pure ASGI middleware (no response buffering, so SSE streams pass through untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.count_request(scope, status)


def install_metrics(app: FastAPI, metrics: Metrics, access: list[str] | Callable[[Request], None]) -> None:
    """Count requests and errors on `app` and serve `/metrics` behind `access`: API keys (none: open), or a check
    that raises ServingError (a worker's: its keys or the controller's relay token).

    Call after `install_error_handlers`: the ServingError handler is wrapped so every error answer is counted by code.
    """
    app.state.metrics = metrics
    app.add_middleware(CountRequests, metrics=metrics)
    render_error = app.exception_handlers[ServingError]

    async def counted(request: Request, exc: Exception):
        assert isinstance(exc, ServingError)
        metrics.count_error(exc.code)
        return await render_error(request, exc)

    app.add_exception_handler(ServingError, counted)
    render_unexpected = app.exception_handlers.get(Exception)
    if render_unexpected is not None:
        async def counted_unexpected(request: Request, exc: Exception):
            metrics.count_error(ErrorCode.INTERNAL)
            return await render_unexpected(request, exc)

        app.add_exception_handler(Exception, counted_unexpected)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route(request: Request) -> Response:
        if callable(access):
            access(request)
        else:
            check_api_key(request, access)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
