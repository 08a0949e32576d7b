"""Turns an OpenAI chat request into engine work and engine events into OpenAI responses.

The response headers go out only after the engine produced its first event: every failure before the first token is
an HTTP error the controller can fail over on. After that, a failure is one error event and the end marker.

Each request holds a request slot (workers/slots.py) from admission to its end, owned by its response
(workers/chat_response.py); its stages, in order: `admitted`, `media` (fetch, decode, tile: in threads, within the
worker's pixel budget), `tokenizing` (in a thread; the one context check), `engine` (queued for or inside the
engine, up to the first token), `streaming`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

from common.errors import ErrorCode, ServingError, error_body, excerpt
from common.metrics import Metrics
from common.protocol import (ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice,
                             CompletionTokensDetails, Delta, ResponseMessage, Usage, new_completion_id)
from common.sse import DONE, sse_data
from workers.choices import IndexedEvent, choice_requests, merged, wire_logprobs
from workers.context_check import fit_context, tokenize_within_context
from workers.engines.base import Engine, FinishEvent, TokenEvent
from workers.slots import PixelPool, RequestSlot, RequestSlots
from workers.media_cache import MediaCache
from workers.openai_support import refuse_unsupported
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
        self.slots = RequestSlots(settings.max_concurrency, PixelPool(settings.preprocess_pixels))

    @property
    def in_flight(self) -> int:
        return len(self.slots)

    @property
    def queued(self) -> int:
        return int(getattr(self.engine, "queued", 0))

    def refuse_wrong(self, req: ChatCompletionRequest) -> None:
        """Refuse what this worker cannot serve (another model, unsupported options) before it takes a slot."""
        if req.model != self.engine.model_id:
            raise ServingError(ErrorCode.MODEL_NOT_FOUND, f"this worker serves '{self.engine.model_id}', "
                               f"not {excerpt(req.model)}", param="model")
        refuse_unsupported(req, self.engine)

    async def start(self, req: ChatCompletionRequest,
                    slot: RequestSlot) -> tuple[IndexedEvent, AsyncIterator[IndexedEvent]]:
        """Prepare and run up to the first engine event. The engine's stream is closed when `slot` goes."""
        started = time.monotonic()  # text far beyond the context was refused with the body (workers/body_parser.py)
        slot.stage = "media"
        gen = await prepare_generation(req, self.engine.spec, self.limits, slot.id, self.media_cache, slot)
        slot.stage = "tokenizing"
        gen.input_ids = await slot.in_thread(tokenize_within_context, self.engine, gen.prompt, gen.user_spans)
        fit_context(self.engine, gen, req.max_new_tokens)
        slot.stage = "engine"
        # n > 1: one generation per choice (workers/choices.py); events come as (choice index, event)
        events = self._measured(merged([self.engine.generate(g) for g in choice_requests(gen, req.n)]), started)
        slot.on_release(events.aclose)  # closing the stream is how an engine stops (engines/base.py)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise ServingError(ErrorCode.ENGINE_ERROR, "the engine produced no output") from None
        slot.stage = "streaming"
        return first, events

    async def _measured(self, events: AsyncIterator[IndexedEvent], started: float) -> AsyncIterator[IndexedEvent]:
        """The engine's events, unchanged, timed for the TTFT and tokens/s histograms. Closing this closes the
        engine's stream (which is what aborts a generation)."""
        first_at = None
        try:
            async for event in events:
                if first_at is None:
                    first_at = time.monotonic()
                    self.metrics.observe_first_token(started)
                if isinstance(event[1], FinishEvent):
                    self.metrics.observe_speed(event[1].completion_tokens, first_at)
                yield event
        finally:
            await events.aclose()

    async def stream_chunks(self, req: ChatCompletionRequest, first: IndexedEvent,
                            events: AsyncIterator[IndexedEvent]) -> AsyncIterator[str]:
        cid, model = new_completion_id(), req.model
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        splitters: dict[int, AnswerSplitter] = {}  # per choice, made at its first chunk (the one with the role)
        pending: dict[int, list] = {}  # per choice: logprobs of tokens whose text is held back (a tag may start)
        finished: list[tuple[FinishEvent, AnswerSplitter]] = []
        try:
            index, event = first
            while True:
                opening = index not in splitters
                splitter = splitters.setdefault(index, AnswerSplitter(self.engine.spec.thinking))
                waiting = pending.setdefault(index, [])
                if isinstance(event, TokenEvent):
                    waiting.extend(event.logprobs or ())
                    for delta in _deltas(splitter.feed(event.text, event.tokens), not opening):
                        opening = False
                        yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[
                            ChunkChoice(index=index, delta=delta, logprobs=_take(waiting, req.logprobs))]))
                elif isinstance(event, FinishEvent):
                    deltas = _deltas(splitter.flush(), not opening, last=True)
                    for i, delta in enumerate(deltas):
                        yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[
                            ChunkChoice(index=index, delta=delta, logprobs=_take(waiting, req.logprobs),
                                        finish_reason=event.reason if i == len(deltas) - 1 else None)]))
                    finished.append((event, splitter))
                    if len(finished) == req.n:
                        if include_usage:
                            yield sse_data(ChatCompletionChunk(id=cid, model=model, choices=[],
                                                               usage=_usage(finished)))
                        yield DONE
                        return
                try:
                    index, event = await anext(events)
                except StopAsyncIteration:
                    raise ServingError(ErrorCode.ENGINE_ERROR, "the engine stopped without finishing") from None
        except ServingError as err:
            log.warning("stream %s failed mid-answer: %s", cid, err.message)
            self.metrics.count_error(err.code)
            yield json.dumps(error_body(err.code, err.message))
            yield DONE

    async def answer(self, req: ChatCompletionRequest, slot: RequestSlot) -> ChatCompletion:
        """The whole non-streaming answer."""
        first, events = await self.start(req, slot)
        return await self.complete(req, first, events)

    async def complete(self, req: ChatCompletionRequest, first: IndexedEvent,
                       events: AsyncIterator[IndexedEvent]) -> ChatCompletion:
        splitters = [AnswerSplitter(self.engine.spec.thinking) for _ in range(req.n)]
        splits: dict[int, list[Split]] = {i: [] for i in range(req.n)}
        tokens: dict[int, list] = {i: [] for i in range(req.n)}
        finished: dict[int, FinishEvent] = {}
        index, event = first
        while True:
            if isinstance(event, FinishEvent):
                finished[index] = event
                if len(finished) == req.n:
                    break
            else:
                splits[index].append(splitters[index].feed(event.text, event.tokens))
                tokens[index].extend(event.logprobs or ())
            index, event = await anext(events)
        choices = []
        for i, splitter in enumerate(splitters):
            parts = splits[i] + [splitter.flush()]
            reasoning = "".join(s.reasoning for s in parts) if splitter.thought else None
            message = ResponseMessage(content="".join(s.content for s in parts), reasoning_content=reasoning)
            choices.append(Choice(index=i, message=message, finish_reason=finished[i].reason,
                                  logprobs=wire_logprobs(tuple(tokens[i])) if req.logprobs else None))
        return ChatCompletion(id=new_completion_id(), model=req.model, choices=choices,
                              usage=_usage([(finished[i], splitters[i]) for i in range(req.n)]))


def _deltas(split: Split, role_sent: bool, last: bool = False) -> list[Delta]:
    """The chunks' deltas for one piece of a choice: reasoning, then content, each in its own chunk (as vLLM and
    DeepSeek send them), and at the end one empty delta for the finish reason. The first chunk of a choice carries
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


def _take(waiting: list, asked: bool):
    """A chunk's logprobs when the request asked for them: those of the tokens whose text it is the first to carry."""
    if not asked:
        return None
    out = wire_logprobs(tuple(waiting))
    waiting.clear()
    return out


def _usage(finished: list[tuple[FinishEvent, AnswerSplitter]]) -> Usage:
    """The prompt counts once (every choice shares it); the completions, and their reasoning, add up."""
    prompt = finished[0][0].prompt_tokens if finished else 0
    completion = sum(f.completion_tokens for f, _ in finished)
    reasoning = [r for f, s in finished if (r := s.reasoning_tokens(f.completion_tokens)) is not None]
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 completion_tokens_details=CompletionTokensDetails(reasoning_tokens=sum(reasoning)) if reasoning
                 else None)
