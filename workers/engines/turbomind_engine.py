"""LMDeploy TurboMind behind the Engine protocol: continuous batching across requests, tensor parallelism, abort.

Requests arrive templated, with each image already expanded to `<img>` + `<IMG_CONTEXT>` * n + `</img>`. We tokenize
that prompt ourselves (the same bytes every engine sees) and hand lmdeploy's AsyncEngine token ids plus the images:

- ps_version v2 checkpoints: TurboMind's native InternViT takes the pixel tiles (`multimodal` items at the offsets
  of the `<IMG_CONTEXT>` runs).
- ps_version v1 checkpoints (InternVL-Chat-V1-1/V1-2/V1-5): TurboMind refuses their vision tower, so it runs as a
  language model only (`language_model_only`) and our PyTorch InternViT (vision_v1.py) computes the features, passed
  as `input_embeddings` over the same runs.

Each request's lmdeploy stream is read by a task of its own (`_pump`), never by the caller's task. A client that goes
away cancels the caller (through sse-starlette, again at every await); had that cancellation reached lmdeploy, it
would have swallowed it in `TurboMindInstance.async_stream_infer`, handed the request handle back before TurboMind
confirmed the cancel, and ended with a made-up 'length'. Instead, stopping a request (abort, client gone, a stop
string) is `_stop`, which never awaits:
- once the session holds a TurboMind handle, it asks TurboMind to cancel (`Session.async_abort`); the pump reads on
  until TurboMind confirms (status CANCEL), and only then does lmdeploy return the handle for the next request;
- before that (queued for a free handle, max_batch_size requests running), it cancels the pump, which only waits in
  lmdeploy's handle queue: the request leaves the queue and never reaches TurboMind.
The caller stops waiting at once in both cases and ends with finish reason 'abort'.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ErrorCode, ServingError
from workers.engines.base import Engine, EngineEvent, FinishEvent, GenerationRequest, TokenEvent, longest_token_chars
from workers.engines.text_stream import StopStrings
from workers.engines.turbomind_config import (CheckpointFacts, GpuFacts, ResolvedTurbomind,
                                              chat_template_config, engine_config, generation_config, resolve_options)
from workers.engines.turbomind_sampling import TURBOMIND_FEATURES, lmdeploy_logprobs
from workers.model_spec import ModelSpec
from workers.prompts.escaping import encode_prompt
from workers.prompts.templates import get_template

log = logging.getLogger(__name__)

# lmdeploy's error codes (lmdeploy.serve.core.exceptions.ErrorCode values) -> ours.
_LMDEPLOY_ERRORS = {
    "context_length_exceeded": ErrorCode.CONTEXT_TOO_LONG,
    "invalid_request": ErrorCode.INVALID_REQUEST,
    "unsupported_feature": ErrorCode.INVALID_REQUEST,
    "preprocess_failed": ErrorCode.INVALID_REQUEST,
}


def serving_error(err: Exception) -> ServingError:
    """An lmdeploy RequestError (or anything else it raised) as our error; unknown failures are engine errors,
    which the controller may retry on another worker."""
    code = getattr(getattr(err, "code", None), "value", None)
    ours = _LMDEPLOY_ERRORS.get(code, ErrorCode.ENGINE_ERROR)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return ServingError(ours, f"TurboMind: {message}")


def turbomind_unavailable_reason() -> str | None:
    """None when TurboMind can run here, else why not (for --engine auto and for a clear start error)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    try:
        from lmdeploy import turbomind
    except ImportError as exc:
        return f"lmdeploy is not installed ({exc})"
    if not turbomind.is_available():
        return f"lmdeploy's TurboMind extension did not load ({turbomind._import_error})"
    return None


def image_runs(input_ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    """[begin, end) of each maximal run of the image-context token."""
    runs, begin = [], None
    for i, tok in enumerate(input_ids):
        if tok == image_token_id and begin is None:
            begin = i
        elif tok != image_token_id and begin is not None:
            runs.append((begin, i))
            begin = None
    if begin is not None:
        runs.append((begin, len(input_ids)))
    return runs


def embedding_ranges(input_ids: list[int], image_token_id: int, num_tiles: list[int], total_tiles: int,
                     tokens_per_tile: int) -> list[tuple[int, int]]:
    """Where each image's features go, checked against the tiles: any mismatch would shift features onto the wrong
    tokens, so it is an error, never a guess."""
    runs = image_runs(input_ids, image_token_id)
    if sum(num_tiles) != total_tiles:
        raise ServingError(ErrorCode.INTERNAL, f"{total_tiles} pixel tiles but num_tiles adds up to {sum(num_tiles)}")
    if len(runs) != len(num_tiles):
        raise ServingError(ErrorCode.INVALID_REQUEST, f"the prompt has {len(runs)} image placeholders for "
                           f"{len(num_tiles)} images (is there a literal <IMG_CONTEXT> in the text?)")
    for (begin, end), tiles in zip(runs, num_tiles):
        if end - begin != tiles * tokens_per_tile:
            raise ServingError(ErrorCode.INVALID_REQUEST, f"an image placeholder has {end - begin} tokens, expected "
                               f"{tiles} tiles x {tokens_per_tile}")
    return runs


_END = object()  # queue item: the pump is done
_ABORTED = object()  # queue item: abort() was called


@dataclass
class _Live:
    """One request's link to lmdeploy: its session, the task reading lmdeploy's stream, and what it read."""

    session: Any = None  # lmdeploy Session, once preprocessed
    pump: asyncio.Task | None = None
    outputs: asyncio.Queue = field(default_factory=asyncio.Queue)  # lmdeploy GenOuts, an exception, _END, _ABORTED
    aborted: bool = False


def _holds_handle(session: Any) -> bool:
    """Whether the session got a TurboMind request handle (lmdeploy sets `_handle` for as long as it holds one; its
    own Session.async_abort reads it the same way)."""
    return getattr(session, "_handle", None) is not None


class TurbomindEngine(Engine):
    name = "turbomind"
    features = TURBOMIND_FEATURES

    def __init__(self, settings: Any, spec: ModelSpec):
        self.settings = settings
        self.spec = spec
        self.model_path = str(settings.model_path)
        self.model_id = settings.model_name or Path(self.model_path).name
        self.options = settings.turbomind
        self.ignore_eos = False  # benchmarks set it for fixed-length outputs
        self.resolved: ResolvedTurbomind | None = None
        self._pipe = None  # lmdeploy AsyncEngine
        self._vision = None  # InternVisionV1 for ps_version v1
        self._vision_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision")
        self._tokenizer = None
        self._image_token_id: int | None = None
        self._session_ids = itertools.count(1)
        self._max_token_chars: int | None = None
        self._live: dict[str, _Live] = {}
        self._background: set[asyncio.Task] = set()  # pumps and cancels still finishing after their request ended

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        reason = turbomind_unavailable_reason()
        if reason:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"--engine turbomind cannot run: {reason}")
        resolved = self.resolve(GpuFacts.probe(self.settings.tp))
        await self.load(resolved, vision_device="cuda:0")

    def resolve(self, gpus: GpuFacts) -> ResolvedTurbomind:
        dtype = getattr(self.settings, "dtype", "auto")
        resolved = resolve_options(self.options, spec=self.spec, facts=CheckpointFacts.read(self.model_path),
                                   gpus=gpus, tp=self.settings.tp, dtype=dtype,
                                   max_concurrency=getattr(self.settings, "max_concurrency", 8))
        log.info("TurboMind for %s: %s", self.model_id, resolved)
        for note in resolved.notes:
            log.warning("TurboMind: %s", note)
        return resolved

    async def load(self, resolved: ResolvedTurbomind, *, vision_device: str) -> None:
        """Vision tower first (when ours), so TurboMind sizes its KV cache from the memory that is really left."""
        self.resolved = resolved
        tokenizer = self.tokenizer
        self._image_token_id = tokenizer.convert_tokens_to_ids(self.spec.image_token)
        if self._image_token_id is None or self._image_token_id == tokenizer.unk_token_id:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"the tokenizer has no {self.spec.image_token} token")
        self._max_token_chars = longest_token_chars(tokenizer)
        if resolved.language_model_only:
            self._vision = await asyncio.to_thread(self._load_vision, vision_device)
        if resolved.vit_pinned_bytes:
            log.info("TurboMind's vision tower pins %.1f GiB of host memory per GPU (max_prefill_token_num %d)",
                     resolved.vit_pinned_bytes / 1024**3, resolved.max_prefill_token_num)
        self._pipe = await asyncio.to_thread(self._build_pipe, resolved)
        self._check_loaded_vision()

    def _check_loaded_vision(self) -> None:
        """After loading, TurboMind's own image tokens per tile must equal the prompt's (resolve_options checked the
        config; this reads the figure from the vision model lmdeploy built, where it exists)."""
        vision = getattr(getattr(self._pipe.engine, "source_model", None), "vision_model", None)
        theirs = getattr(vision, "_image_seq_length", None)
        if theirs is not None and int(theirs) != self.spec.tokens_per_tile:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"TurboMind's vision tower makes {theirs} tokens per tile but "
                               f"the prompt holds {self.spec.tokens_per_tile}; serve this checkpoint with "
                               "--engine transformers")

    def _load_vision(self, device: str):
        import torch

        from workers.engines.vision_v1 import InternVisionV1

        dtype = torch.float16 if self.resolved.dtype == "float16" else torch.bfloat16
        if device == "cpu":
            dtype = torch.float32
        vision = InternVisionV1.from_pretrained(self.model_path, device=device, dtype=dtype)
        if vision.cfg.tokens_per_tile != self.spec.tokens_per_tile:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"vision tower makes {vision.cfg.tokens_per_tile} tokens per "
                               f"tile but the prompt expands {self.spec.tokens_per_tile}")
        return vision

    def _build_pipe(self, resolved: ResolvedTurbomind):
        from lmdeploy.serve.core import AsyncEngine
        from lmdeploy.utils import get_logger

        level = "INFO" if str(getattr(self.settings, "log_level", "info")).lower() == "debug" else "WARNING"
        os.environ.setdefault("TM_LOG_LEVEL", level)
        get_logger("lmdeploy").setLevel(level)
        try:
            return AsyncEngine(self.model_path, model_name=self.model_id, backend="turbomind",
                               backend_config=engine_config(resolved), chat_template_config=chat_template_config(self.spec),
                               trust_remote_code=self.spec.checkpoint_format == "remote_code")
        except ServingError:
            raise
        except Exception as exc:  # lmdeploy raises ValueError/AssertionError/RuntimeError for unsupported models
            raise ServingError(ErrorCode.ENGINE_ERROR, f"TurboMind could not load {self.model_path}: {exc}") from exc

    async def stop(self) -> None:
        for live in list(self._live.values()):
            self._stop(live)
        await self.settle(timeout=30)
        pipe, self._pipe, self._vision = self._pipe, None, None
        if pipe is not None:
            await asyncio.to_thread(pipe.close)
        self._vision_pool.shutdown(wait=False)

    async def check_health(self) -> None:
        if self._pipe is None:
            raise ServingError(ErrorCode.ENGINE_ERROR, "TurboMind is not loaded yet")
        status = await self._pipe.health_probe(scheduler_stall_timeout=120.0)
        if status.get("status") != "healthy":
            raise ServingError(ErrorCode.ENGINE_ERROR, f"TurboMind is {status.get('status')}: {status.get('message')}")

    @property
    def context_length(self) -> int:
        return self.resolved.session_len if self.resolved is not None else self.spec.context_length

    # -- tokens ----------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self.model_path, trust_remote_code=self.spec.checkpoint_format == "remote_code")
        return self._tokenizer

    def encode(self, prompt: str, user_spans: tuple[tuple[int, int], ...] = ()) -> list[int]:
        # BOS as the checkpoints' own chat() adds it (Llama/Yi/InternLM2; none for Qwen2); message text as plain text.
        return encode_prompt(self.tokenizer, prompt, user_spans, get_template(self.spec.template))

    def tokenize(self, prompt: str, user_spans: tuple[tuple[int, int], ...] = ()) -> list[int]:
        return self.encode(prompt, user_spans)

    @property
    def max_token_chars(self) -> int | None:
        return self._max_token_chars

    # -- generation ------------------------------------------------------------------------------------------------

    async def image_inputs(self, request: GenerationRequest, input_ids: list[int]) -> dict[str, Any]:
        """The extra inputs lmdeploy passes to the TurboMind instance for this request's images."""
        pixels = request.pixel_values
        total = 0 if pixels is None else int(pixels.shape[0])
        num_tiles = list(request.num_tiles) or ([total] if total else [])
        ranges = embedding_ranges(input_ids, self._image_token_id, num_tiles, total, self.spec.tokens_per_tile)
        if not ranges:
            return {}
        starts = list(itertools.accumulate([0, *num_tiles]))
        if self.resolved.language_model_only:
            if self._vision is None:  # never let TurboMind see bare <IMG_CONTEXT> embeddings
                raise ServingError(ErrorCode.ENGINE_ERROR, "v1 vision tower is not loaded")
            feats = await self._features(pixels)
            embeds = [feats[a:b].reshape(-1, feats.shape[-1]) for a, b in zip(starts, starts[1:])]
            return {"input_embeddings": embeds, "input_embedding_ranges": [list(r) for r in ranges]}
        import torch

        # The dtype TurboMind's ViT runs in (resolve_options passes it explicitly): any other stops the process.
        dtype = torch.float16 if self.resolved.dtype == "float16" else torch.bfloat16
        return {"multimodal": [dict(pixel_values=pixels[a:b].to(dtype).contiguous(), offset=begin,
                                    image_tokens=end - begin, image_token_id=self._image_token_id)
                               for (a, b), (begin, end) in zip(zip(starts, starts[1:]), ranges)]}

    async def _features(self, pixels):
        import torch

        def run():
            return self._vision(pixels).float().cpu()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._vision_pool, run)
        except torch.OutOfMemoryError as exc:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"out of GPU memory computing image features for "
                               f"{pixels.shape[0]} tiles") from exc

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        from lmdeploy.serve.core import RequestError

        pipe = self._pipe
        if pipe is None:
            raise ServingError(ErrorCode.ENGINE_ERROR, "TurboMind is not loaded yet")
        live = self._live.setdefault(request.request_id, _Live())  # first: an abort may come at any await
        self.running += 1
        completion, reason, sent = 0, "length", 0  # sent: tokens whose text went out
        try:
            # Tokenized and checked against session_len once, by the serving layer (workers/context_check.py);
            # lmdeploy's preprocess refuses a prompt that does not fit as well.
            input_ids = (request.input_ids if request.input_ids is not None
                         else self.encode(request.prompt, request.user_spans))
            session_len = self.resolved.session_len
            extra = await self.image_inputs(request, input_ids)
            max_new = max(1, min(request.sampling.max_new_tokens, session_len - len(input_ids)))
            gen_cfg = generation_config(request.sampling, max_new_tokens=max_new, ignore_eos=self.ignore_eos)
            stops = StopStrings(request.sampling.stop)
            sampling, pending = request.sampling, []  # pending: logprobs of tokens whose text is not out yet
            try:
                prepared = await pipe.preprocess(None, next(self._session_ids), gen_config=gen_cfg,
                                                 input_ids=input_ids)
            except RequestError as exc:
                raise serving_error(exc) from exc
            prepared.inputs.update(extra)
            live.session = prepared.session
            if live.aborted:  # aborted while we tokenized, ran the vision tower or preprocessed
                pipe.session_mgr.remove(prepared.session)
                reason = "abort"
            else:
                live.pump = self._spawn(self._pump(pipe, prepared, live.outputs))
                while True:
                    out = await live.outputs.get()
                    if out is _ABORTED:
                        reason = "abort"
                        break
                    if out is _END:
                        break
                    if isinstance(out, RequestError):
                        raise serving_error(out)
                    if isinstance(out, BaseException):
                        raise ServingError(ErrorCode.ENGINE_ERROR, f"TurboMind: {type(out).__name__}: {out}") from out
                    completion = max(completion, out.generate_token_len)
                    if sampling.logprobs:
                        pending += lmdeploy_logprobs(out.token_ids, out.logprobs, self.tokenizer,
                                                     sampling.top_logprobs)
                    text = stops.feed(out.response)
                    if text:
                        yield TokenEvent(text, completion - sent, tuple(pending) if sampling.logprobs else None)
                        sent, pending = completion, []
                    if stops.hit:
                        reason = "stop"
                        break
                    if out.finish_reason:
                        reason = out.finish_reason
                if reason == "error":
                    raise ServingError(ErrorCode.ENGINE_ERROR, "TurboMind failed while generating")
                tail = stops.flush() if reason != "abort" else ""
                if tail:
                    yield TokenEvent(tail, completion - sent, tuple(pending) if sampling.logprobs else None)
            yield FinishEvent(reason=reason, prompt_tokens=len(input_ids), completion_tokens=completion)
        finally:
            # No await here: a client that left may be cancelling this task at every await (sse-starlette).
            self._stop(live)
            self._live.pop(request.request_id, None)
            if live.pump is not None and not live.pump.done():  # `running` drops once TurboMind confirmed the end
                live.pump.add_done_callback(lambda _: self._ended())
            else:
                self._ended()

    async def _pump(self, pipe, prepared, outputs: asyncio.Queue) -> None:
        """Reads one request's lmdeploy stream into its queue, in a task of its own (see the module docstring)."""
        try:
            async for out in pipe.generate(prepared, stream_response=True):
                outputs.put_nowait(out)
        except asyncio.CancelledError:  # _stop, while the request still queued for a TurboMind handle
            pass
        except Exception as exc:  # noqa: BLE001 - handed to the request, which raises it as a ServingError
            outputs.put_nowait(exc)
        finally:
            pipe.session_mgr.remove(prepared.session)  # idempotent; lmdeploy skips it when cancelled in the queue
            outputs.put_nowait(_END)

    def _stop(self, live: _Live) -> None:
        """Stop the request's TurboMind work without awaiting (see the module docstring)."""
        pump = live.pump
        if pump is None or pump.done():
            return
        if _holds_handle(live.session):
            self._spawn(live.session.async_abort())  # TurboMind cancels; the pump reads on until it confirms
        else:
            pump.cancel()  # still queued for a handle: leave the queue

    def _ended(self) -> None:
        self.running -= 1

    async def settle(self, timeout: float | None = None) -> None:
        """Wait until stopped requests have ended in TurboMind (their handles back in lmdeploy's pool)."""
        while self._background:
            done, _ = await asyncio.wait(list(self._background), timeout=timeout)
            if not done:
                return

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def abort(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is None:
            return
        live.aborted = True
        live.outputs.put_nowait(_ABORTED)  # the request stops waiting now, before any output
        self._stop(live)
