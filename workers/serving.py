"""Turns an OpenAI chat request into engine work and engine events into OpenAI responses.

The response headers go out only after the engine produced its first event: every failure before the first token is
an HTTP error the controller can fail over on. After that, a failure is one error event and the end marker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from collections.abc import AsyncIterator

from common.errors import ErrorCode, ServingError, error_body, excerpt
from common.http import DONE, sse_data
from common.metrics import Metrics
from common.protocol import (ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice,
                             Delta, ResponseMessage, Usage, new_completion_id)
from workers.engines.base import Engine, EngineEvent, FinishEvent, GenerationRequest, TokenEvent
from workers.media_cache import MediaCache
from workers.pipeline import prepare_generation
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class ChatService:
    def __init__(self, engine: Engine, settings: WorkerSettings, metrics: Metrics | None = None):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.limits = settings.media_limits()
        self.media_cache = MediaCache(settings.media_cache_mb * 2**20)
        self.in_flight = 0

    @property
    def queued(self) -> int:
        return int(getattr(self.engine, "queued", 0))

    def _admit(self) -> None:
        if self.in_flight >= self.settings.max_concurrency:
            raise ServingError(ErrorCode.WORKER_BUSY, f"worker is at capacity ({self.in_flight} requests running); "
                               "retry shortly or add workers")
        self.in_flight += 1

    async def start(self, req: ChatCompletionRequest, request_id: str) -> tuple[EngineEvent, AsyncIterator[EngineEvent]]:
        """Admit, prepare and run up to the first engine event. On success the caller owns `finish()`."""
        if req.model != self.engine.model_id:
            raise ServingError(ErrorCode.MODEL_NOT_FOUND, f"this worker serves '{self.engine.model_id}', "
                               f"not {excerpt(req.model)}", param="model")
        self._admit()
        events = None
        started = time.monotonic()
        try:
            gen = await prepare_generation(req, self.engine.spec, self.limits, request_id, self.media_cache)
            self._fit_context(gen, req.max_new_tokens)
            events = self._measured(self.engine.generate(gen), started)
            first = await anext(events)
            return first, events
        except BaseException as exc:
            if events is not None:
                await events.aclose()
            self.in_flight -= 1
            if isinstance(exc, StopAsyncIteration):
                raise ServingError(ErrorCode.ENGINE_ERROR, "the engine produced no output") from None
            raise

    def _fit_context(self, gen: GenerationRequest, asked: int | None) -> None:
        context = self.engine.spec.context_length
        prompt_tokens = self.engine.count_prompt_tokens(gen.prompt)
        room = context - prompt_tokens
        if room < 1:
            raise ServingError(ErrorCode.CONTEXT_TOO_LONG, f"the conversation needs {prompt_tokens} tokens but the "
                               f"model's context holds {context}; start a new chat, send fewer images or lower "
                               "max tiles per image")
        if asked is not None and asked > room:
            raise ServingError(ErrorCode.CONTEXT_TOO_LONG, f"max_tokens={asked} does not fit: the prompt uses "
                               f"{prompt_tokens} of the model's {context} tokens, leaving {room}",
                               param="max_tokens")
        if gen.sampling.max_new_tokens > room:
            gen.sampling = replace(gen.sampling, max_new_tokens=room)

    async def _measured(self, events: AsyncIterator[EngineEvent], started: float) -> AsyncIterator[EngineEvent]:
        """The engine's events, unchanged, timed for the TTFT and tokens/s histograms. Closing this closes the
        engine's stream (which is what aborts a generation)."""
        first_at = None
        try:
            async for event in events:
                if first_at is None:
                    first_at = time.monotonic()
                    self.metrics.observe_first_token(started)
                if isinstance(event, FinishEvent):
                    self.metrics.observe_speed(event.completion_tokens, first_at)
                yield event
        finally:
            await events.aclose()

    def finish(self) -> None:
        self.in_flight -= 1

    async def stream_chunks(self, req: ChatCompletionRequest, first: EngineEvent,
                            events: AsyncIterator[EngineEvent]) -> AsyncIterator[str]:
        cid, model = new_completion_id(), req.model
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        role_sent = False
        try:
            event = first
            while True:
                if isinstance(event, TokenEvent):
                    delta = Delta(content=event.text, role=None if role_sent else "assistant")
                    role_sent = True
                    yield sse_data(ChatCompletionChunk(id=cid, model=model,
                                                       choices=[ChunkChoice(delta=delta)]))
                elif isinstance(event, FinishEvent):
                    delta = Delta(role=None if role_sent else "assistant", content=None if role_sent else "")
                    yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[
                        ChunkChoice(delta=delta, finish_reason=event.reason)]))
                    if include_usage:
                        yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[], usage=_usage(event)))
                    yield DONE
                    return
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    raise ServingError(ErrorCode.ENGINE_ERROR, "the engine stopped without finishing") from None
        except ServingError as err:
            log.warning("stream %s failed mid-answer: %s", cid, err.message)
            self.metrics.count_error(err.code)
            yield json.dumps(error_body(err.code, err.message))
            yield DONE
        finally:
            await events.aclose()  # on client disconnect this aborts the generation
            self.finish()

    async def complete(self, req: ChatCompletionRequest, first: EngineEvent,
                       events: AsyncIterator[EngineEvent]) -> ChatCompletion:
        parts: list[str] = []
        try:
            event = first
            while not isinstance(event, FinishEvent):
                parts.append(event.text)
                event = await anext(events)
        finally:
            await events.aclose()
            self.finish()
        return ChatCompletion(id=new_completion_id(), model=req.model, usage=_usage(event), choices=[
            Choice(message=ResponseMessage(content="".join(parts)), finish_reason=event.reason)])


def _usage(event: FinishEvent) -> Usage:
    return Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                 total_tokens=event.prompt_tokens + event.completion_tokens)
