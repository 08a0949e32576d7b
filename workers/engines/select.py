"""Which engine serves a worker: `--engine auto | transformers | turbomind | module.path:ClassName`.

`auto` picks TurboMind when it can run here (a CUDA GPU, lmdeploy's TurboMind extension loads) and supports the
checkpoint (its LLM architecture is one TurboMind implements); otherwise the transformers engine, and it logs why.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from common.errors import ErrorCode, ServingError
from workers.checkpoint_files import language_model_config
from workers.engines.base import Engine
from workers.model_spec import ModelSpec
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

BUILTIN = {
    "transformers": "workers.engines.transformers_engine:TransformersEngine",
    "turbomind": "workers.engines.turbomind_engine:TurbomindEngine",
}
# InternVL checkpoint formats TurboMind loads (lmdeploy/turbomind/supported_models.py).
_TURBOMIND_VLM_ARCHS = {"InternVLChatModel", "InternVLForConditionalGeneration"}


def load_engine_class(ref: str) -> type[Engine]:
    """`module.path:ClassName` -> the class, which must subclass Engine."""
    module_name, sep, class_name = ref.partition(":")
    if not sep or not module_name or not class_name:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"--engine {ref!r}: expected auto, transformers, turbomind or "
                           "module.path:ClassName")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"--engine {ref!r}: cannot load it ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ServingError(ErrorCode.INVALID_REQUEST, f"--engine {ref!r} is not an Engine subclass")
    return cls


def turbomind_checkpoint_problem(model_path: str | Path) -> str | None:
    """None when TurboMind implements this checkpoint's architecture, else why not. Reads config.json only."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"cannot read config.json ({exc})"
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in _TURBOMIND_VLM_ARCHS:
        return f"architecture {arch} is not an InternVL format TurboMind loads"
    llm = language_model_config(cfg)
    llm_arch = (llm.get("architectures") or [None])[0]
    if llm_arch is None:  # lmdeploy picks the TurboMind text model by this name alone
        return "the language model config names no architectures"
    from lmdeploy.turbomind.supported_models import SUPPORTED_ARCHS  # imports without CUDA

    if llm_arch not in SUPPORTED_ARCHS:
        return f"TurboMind does not implement the language model {llm_arch}"
    return None


def choose_engine(settings: WorkerSettings, spec: ModelSpec) -> str:
    """The engine reference to use for these settings (`auto` resolved)."""
    choice = settings.engine
    if choice != "auto":
        return BUILTIN.get(choice, choice)
    if settings.device == "cpu":
        return BUILTIN["transformers"]
    from workers.engines.turbomind_engine import turbomind_unavailable_reason

    reason = turbomind_unavailable_reason() or turbomind_checkpoint_problem(settings.model_path)
    if reason:
        log.info("--engine auto: transformers (TurboMind not used: %s)", reason)
        return BUILTIN["transformers"]
    log.info("--engine auto: turbomind (%s, tp=%s)", spec.family, settings.tp)
    return BUILTIN["turbomind"]


def create_engine(settings: WorkerSettings, spec: ModelSpec) -> Engine:
    return load_engine_class(choose_engine(settings, spec))(settings, spec)
