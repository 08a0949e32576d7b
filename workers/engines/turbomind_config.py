"""Worker settings -> lmdeploy TurboMind configuration, with defaults derived from the checkpoint and the GPUs.

Everything here is plain data and arithmetic (no CUDA), so the whole mapping is tested on CPU: the engine probes the
GPUs, reads the checkpoint, and hands both to `resolve_options`. lmdeploy is imported lazily; its config classes
import fine on a CPU machine.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from common.errors import ErrorCode, ServingError
from workers.checkpoint_files import language_model_config, weight_bytes
from workers.engines.base import SamplingParams
from workers.model_spec import ModelSpec
from workers.settings import TurbomindOptions

if TYPE_CHECKING:
    from lmdeploy import ChatTemplateConfig, GenerationConfig, TurbomindEngineConfig

log = logging.getLogger(__name__)

GiB = 1024**3
# Memory TurboMind needs besides weights and KV cache (activations, NCCL buffers, CUDA context).
RUNTIME_RESERVE = int(1.5 * GiB)
# Extra headroom on the first GPU when our PyTorch vision tower runs there (its activations, allocator slack).
VISION_RESERVE = int(1.0 * GiB)
# Below this many full-length sessions of fp16/bf16 KV cache, the default switches to int8 KV (quant_policy 8).
MIN_FULL_SESSIONS = 4
KV_BYTES = {0: 2.0, 8: 1.0, 4: 0.5}  # bytes per cached element by quant_policy
# TurboMind's own defaults and bounds for the prefill step (tokens prefilled per forward pass).
LMDEPLOY_PREFILL_TOKENS = 8192
MIN_PREFILL_TOKENS = 2048
# TurboMind runs its engine in two overlapping phases (async_=1, lmdeploy's default); some buffers exist per phase.
TURBOMIND_PHASES = 2


@dataclass(frozen=True)
class CheckpointFacts:
    """What the memory arithmetic needs from a checkpoint, read from config.json and the weight files' headers."""

    architecture: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int | None
    llm_weight_bytes: int  # language model (+ anything not vision) at the checkpoint's dtype
    vision_weight_bytes: int  # vision tower + projector
    llm_dtype: str | None = None  # the language model's dtype in config.json ("bfloat16", "float16", ...)
    feature_layer: int = -1  # select_layer (remote code) / vision_feature_layer (native): which ViT layer feeds the LLM
    turbomind_tokens_per_tile: int | None = None  # the image_seq_length TurboMind's native ViT uses (v2 route)

    @classmethod
    def read(cls, model_path: str | Path) -> CheckpointFacts:
        path = Path(model_path)
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        llm = language_model_config(cfg) or cfg
        heads = int(llm["num_attention_heads"])
        hidden = int(llm["hidden_size"])
        weights = weight_bytes(path)
        native = "text_config" in cfg
        return cls(architecture=(cfg.get("architectures") or ["?"])[0], num_layers=int(llm["num_hidden_layers"]),
                   num_heads=heads, num_kv_heads=int(llm.get("num_key_value_heads") or heads),
                   head_dim=int(llm.get("head_dim") or hidden // heads),
                   max_position_embeddings=llm.get("max_position_embeddings"),
                   llm_weight_bytes=weights.total - weights.vision, vision_weight_bytes=weights.vision,
                   llm_dtype=llm.get("dtype") or llm.get("torch_dtype"),
                   feature_layer=int(cfg.get("vision_feature_layer" if native else "select_layer", -1)),
                   turbomind_tokens_per_tile=_turbomind_tokens_per_tile(cfg, native))


def _turbomind_tokens_per_tile(cfg: dict[str, Any], native: bool) -> int | None:
    """Image tokens per tile as lmdeploy 0.18's native ViT counts them (turbomind/models/internvl.py): the native
    format's `image_seq_length` (transformers' InternVLConfig default 256 when absent); the remote-code format
    computes it from the vision config's own image_size and patch_size (not `force_image_size`)."""
    if native:
        return int(cfg.get("image_seq_length", 256))
    vision = cfg.get("vision_config") or {}
    if "image_size" not in vision or "patch_size" not in vision:
        return None
    side = lambda v: int(v[0] if isinstance(v, list | tuple) else v)  # noqa: E731
    ratio = float(cfg.get("downsample_ratio", 0.5))
    return int((side(vision["image_size"]) // side(vision["patch_size"])) ** 2 * ratio**2)


@dataclass(frozen=True)
class GpuFacts:
    """The GPUs this worker will use (the first `tp` visible ones)."""

    name: str
    count: int  # visible devices
    total_bytes: int  # smallest total memory among the used devices
    free_bytes: int  # smallest free memory among the used devices, measured before loading anything
    bf16: bool = True  # the GPUs compute in bfloat16 (Ampere and newer)

    @classmethod
    def probe(cls, tp: int) -> GpuFacts:
        import torch

        count = torch.cuda.device_count()
        used = range(min(tp, count)) if count else range(0)
        mem = [torch.cuda.mem_get_info(i) for i in used] or [(0, 0)]
        return cls(name=torch.cuda.get_device_name(0) if count else "none", count=count,
                   total_bytes=min(t for _, t in mem), free_bytes=min(f for f, _ in mem),
                   bf16=bool(count) and torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class ResolvedTurbomind:
    """Every TurboMind setting with its final value, plus why (logged at start, shown in /health details)."""

    tp: int
    devices: list[int]
    dtype: str  # "bfloat16" or "float16", never "auto": the LLM, TurboMind's ViT and the pixels all use it
    session_len: int
    max_batch_size: int
    cache_max_entry_count: float
    enable_prefix_caching: bool
    quant_policy: int
    language_model_only: bool  # True: ps_version v1, vision runs in our PyTorch code and arrives as embeddings
    kv_bytes_per_token: float  # per GPU, at the chosen quant_policy
    kv_budget_bytes: int  # per GPU, what the cache may use
    max_prefill_token_num: int = LMDEPLOY_PREFILL_TOKENS
    vit_pinned_bytes: int = 0  # per GPU: host memory TurboMind's native ViT pins at start (0 on the v1 route)
    notes: tuple[str, ...] = ()


def kv_bytes_per_token(facts: CheckpointFacts, tp: int, quant_policy: int) -> float:
    """K and V for every layer, the KV heads split across TP ranks (replicated when fewer heads than ranks)."""
    heads_per_rank = max(1, math.ceil(facts.num_kv_heads / tp))
    return 2 * facts.num_layers * heads_per_rank * facts.head_dim * KV_BYTES[quant_policy]


def resolve_options(opts: TurbomindOptions, *, spec: ModelSpec, facts: CheckpointFacts, gpus: GpuFacts, tp: int,
                    dtype: str, max_concurrency: int) -> ResolvedTurbomind:
    """Apply the defaults; raise ServingError for settings that cannot work (before minutes of weight loading)."""
    notes: list[str] = []
    if gpus.count < tp:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"--tp {tp} needs {tp} GPUs but {gpus.count} are visible "
                           "(check CUDA_VISIBLE_DEVICES)")
    if facts.num_heads % tp:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"--tp {tp} does not divide the model's {facts.num_heads} "
                           "attention heads; choose a tp that does")
    if dtype == "float32":
        raise ServingError(ErrorCode.ENGINE_ERROR, "TurboMind runs in bfloat16 or float16, not float32; "
                           "use --dtype auto, bfloat16 or float16")
    dtype = compute_dtype(dtype, facts, gpus, notes)
    v1 = spec.ps_version != "v2"
    if not v1:
        check_native_vision(spec, facts)
    prefix = opts.enable_prefix_caching
    if v1 and prefix:
        # Cached blocks are keyed by token ids; every image is the same run of <IMG_CONTEXT> ids, so a cache hit
        # would silently reuse another image's features.
        raise ServingError(ErrorCode.ENGINE_ERROR, "prefix caching cannot be enabled for ps_version "
                           f"{spec.ps_version!r} checkpoints: their image features are passed as embeddings, "
                           "which the prefix cache cannot tell apart")
    if prefix is None:
        prefix = not v1

    session_len = opts.session_len or spec.context_length or facts.max_position_embeddings or 4096
    if facts.max_position_embeddings and session_len > facts.max_position_embeddings:
        notes.append(f"session_len {session_len} exceeds the checkpoint's max_position_embeddings "
                     f"{facts.max_position_embeddings}")
    max_batch = opts.max_batch_size or max(1, max_concurrency)

    weights_per_gpu = facts.llm_weight_bytes / tp + (facts.vision_weight_bytes if v1 else facts.vision_weight_bytes / tp)
    reserve = RUNTIME_RESERVE + (VISION_RESERVE if v1 else 0)
    free_after_weights = gpus.free_bytes - weights_per_gpu  # what TurboMind sees when it sizes the cache
    budget = free_after_weights - reserve
    if budget <= 0:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"the weights need {weights_per_gpu / GiB:.1f} GiB per GPU "
                           f"(+{reserve / GiB:.1f} GiB runtime) but only {gpus.free_bytes / GiB:.1f} GiB are free "
                           f"on {gpus.name}; raise --tp")

    quant = opts.quant_policy
    if quant is None:
        quant = 0
        wanted = min(max_batch, MIN_FULL_SESSIONS) * session_len
        if budget < wanted * kv_bytes_per_token(facts, tp, 0):
            quant = 8
            notes.append(f"int8 KV cache (quant_policy 8): bf16 KV for {MIN_FULL_SESSIONS} sessions of "
                         f"{session_len} tokens does not fit in {budget / GiB:.1f} GiB")
    per_token = kv_bytes_per_token(facts, tp, quant)
    if budget < session_len * per_token:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"not enough GPU memory for one session of {session_len} tokens "
                           f"({session_len * per_token / GiB:.1f} GiB of KV cache, {budget / GiB:.1f} GiB left); "
                           "lower session_len, raise --tp or quantise the KV cache")

    prefill = opts.max_prefill_token_num or default_prefill_tokens(spec, session_len, v1)
    ratio = opts.cache_max_entry_count
    if ratio is None:
        needed = max_batch * session_len * per_token
        ratio = min(needed, budget) / free_after_weights
        ratio = round(min(0.9, max(ratio, 0.05)), 4)
    cache_budget = int(ratio * free_after_weights)
    if cache_budget < max_batch * session_len * per_token:
        notes.append(f"KV cache holds {cache_budget / per_token:.0f} tokens, less than max_batch_size x "
                     f"session_len; long concurrent sessions will queue")
    return ResolvedTurbomind(tp=tp, devices=list(range(tp)), dtype=dtype, session_len=session_len,
                             max_batch_size=max_batch, cache_max_entry_count=ratio, enable_prefix_caching=prefix,
                             quant_policy=quant, language_model_only=v1, kv_bytes_per_token=per_token,
                             kv_budget_bytes=cache_budget, max_prefill_token_num=prefill,
                             vit_pinned_bytes=0 if v1 else vit_pinned_bytes(spec, prefill, max_batch, tp),
                             notes=tuple(notes))


def compute_dtype(setting: str, facts: CheckpointFacts, gpus: GpuFacts, notes: list[str]) -> str:
    """The one dtype TurboMind runs in, decided here rather than by lmdeploy.

    Given "auto", lmdeploy 0.18 resolves the LLM's dtype from the text config and the native ViT's separately from
    the vision config (turbomind/converter.py); when they disagree, pixels cast to the LLM's dtype stop the process
    in the ViT (a TM_CHECK on the pixel dtype). Passing one explicit dtype makes both the same; we pick the LLM's,
    as lmdeploy would for the LLM."""
    dtype = setting
    if dtype == "auto":
        dtype = facts.llm_dtype if facts.llm_dtype in ("bfloat16", "float16") else "bfloat16"
    if dtype == "bfloat16" and not gpus.bf16:
        notes.append(f"{gpus.name} has no bfloat16: running in float16")
        dtype = "float16"
    return dtype


def check_native_vision(spec: ModelSpec, facts: CheckpointFacts) -> None:
    """Refuse what TurboMind's native ViT (the v2 route) would get silently wrong."""
    if facts.feature_layer != -1:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"this checkpoint takes image features from vision layer "
                           f"{facts.feature_layer} (select_layer / vision_feature_layer), but TurboMind's vision "
                           "tower always uses the last layer; serve it with --engine transformers")
    if facts.turbomind_tokens_per_tile not in (None, spec.tokens_per_tile):
        raise ServingError(ErrorCode.ENGINE_ERROR, f"TurboMind's vision tower makes "
                           f"{facts.turbomind_tokens_per_tile} tokens per tile (image_seq_length) but the prompt "
                           f"holds {spec.tokens_per_tile} per tile (image size, patch, downsample ratio); fix the "
                           "checkpoint's config or serve it with --engine transformers")


def default_prefill_tokens(spec: ModelSpec, session_len: int, v1: bool) -> int:
    """Tokens TurboMind prefills per step. On the v2 route an image split across steps runs through the ViT once per
    step, so a step holds one full-size image (its tiles + thumbnail), rounded up to 1024, between 2048 and
    lmdeploy's 8192; that also halves the ViT's pinned host buffer (`vit_pinned_bytes`). The v1 route keeps
    lmdeploy's default. Never more than a session holds."""
    if v1:
        tokens = LMDEPLOY_PREFILL_TOKENS
    else:
        image = (spec.max_tiles + (1 if spec.use_thumbnail and spec.max_tiles > 1 else 0)) * spec.tokens_per_tile
        tokens = min(max(MIN_PREFILL_TOKENS, -(-image // 1024) * 1024), LMDEPLOY_PREFILL_TOKENS)
    return max(256, min(tokens, -(-session_len // 256) * 256))


def vit_pinned_bytes(spec: ModelSpec, prefill_tokens: int, max_batch: int, tp: int) -> int:
    """Host memory lmdeploy 0.18's native ViT pins per GPU at start (src/turbomind/models/internvit/internvit.cc):
    per phase, a pixel buffer of [max_forward_token_num, 3, S, S] in 2-byte floats, where max_forward_token_num is
    max_prefill_token_num + max_batch_size rounded up to a multiple of tp. It is sized in tokens but holds tiles."""
    forward = -(-(prefill_tokens + max_batch) // tp) * tp
    return TURBOMIND_PHASES * forward * 3 * spec.image_size * spec.image_size * 2


def engine_config(resolved: ResolvedTurbomind) -> TurbomindEngineConfig:
    from lmdeploy import TurbomindEngineConfig

    return TurbomindEngineConfig(
        dtype=resolved.dtype, tp=resolved.tp, devices=list(resolved.devices), session_len=resolved.session_len,
        max_batch_size=resolved.max_batch_size, cache_max_entry_count=resolved.cache_max_entry_count,
        enable_prefix_caching=resolved.enable_prefix_caching, quant_policy=resolved.quant_policy,
        language_model_only=resolved.language_model_only, max_prefill_token_num=resolved.max_prefill_token_num,
        enable_metrics=False,  # our worker reports its own load; lmdeploy's metrics task is not needed
    )


# lmdeploy's registered templates of the same families (same markers, same trimming), with our markers spelled out
# on top (lmdeploy's `internvl-zh` lacks V1-1's system separator); other families get lmdeploy's plain template.
_LMDEPLOY_NAMES = {"Hermes-2": "llava-chatml", "internvl_zh": "internvl-zh"}


def chat_template_config(spec: ModelSpec) -> ChatTemplateConfig:
    """The family's template (workers.prompts.templates, the one source of prompt bytes) as lmdeploy's config.

    Our worker renders prompts itself and hands TurboMind token ids, so lmdeploy uses this only for its stop words;
    it is still complete, so lmdeploy never falls back to guessing from the tokenizer or the folder name."""
    from lmdeploy import ChatTemplateConfig

    from workers.prompts.templates import get_template

    try:
        tpl = get_template(spec.template)
    except ValueError as exc:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"TurboMind: {exc}") from exc
    # lmdeploy drops None fields: empty markers render no system block (unless the family always has one)
    none = spec.system_message is None and not tpl.always_system
    return ChatTemplateConfig(
        model_name=_LMDEPLOY_NAMES.get(tpl.name, "base"), system="" if none else tpl.system_start,
        meta_instruction="" if none else spec.system_message or "", eosys="" if none else tpl.system_end,
        user=tpl.user_start, eoh=tpl.user_end, assistant=tpl.assistant_start, eoa=tpl.assistant_end, separator="",
        stop_words=list(dict.fromkeys([*tpl.stop_words, *spec.stop_words])))


def generation_config(sampling: SamplingParams, *, max_new_tokens: int, ignore_eos: bool = False) -> GenerationConfig:
    """Our sampling parameters as lmdeploy's. Stop *strings* are matched by the engine on the text stream (lmdeploy
    only stops on single tokens); the template's stop tokens come from the chat template config. What TurboMind
    cannot honour never gets here (turbomind_sampling.py, workers/openai_support.py)."""
    from lmdeploy import GenerationConfig

    greedy = sampling.temperature <= 0 or sampling.top_k == 1
    ignore_eos = ignore_eos or sampling.ignore_eos
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=min(max(sampling.temperature, 0.0), 2.0),
        top_p=sampling.top_p, top_k=sampling.top_k or 0, repetition_penalty=sampling.repetition_penalty,
        random_seed=sampling.seed, ignore_eos=ignore_eos, skip_special_tokens=sampling.skip_special_tokens,
        min_p=sampling.min_p, min_new_tokens=min(sampling.min_new_tokens, max_new_tokens) or None,
        stop_token_ids=list(sampling.stop_token_ids) or None, response_format=sampling.response_format,
        # lmdeploy's top-n always holds the chosen token as well; top_logprobs 0 still needs n >= 1
        logprobs=max(1, sampling.top_logprobs) if sampling.logprobs else None)
