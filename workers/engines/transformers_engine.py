"""Transformers engine: any InternVL checkpoint on CPU or GPU, one generation at a time.

The quick-start engine (and the one the demo checkpoint runs on). `model.generate` runs in a worker thread and hands
token ids to the event loop through a streamer; text is decoded incrementally here (text_stream.py, shared with
TurboMind), so stop strings, stopping and token counts are handled in one place. Throughput is not its job: the
TurboMind engine serves batched traffic.

Stopping (the consumer closed the stream): a request waiting for the model leaves the queue at once; a running one
sets its cancel flag, which the generation thread reads after every token (stopping criteria) and before every
decoder layer (a forward pre-hook), so a long prefill stops within one layer too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ErrorCode, ServingError
from workers.engines.base import (Engine, EngineEvent, FinishEvent, GenerationRequest, SamplingParams, TokenEvent,
                                  longest_token_chars)
from workers.engines.text_stream import IncrementalDecoder, StopStrings
from workers.engines.transformers_loading import LoadedModel, load_model
from workers.engines.transformers_sampling import Grammars, LogprobTap, hook_head, sampling_kwargs
from workers.model_spec import ModelSpec
from workers.prompts.escaping import encode_prompt
from workers.prompts.templates import get_template
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

_END = object()  # queue sentinel: generation thread finished
_generating = threading.local()  # the generation thread's cancel flag, for the layer hooks


class _Stopped(Exception):
    """Raised by a layer hook inside model.generate once the request's cancel flag is set."""


@dataclass
class _RequestState:
    cancel: threading.Event = field(default_factory=threading.Event)  # read by the generation thread


class TransformersEngine(Engine):
    name = "transformers"
    features = frozenset({"logprobs", "penalties", "logit_bias", "response_format", "min_p", "min_tokens",
                          "stop_token_ids", "ignore_eos", "skip_special_tokens"})  # all of workers/openai_support.py

    def __init__(self, settings: WorkerSettings, spec: ModelSpec):
        self.settings = settings
        self.spec = spec
        self.model_id = settings.model_name or Path(settings.model_path).name
        self.queued = 0  # requests waiting for the model
        self.running = 0  # 0 or 1: the model runs one generation at a time
        self._loaded: LoadedModel | None = None
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._requests: dict[str, _RequestState] = {}
        self._eos_ids: list[int] = []
        self._max_token_chars: int | None = None
        self._vocab_size = 0
        self._grammars: Grammars | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loaded = await asyncio.to_thread(load_model, self.settings, self.spec)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-generate")
        self._eos_ids = self._stop_token_ids()
        self._max_token_chars = longest_token_chars(self._loaded.tokenizer)
        _hook_layers(self._loaded.model)
        hook_head(self._loaded.model)
        self._vocab_size = int(self._loaded.model.get_output_embeddings().weight.shape[0])
        self._grammars = Grammars(self._loaded.tokenizer, self._vocab_size, self._eos_ids)
        log.info("loaded %s (%s format) on %s as %s", self.settings.model_path, self.spec.checkpoint_format,
                 self._loaded.input_device, self._loaded.dtype)

    async def stop(self) -> None:
        for state in self._requests.values():
            state.cancel.set()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None
        self._loaded = None

    async def check_health(self) -> None:
        if self._loaded is None or self._executor is None:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"model {self.model_id} is not loaded")

    def tokenize(self, prompt: str, user_spans: tuple[tuple[int, int], ...] = ()) -> list[int]:
        return encode_prompt(self._require().tokenizer, prompt, user_spans, get_template(self.spec.template))

    @property
    def max_token_chars(self) -> int | None:
        return self._max_token_chars

    # ------------------------------------------------------------------------------------------------ generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        loaded = self._require()
        inputs = self._prepare_inputs(request, loaded)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        sampling = request.sampling
        if request.request_id in self._requests:
            raise ServingError(ErrorCode.INVALID_REQUEST, f"request id {request.request_id} is already running")
        state = _RequestState()
        self._requests[request.request_id] = state
        holding = False
        future: asyncio.Future | None = None
        try:
            await self._wait_turn()
            holding = True
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            tap = LogprobTap(loaded.tokenizer, sampling.top_logprobs) if sampling.logprobs else None
            future = loop.run_in_executor(self._executor, self._run, loaded, inputs,
                                          self._generation_kwargs(sampling, prompt_tokens), sampling.seed,
                                          state.cancel, _QueueStreamer(loop, queue, tap))
            # skip_special_tokens false: special tokens are text too, but the end token that stops the answer is not
            decoder = IncrementalDecoder(loaded.tokenizer, sampling.skip_special_tokens)
            stops = StopStrings(sampling.stop)
            completion, last_token, hit_stop, sent = 0, None, False, 0
            pending: list = []  # logprobs of tokens whose text is not out yet
            ending = set() if sampling.ignore_eos else {*self._eos_ids, *sampling.stop_token_ids}
            while not hit_stop:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    await asyncio.shield(future)  # the thread is on its way out; free the model before raising
                    raise self._as_serving_error(item, prompt_tokens, request)
                token_ids, logprobs = item
                pending.extend(logprobs or ())
                for token_id in token_ids:
                    completion, last_token = completion + 1, token_id
                    piece = "" if token_id in ending else decoder.push(token_id)  # the end token is not text
                    text = stops.feed(piece)
                    hit_stop = stops.hit
                    if text:
                        yield TokenEvent(text, completion - sent, tuple(pending) if tap else None)
                        sent, pending = completion, []
                    if hit_stop:
                        state.cancel.set()  # the thread stops after its current token
                        break
            if not hit_stop and not state.cancel.is_set():
                tail = stops.feed(decoder.flush())
                hit_stop = stops.hit
                tail = tail if hit_stop else tail + stops.flush()
                if tail:
                    yield TokenEvent(tail, completion - sent, tuple(pending) if tap else None)
            reason = self._finish_reason(state, hit_stop, last_token, completion, sampling)
            await asyncio.shield(future)  # one token at most after a stop string (shield: see finally)
            holding = False
            self._release()  # before the last event: a consumer may stop iterating right after it
            yield FinishEvent(reason, prompt_tokens, completion)
        finally:
            state.cancel.set()  # no-op after a normal finish; stops the thread when the consumer went away
            self._requests.pop(request.request_id, None)
            if holding:  # consumer gone or error: keep the model locked until the thread is really out
                if future is not None and not future.done():
                    future.add_done_callback(lambda _: self._release())
                else:
                    self._release()

    def _finish_reason(self, state: _RequestState, hit_stop: bool, last_token: int | None, completion: int,
                       sampling: SamplingParams) -> str:
        if hit_stop or last_token in self._eos_ids:
            return "stop"
        if state.cancel.is_set():
            return "abort"
        return "length" if completion >= sampling.max_new_tokens else "stop"

    async def _wait_turn(self) -> None:
        """Queue for the model. A waiter cancelled (its consumer left) leaves the queue and never keeps the lock."""
        self.queued += 1
        try:
            await self._lock.acquire()
        finally:
            self.queued -= 1
        self.running += 1

    def _release(self) -> None:
        self.running -= 1
        self._lock.release()

    def _run(self, loaded: LoadedModel, inputs: dict[str, Any], generation_kwargs: dict[str, Any], seed: int | None,
             cancel: threading.Event, streamer: _QueueStreamer) -> None:
        """Generation thread. Never raises: the outcome travels through the streamer's queue."""
        import torch
        from transformers import StoppingCriteriaList

        _generating.cancel = cancel
        try:
            if cancel.is_set():
                return
            if seed is not None:
                torch.manual_seed(seed)  # global RNG: safe, the lock serialises generations
            # Moved to the device only now: queued requests hold no GPU memory.
            inputs = {key: value.to(loaded.input_device) for key, value in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            with torch.inference_mode(), (streamer.tap or contextlib.nullcontext()):
                loaded.model.generate(**inputs, **generation_kwargs, streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]))
        except _Stopped:
            pass  # the consumer is gone or stopped at a stop string: nobody waits for an error
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer, which raises a ServingError
            streamer.send(exc)
        finally:
            _generating.cancel = None
            streamer.send(_END)

    def _generation_kwargs(self, sampling: SamplingParams, prompt_tokens: int) -> dict[str, Any]:
        tokenizer = self._require().tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(1, sampling.max_new_tokens),
            "eos_token_id": self._eos_ids,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos_ids[0],
            "repetition_penalty": sampling.repetition_penalty,
        }
        if sampling.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k or 0)  # 0 disables top-k (transformers defaults to 50)
        kwargs.update(sampling_kwargs(sampling, eos_ids=self._eos_ids, prompt_tokens=prompt_tokens,
                                      vocab_size=self._vocab_size, grammars=self._grammars))
        return kwargs

    # ------------------------------------------------------------------------------------------------ inputs

    def _prepare_inputs(self, request: GenerationRequest, loaded: LoadedModel) -> dict[str, Any]:
        """Check that the image tokens in the prompt match the pixel tiles, before taking the model. The prompt comes
        tokenized and checked against the context (workers/context_check.py)."""
        import torch

        ids = request.input_ids if request.input_ids is not None else self.tokenize(request.prompt, request.user_spans)
        input_ids = torch.tensor([ids], dtype=torch.long)
        image_tokens = int((input_ids == loaded.image_token_id).sum())
        pixels = request.pixel_values
        tiles = 0 if pixels is None else int(pixels.shape[0])
        if pixels is not None:
            size = self.spec.image_size
            if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
                raise ServingError(ErrorCode.INVALID_REQUEST, f"pixel values have shape {tuple(pixels.shape)}; "
                                   f"expected [tiles, 3, {size}, {size}]")
            if request.num_tiles and sum(request.num_tiles) != tiles:
                raise ServingError(ErrorCode.INVALID_REQUEST, f"num_tiles adds up to {sum(request.num_tiles)} "
                                   f"but {tiles} tiles were given")
        if image_tokens != tiles * self.spec.tokens_per_tile:
            raise ServingError(ErrorCode.INVALID_REQUEST,
                               f"the prompt holds {image_tokens} {self.spec.image_token} tokens but {tiles} image "
                               f"tiles need {tiles * self.spec.tokens_per_tile} ({self.spec.tokens_per_tile} per "
                               f"tile); image placeholders must not be typed into the text")
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if tiles:
            inputs["pixel_values"] = pixels
        return inputs

    def _stop_token_ids(self) -> list[int]:
        """The tokenizer's eos, <|im_end|>, and the family's stop words that are single tokens."""
        tokenizer = self._require().tokenizer
        ids: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for word in ("<|im_end|>", *self.spec.stop_words):
            token_id = tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
        if not ids:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"{self.model_id}: the tokenizer defines no end token")
        return ids

    def _as_serving_error(self, exc: BaseException, prompt_tokens: int, request: GenerationRequest) -> ServingError:
        import torch

        if isinstance(exc, ServingError):
            return exc
        tiles = 0 if request.pixel_values is None else int(request.pixel_values.shape[0])
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return ServingError(ErrorCode.ENGINE_ERROR, f"the GPU ran out of memory on a {prompt_tokens}-token "
                                f"prompt with {tiles} image tiles; send fewer or smaller images, fewer tiles per "
                                f"image, or a shorter conversation")
        log.error("generation failed for %s", request.request_id, exc_info=exc)
        return ServingError(ErrorCode.ENGINE_ERROR, f"generation failed: {type(exc).__name__}: {exc}")

    def _require(self) -> LoadedModel:
        if self._loaded is None:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"model {self.model_id} is not loaded")
        return self._loaded


def _hook_layers(model) -> None:
    """A pre-hook on every transformer layer (language model and vision tower): stop within one layer once the
    running generation's cancel flag is set. Outside a generation thread the hook does nothing."""

    def check(module, args) -> None:
        cancel = getattr(_generating, "cancel", None)
        if cancel is not None and cancel.is_set():
            raise _Stopped

    for module in model.modules():
        if type(module).__name__.endswith(("DecoderLayer", "EncoderLayer")):
            module.register_forward_pre_hook(check)


class _QueueStreamer:
    """transformers streamer protocol (`put`/`end`): forwards new token ids to an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, tap: LogprobTap | None = None):
        self._loop, self._queue, self.tap = loop, queue, tap
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt (empty when it starts from embeddings)
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.send((ids, self.tap.take(ids) if self.tap else None))

    def end(self) -> None:
        return None  # the thread wrapper sends _END, also after an exception

    def send(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # loop closed: nobody is listening any more
            pass


class _CancelCriteria:
    """transformers stopping-criteria protocol: stop at the next token once the request's event is set (client
    gone, stop string reached)."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)
