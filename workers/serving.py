"""Turns an OpenAI chat request into engine work and engine events into OpenAI responses.

The response headers go out only after the engine produced its first event: every failure before the first token is
an HTTP error the controller can fail over on. After that, a failure is one error event and the end marker.

Each request holds a lease (workers/lease.py) from admission to its end; its stages, in order: `admitted`
(cheap checks), `media` (fetch, decode, tile: in threads, within the worker's pixel budget), `tokenizing` (in a
thread; the one context check), `engine` (queued for or inside the engine, up to the first token), `streaming`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

from common.errors import ErrorCode, ServingError, error_body, excerpt
from common.http import DONE, sse_data
from common.metrics import Metrics
from common.protocol import (ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice,
                             CompletionTokensDetails, Delta, ResponseMessage, Usage, new_completion_id)
from workers.context_check import fit_context, refuse_impossible_text, tokenize_within_context
from workers.engines.base import Engine, EngineEvent, FinishEvent, TokenEvent
from workers.lease import Lease, Leases, PixelPool
from workers.media_cache import MediaCache
from workers.pipeline import prepare_generation
from workers.reasoning import AnswerSplitter, Split
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class ChatService:
    def __init__(self, engine: Engine, settings: WorkerSettings, metrics: Metrics | None = None):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.limits = settings.media_limits()
        self.media_cache = MediaCache(settings.media_cache_mb * 2**20)
        self.leases = Leases(settings.max_concurrency, PixelPool(settings.preprocess_pixels))

    @property
    def in_flight(self) -> int:
        return len(self.leases)

    @property
    def queued(self) -> int:
        return int(getattr(self.engine, "queued", 0))

    def admit(self, req: ChatCompletionRequest, client_id: str) -> Lease:
        """Take the request's lease (or refuse: wrong model, worker full). The caller makes sure it is released."""
        if req.model != self.engine.model_id:
            raise ServingError(ErrorCode.MODEL_NOT_FOUND, f"this worker serves '{self.engine.model_id}', "
                               f"not {excerpt(req.model)}", param="model")
        return self.leases.admit(client_id)

    async def start(self, req: ChatCompletionRequest, lease: Lease) -> tuple[EngineEvent, AsyncIterator[EngineEvent]]:
        """Prepare and run up to the first engine event. On success the caller owns the events and `lease`; on any
        failure or cancellation the lease is released here."""
        events = None
        started = time.monotonic()
        try:
            refuse_impossible_text(req, self.engine)
            lease.stage = "media"
            gen = await prepare_generation(req, self.engine.spec, self.limits, lease.id, self.media_cache, lease)
            lease.stage = "tokenizing"
            gen.input_ids = await lease.in_thread(tokenize_within_context, self.engine, gen.prompt, gen.user_spans)
            fit_context(self.engine, gen, req.max_new_tokens)
            lease.stage = "engine"
            events = self._measured(self.engine.generate(gen), started)
            lease.on_release(events.aclose)  # closing the stream is how an engine stops (engines/base.py)
            first = await anext(events)
            lease.stage = "streaming"
            return first, events
        except BaseException as exc:
            await lease.release()
            if isinstance(exc, StopAsyncIteration):
                raise ServingError(ErrorCode.ENGINE_ERROR, "the engine produced no output") from None
            raise

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

    async def stream_chunks(self, req: ChatCompletionRequest, lease: Lease, first: EngineEvent,
                            events: AsyncIterator[EngineEvent]) -> AsyncIterator[str]:
        cid, model = new_completion_id(), req.model
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        role_sent = False
        splitter = AnswerSplitter(self.engine.spec.thinking)
        try:
            event = first
            while True:
                if isinstance(event, TokenEvent):
                    for delta in _deltas(splitter.feed(event.text, event.tokens), role_sent):
                        role_sent = True
                        yield sse_data(ChatCompletionChunk(id=cid, model=model,
                                                           choices=[ChunkChoice(delta=delta)]))
                elif isinstance(event, FinishEvent):
                    deltas = _deltas(splitter.flush(), role_sent, last=True)
                    for i, delta in enumerate(deltas):
                        yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[
                            ChunkChoice(delta=delta, finish_reason=event.reason if i == len(deltas) - 1 else None)]))
                    if include_usage:
                        yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[],
                                                           usage=_usage(event, splitter)))
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
            await lease.release()  # closes the engine's stream: on client disconnect this stops the generation

    async def answer(self, req: ChatCompletionRequest, lease: Lease) -> ChatCompletion:
        """The whole non-streaming answer."""
        first, events = await self.start(req, lease)
        return await self.complete(req, lease, first, events)

    async def complete(self, req: ChatCompletionRequest, lease: Lease, first: EngineEvent,
                       events: AsyncIterator[EngineEvent]) -> ChatCompletion:
        splitter = AnswerSplitter(self.engine.spec.thinking)
        splits: list[Split] = []
        try:
            event = first
            while not isinstance(event, FinishEvent):
                splits.append(splitter.feed(event.text, event.tokens))
                event = await anext(events)
        finally:
            await lease.release()
        splits.append(splitter.flush())
        reasoning = "".join(s.reasoning for s in splits) if splitter.thought else None
        message = ResponseMessage(content="".join(s.content for s in splits), reasoning_content=reasoning)
        return ChatCompletion(id=new_completion_id(), model=req.model, usage=_usage(event, splitter), choices=[
            Choice(message=message, finish_reason=event.reason)])


def _deltas(split: Split, role_sent: bool, last: bool = False) -> list[Delta]:
    """The chunks' deltas for one piece of the answer: reasoning, then content, each in its own chunk (as vLLM and
    DeepSeek send them), and at the end one empty delta for the finish reason. The first chunk of the answer carries
    the role, also when the piece is empty (text held back while a tag may be starting)."""
    out = [Delta(reasoning_content=split.reasoning)] if split.reasoning else []
    out += [Delta(content=split.content)] if split.content else []
    out += [Delta()] if last else []
    if not role_sent:
        out = out or [Delta()]
        out[0].role = "assistant"
        if out[0].reasoning_content is None and out[0].content is None:
            out[0].content = ""
    return out


def _usage(event: FinishEvent, splitter: AnswerSplitter | None = None) -> Usage:
    reasoning = splitter.reasoning_tokens(event.completion_tokens) if splitter is not None else None
    return Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                 total_tokens=event.prompt_tokens + event.completion_tokens,
                 completion_tokens_details=None if reasoning is None else CompletionTokensDetails(
                     reasoning_tokens=reasoning))
