"""Async client of the controller's OpenAI-compatible API: one shared httpx client, explicit timeouts.

Errors arrive as the one JSON body (`{"error": {...}}`, see common/errors.py), either as an HTTP error status or as
a single mid-stream SSE event followed by the end marker (read with common/sse.py, as the controller reads its
workers); both become a ServingError carrying the server's message.
Closing the stream (the `async with` exits, also on cancellation by the Stop button) is what aborts generation on
the worker: the controller relays the disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from common.errors import ErrorCode, ServingError
from common.protocol import ModelCard, WorkerStatus
from common.sse import DONE, error_in_event, payloads

CONTROLLER = "controller"  # `param` of an error raised because the controller itself could not be reached


@dataclass
class StreamStats:
    """Filled in while an answer streams (worker, usage by the client; timings by the handler); logged per turn."""

    worker: str | None = None
    started: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    total_s: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    reasoning: str = ""  # the answer's reasoning so far (thinking models; logged apart from the answer)


class ControllerClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0,
                 connect_timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=transport,
                                       timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self._short = httpx.Timeout(10.0, connect=connect_timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str) -> Any:
        try:
            response = await self._http.get(path, timeout=self._short)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response.status_code, response.content)
        return response.json()

    async def models(self) -> list[ModelCard]:
        return [ModelCard.model_validate(m) for m in (await self._get("/v1/models")).get("data", [])]

    async def workers(self) -> list[WorkerStatus]:
        return [WorkerStatus.model_validate(w) for w in (await self._get("/workers")).get("workers", [])]

    async def queue_place(self, request_id: str) -> tuple[int, int] | None:
        """(place, requests waiting) of a request waiting in the controller's line for a free worker; None when it
        is not waiting (or the controller cannot say: the page then just shows no place)."""
        try:
            place = await self._get(f"/queue/{request_id}")
        except (ServingError, ValueError):
            return None
        return (int(place["position"]), int(place["waiting"])) if place.get("queued") else None

    async def stream_chat(self, payload: dict[str, Any], stats: StreamStats | None = None,
                          session_id: str | None = None, request_id: str | None = None) -> AsyncIterator[str]:
        """Yield text deltas of one streamed answer. `session_id` names the chat (X-Session-Id): the controller keeps
        its turns on one worker; `request_id` (X-Request-ID) names the request, for `queue_place`. A reasoning delta
        (`reasoning_content`, thinking models) is added to `stats.reasoning` and yields an empty delta, so the reader
        shows the reasoning as it grows."""
        stats = stats or StreamStats()
        body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        headers = {"X-Session-Id": session_id} if session_id else {}
        if request_id:
            headers["X-Request-ID"] = request_id
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                stats.worker = response.headers.get("x-worker-id")
                if response.status_code >= 400:
                    raise _error_from_response(response.status_code, await response.aread())
                async for data in payloads(response.aiter_bytes()):
                    if data == DONE:
                        break
                    err = error_in_event(data)
                    if err is not None:
                        raise err
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        stats.usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason"):
                            stats.finish_reason = choice["finish_reason"]
                        delta = choice.get("delta") or {}
                        if delta.get("reasoning_content"):
                            stats.reasoning += delta["reasoning_content"]
                            yield ""
                        if delta.get("content"):
                            yield delta["content"]
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: httpx.HTTPError) -> ServingError:
        if isinstance(exc, httpx.TimeoutException):
            return ServingError(ErrorCode.WORKER_TIMEOUT, f"the controller at {self.base_url} did not answer in "
                                "time ({type(exc).__name__}); try again, or check that it and its workers run")
        # Under ./launch.sh a controller that died is restarted within seconds: say so, the page stays usable.
        return ServingError(ErrorCode.NO_WORKER, f"reconnecting to the model: the controller at {self.base_url} "
                            f"does not answer ({exc}). Try again in a few seconds; if it stays away, start it "
                            "(`./launch.sh controller` or `python -m controller`) or pass --controller-url", param=CONTROLLER)


def _error_from_response(status: int, content: bytes) -> ServingError:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    return ServingError.from_body(body, status)


async def with_place(client: ControllerClient, deltas: AsyncIterator[str], request_id: str,
                     poll_s: float) -> AsyncIterator[str | tuple[int, int]]:
    """`deltas`, and before the first one, every `poll_s` while the request waits in the controller's line, its
    (place, waiting). The stream carries no byte before a worker takes the request, so the place is asked for
    beside it, by request id (`ControllerClient.queue_place`)."""
    first = asyncio.ensure_future(anext(deltas, None))
    try:
        while not (await asyncio.wait({first}, timeout=poll_s))[0]:
            place = await client.queue_place(request_id)
            if place is not None and not first.done():
                yield place
    finally:
        if not first.done():  # stopped while waiting: the stream goes with it
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
    delta = first.result()
    if delta is None:
        return
    yield delta
    async for delta in deltas:
        yield delta
