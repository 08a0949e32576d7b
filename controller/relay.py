"""Dispatch one chat request to a worker and relay its stream.

Workers answer with HTTP headers only once their first token exists (or with an error status), so everything that
can go wrong before the first token is seen here as a failed attempt, and the request moves to another worker.
After the first token the stream belongs to that worker: a failure becomes one error event, then the end marker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource

from common.errors import ErrorCode, ServingError, error_body
from common.http import DONE
from common.metrics import Metrics
from controller.policies import Policy
from controller.registry import Registry, WorkerRecord
from controller.settings import ControllerSettings

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """An open worker stream whose first event has arrived."""

    worker: WorkerRecord
    response: httpx.Response
    events: AsyncIterator[Any]
    first: str
    first_at: float = 0.0  # monotonic time the first event arrived (tokens/s is measured from here)


class Dispatcher:
    def __init__(self, registry: Registry, policy: Policy, client: httpx.AsyncClient, settings: ControllerSettings,
                 metrics: Metrics | None = None):
        self.registry = registry
        self.policy = policy
        self.client = client
        self.settings = settings
        self.metrics = metrics or Metrics()

    async def open(self, body: dict[str, Any], model: str, request_id: str) -> Upstream:
        serving = self.registry.serving(model)
        if not serving:
            raise self._no_such_model(model)
        tried: set[str] = set()
        last: ServingError | None = None
        started = time.monotonic()
        for _ in range(self.settings.max_attempts):
            worker = self.policy.choose([w for w in self.registry.serving(model) if w.worker_id not in tried])
            if worker is None:
                break
            tried.add(worker.worker_id)
            self.registry.acquire(worker)
            try:
                upstream = await self._connect(worker, body, request_id)
                self.metrics.observe_first_token(started)
                return upstream
            except ServingError as err:
                self.registry.release(worker, ok=False)
                log.warning("request %s: worker %s failed before the first token: %s", request_id,
                            worker.worker_id, err.message)
                if not err.retryable:
                    raise
                last = err
        if last is not None:
            raise ServingError(ErrorCode.NO_WORKER, f"every worker tried for model '{model}' failed before "
                               f"answering ({len(tried)} tried); last error: {last.message}")
        busy = [w for w in self.registry.serving(model) if w.healthy and w.in_flight >= w.max_concurrency]
        if busy:
            raise ServingError(ErrorCode.WORKER_BUSY, f"all workers serving '{model}' are at capacity; "
                               "retry in a few seconds")
        raise ServingError(ErrorCode.NO_WORKER, f"no healthy worker is serving '{model}' right now; "
                           "its workers stopped answering (check their logs or start one)")

    def _no_such_model(self, model: str) -> ServingError:
        cards = self.registry.model_cards()
        if not cards:
            return ServingError(ErrorCode.NO_WORKER, "no worker is registered with the controller; start one with "
                                "`python -m workers --model-path PATH` or ./launch.sh")
        names = ", ".join(c.id for c in cards)
        return ServingError(ErrorCode.MODEL_NOT_FOUND, f"model '{model}' is not served here; available: {names}",
                            param="model")

    async def _connect(self, worker: WorkerRecord, body: dict[str, Any], request_id: str) -> Upstream:
        s = self.settings
        timeout = httpx.Timeout(connect=s.connect_timeout_s, read=s.first_token_timeout_s, write=30.0, pool=5.0)
        request = self.client.build_request("POST", f"{worker.url}/v1/chat/completions", json=body,
                                            headers={"X-Request-ID": request_id}, timeout=timeout)
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self.registry.mark_unreachable(worker)
            raise ServingError(ErrorCode.WORKER_LOST, f"could not reach worker {worker.worker_id}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise ServingError(ErrorCode.WORKER_TIMEOUT, f"worker {worker.worker_id} sent nothing for "
                               f"{s.first_token_timeout_s:.0f} s") from exc
        except httpx.HTTPError as exc:
            self.registry.mark_unreachable(worker)
            raise ServingError(ErrorCode.WORKER_LOST, f"worker {worker.worker_id} failed: {exc}") from exc
        try:
            if response.status_code != 200:
                raw = await response.aread()
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = None
                raise ServingError.from_body(payload, response.status_code)
            events = EventSource(response).aiter_sse()
            first = await self._next_data(events, s.first_token_timeout_s, worker)
            if first is None or first == DONE:
                raise ServingError(ErrorCode.WORKER_LOST, f"worker {worker.worker_id} ended the stream at once")
            err = error_in_event(first)
            if err is not None:
                raise err
            return Upstream(worker, response, events, first, time.monotonic())
        except BaseException:
            await response.aclose()
            raise

    async def _next_data(self, events: AsyncIterator[Any], timeout: float, worker: WorkerRecord) -> str | None:
        try:
            # asyncio.timeout, not wait_for: wait_for wraps every read in a new task, a cost paid once per token.
            async with asyncio.timeout(timeout):
                sse = await anext(events)
        except StopAsyncIteration:
            return None
        except TimeoutError as exc:
            raise ServingError(ErrorCode.WORKER_TIMEOUT,
                               f"worker {worker.worker_id} sent nothing for {timeout:.0f} s") from exc
        except httpx.HTTPError as exc:
            raise ServingError(ErrorCode.WORKER_LOST, f"lost worker {worker.worker_id}: {exc}") from exc
        return sse.data

    async def relay(self, up: Upstream) -> AsyncIterator[str]:
        """Yield SSE data payloads: the first event, the rest, and always exactly one end marker."""
        ok = False
        try:
            yield up.first
            while True:
                try:
                    data = await self._next_data(up.events, self.settings.token_timeout_s, up.worker)
                except ServingError as err:
                    log.warning("stream from %s broke: %s", up.worker.worker_id, err.message)
                    self.metrics.count_error(err.code)
                    yield json.dumps(error_body(err.code, err.message))
                    yield DONE
                    return
                if data is None:
                    self.metrics.count_error(ErrorCode.WORKER_LOST)
                    yield json.dumps(error_body(ErrorCode.WORKER_LOST, f"worker {up.worker.worker_id} stopped "
                                                "in the middle of the answer; please retry"))
                    yield DONE
                    return
                if data == DONE:
                    ok = True
                    yield DONE
                    await _drain(up.events)
                    return
                self._observe(data, up.first_at)
                yield data
        finally:
            await up.response.aclose()  # tells the worker we are gone, so it aborts the generation
            self.registry.release(up.worker, ok=ok)


    def _observe(self, data: str, first_at: float) -> None:
        """Count relayed mid-stream errors; time the answer from its usage chunk (sent when the client asked for
        usage, and always for non-streaming requests). Only chunks that can hold either are parsed."""
        err = error_in_event(data)
        if err is not None:
            self.metrics.count_error(err.code)
        elif '"usage"' in data:
            try:
                usage = json.loads(data).get("usage") or {}
                self.metrics.observe_speed(int(usage.get("completion_tokens") or 0), first_at)
            except (ValueError, AttributeError, TypeError):
                pass  # not ours to judge: the chunk is relayed as it is


async def _drain(events: AsyncIterator[Any]) -> None:
    """Read the rest of a finished stream (its closing chunk): a response closed before its end cannot go back to
    the connection pool, and opening a new connection per request costs both sides more than the request itself."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in events:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass


def error_in_event(data: str) -> ServingError | None:
    if '"error"' not in data[:20]:
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return ServingError.from_body(payload) if isinstance(payload, dict) and "error" in payload else None

