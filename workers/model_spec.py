"""What the worker must know about a checkpoint to preprocess and prompt for it, read from the checkpoint's own
files, never its folder name: `ModelSpec`, and `detect_model_spec` that fills it.

Two checkpoint formats exist:
- remote-code (`InternVLChatModel`, trust_remote_code): config.json names the prompt `template`, the pixel-shuffle
  `ps_version`, `force_image_size`, `dynamic_image_size`, `use_thumbnail`, `min/max_dynamic_patch`, and holds the
  vision and LLM configs (`vision_config`, `llm_config`).
- transformers-native (`InternVLForConditionalGeneration`, the "-hf" conversions of InternVL 2.5 / 3 / 3.5): the
  tiling settings live in the image processor config (GotOcr2ImageProcessor, `crop_to_patches`), the prompt format
  in the tokenizer's chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workers.prompts.templates import (SYSTEM_INTERNVL2, SYSTEM_INTERNVL2_5, SYSTEM_V1_2, TEMPLATES,
                                       get_template)
from workers.vision.tiling import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ModelSpec:
    family: str  # e.g. "internvl-chat-v1-2", "internvl-chat-v1-5", "mini-internvl", "internvl2", "internvl2.5", "internvl3"
    checkpoint_format: Literal["native", "remote_code"]  # transformers-native InternVL, or trust_remote_code
    template: str  # prompt template name understood by workers.prompts
    llm_arch: str  # e.g. "LlamaForCausalLM", "InternLM2ForCausalLM", "Qwen2ForCausalLM"
    image_size: int  # tile side in pixels (448 for real checkpoints)
    dynamic: bool  # dynamic tiling (1.5+) or one fixed image (V1-1/V1-2)
    use_thumbnail: bool
    min_tiles: int
    max_tiles: int
    tokens_per_tile: int  # 256 for real checkpoints
    ps_version: str  # pixel-shuffle version, "v1" or "v2"
    context_length: int
    image_token: str = "<IMG_CONTEXT>"
    image_start: str = "<img>"
    image_end: str = "</img>"
    stop_words: tuple[str, ...] = ()
    system_message: str | None = None  # the family's default system prompt (None: none)
    random_weights: bool = False  # the demo checkpoint: answers are noise, say so wherever it is served
    thinking: bool = False  # has a thinking mode (InternVL3.5: workers/prompts/thinking.py)
    extra: dict[str, object] = field(default_factory=dict)


REMOTE_ARCH = "InternVLChatModel"
NATIVE_ARCH = "InternVLForConditionalGeneration"
_QWEN3_LIKE = ("qwen3", "gpt_oss", "gptoss")  # InternVL3.5 language models
_VIT_300M_HIDDEN = 1024  # InternViT-300M (Mini-InternVL) vs InternViT-6B (hidden 3200)
THINKING_FAMILIES = frozenset({"internvl3.5"})  # trained with the thinking system prompt (InternVL3.5 model cards)


class UnsupportedCheckpoint(ValueError):
    """The folder is not an InternVL checkpoint this worker knows how to prompt and preprocess."""


def detect_model_spec(path: str | Path) -> ModelSpec:
    path = Path(path)
    config = _read_json(path / "config.json", required=True)
    arch = (config.get("architectures") or [None])[0]
    _refuse_flash(path, config)
    if arch == REMOTE_ARCH:
        return _remote_code_spec(path, config)
    if arch == NATIVE_ARCH:
        return _native_spec(path, config)
    raise UnsupportedCheckpoint(
        f"{path}/config.json declares architectures={config.get('architectures')!r}; expected an InternVL "
        f"checkpoint: {REMOTE_ARCH!r} (InternVL-Chat V1-1 .. InternVL3.5, trust_remote_code format) or "
        f"{NATIVE_ARCH!r} (transformers-native InternVL 2.5/3/3.5)")


def _refuse_flash(path: Path, config: dict[str, Any]) -> None:
    """InternVL3.5-Flash: its Visual Resolution Router picks, per tile and inside the model, 256 or 64 tokens; our
    prompts expand every tile to a fixed count before the engine runs, and neither TurboMind nor transformers'
    native InternVL has the router, so such a checkpoint would be fed the wrong number of image tokens."""
    if config.get("flash_mode"):
        raise UnsupportedCheckpoint(
            f"{path} is an InternVL3.5-Flash checkpoint (config.json: flash_mode={config['flash_mode']!r}, the "
            "Visual Resolution Router). Neither engine of this worker can serve it: TurboMind and transformers' "
            "native InternVL have no router. Serve it with lmdeploy's PyTorch engine (`lmdeploy serve api_server "
            "--backend pytorch`) or the authors' remote code (`model.chat`), or serve the non-Flash InternVL3.5 "
            "checkpoint of the same size here")


def _read_json(file: Path, required: bool = False) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise UnsupportedCheckpoint(f"{file} not found: expected a checkpoint folder with config.json") from None
        return {}
    except (OSError, ValueError) as exc:
        raise UnsupportedCheckpoint(f"{file} is not readable JSON: {exc}") from exc


def _side(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


def _tokens_per_tile(image_size: int, patch: int, downsample: float) -> int:
    return int((image_size // patch) ** 2 * downsample**2)


def _remote_code_spec(path: Path, config: dict[str, Any]) -> ModelSpec:
    template = config.get("template")
    if template not in TEMPLATES:
        raise UnsupportedCheckpoint(
            f"{path}/config.json has template={template!r}; expected one of {sorted(TEMPLATES)} "
            "(InternVL-Chat-V1-1: internvl_zh, V1-2: Hermes-2, V1-5/Mini-InternVL/InternVL2: internlm2-chat, "
            "phi3-chat or Hermes-2, InternVL2.5/3/3.5: internvl2_5)")
    vision = config.get("vision_config") or {}
    llm = config.get("llm_config") or {}
    llm_arch = (llm.get("architectures") or ["unknown"])[0]
    image_size = _side(config.get("force_image_size") or vision.get("image_size") or 448)
    patch = _side(vision.get("patch_size", 14))
    tokens = _tokens_per_tile(image_size, patch, float(config.get("downsample_ratio", 0.5)))
    ps_version = config.get("ps_version") or "v1"
    dynamic = bool(config.get("dynamic_image_size", False))
    family, system = _remote_family(template, ps_version, dynamic, llm_arch, vision)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if not dynamic:  # V1-1 / V1-2 ship a CLIPImageProcessor config: its mean/std are the ones trained with
        pre = _read_json(path / "preprocessor_config.json")
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    tpl = get_template(template)
    return ModelSpec(
        family=family, checkpoint_format="remote_code", template=template, llm_arch=llm_arch,
        image_size=image_size, dynamic=dynamic, use_thumbnail=dynamic and bool(config.get("use_thumbnail", False)),
        min_tiles=int(config.get("min_dynamic_patch", 1)) if dynamic else 1,
        max_tiles=int(config.get("max_dynamic_patch", 12)) if dynamic else 1,
        tokens_per_tile=tokens, ps_version=ps_version,
        context_length=int(llm.get("max_position_embeddings") or llm.get("max_sequence_length") or 4096),
        stop_words=tpl.stop_words, system_message=system, random_weights=bool(config.get("random_weights", False)),
        thinking=family in THINKING_FAMILIES, extra={"image_mean": tuple(mean), "image_std": tuple(std)},
    )


def _remote_family(template: str, ps_version: str, dynamic: bool, llm_arch: str,
                   vision: dict[str, Any]) -> tuple[str, str | None]:
    """(family, default system message) of a remote-code checkpoint."""
    if not dynamic:
        if template == "internvl_zh":
            return "internvl-chat-v1-1", None
        if template == "Hermes-2":
            return "internvl-chat-v1-2", SYSTEM_V1_2  # V1-2 and V1-2-Plus share one config shape
        raise UnsupportedCheckpoint(f"fixed-size (dynamic_image_size false) checkpoint with template {template!r}: "
                                    "expected InternVL-Chat-V1-1 (internvl_zh) or V1-2 (Hermes-2)")
    if template == "internvl_zh":
        raise UnsupportedCheckpoint("template internvl_zh with dynamic tiling: no InternVL release has that")
    if template == "internvl2_5":
        arch = llm_arch.lower()
        if any(name in arch for name in _QWEN3_LIKE):
            return "internvl3.5", SYSTEM_INTERNVL2_5
        return ("internvl3" if "qwen2" in arch else "internvl2.5"), SYSTEM_INTERNVL2_5
    if ps_version == "v1":  # pixel shuffle v1: the 1.5 generation
        small_vit = int(vision.get("hidden_size", 3200)) <= _VIT_300M_HIDDEN
        return ("mini-internvl" if small_vit else "internvl-chat-v1-5"), SYSTEM_INTERNVL2
    return "internvl2", SYSTEM_INTERNVL2


def _native_spec(path: Path, config: dict[str, Any]) -> ModelSpec:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    image_size = _side(vision.get("image_size", 448))
    patch = _side(vision.get("patch_size", 14))
    tokens = _tokens_per_tile(image_size, patch, float(config.get("downsample_ratio", 0.5)))
    processor = _read_json(path / "processor_config.json")
    seq = processor.get("image_seq_length", config.get("image_seq_length"))
    if seq is not None and int(seq) != tokens:
        raise UnsupportedCheckpoint(f"{path}: image_seq_length {seq} does not match the vision config "
                                    f"({image_size}px tiles, patch {patch}, downsample -> {tokens} tokens)")
    image_proc = _read_json(path / "preprocessor_config.json") or processor.get("image_processor") or {}
    size = image_proc.get("size") or {}
    if size and int(size.get("height", image_size)) != image_size:
        raise UnsupportedCheckpoint(f"{path}: image processor tile size {size} differs from the vision tower's "
                                    f"{image_size}px")
    chat_template = _chat_template(path)
    if "<|im_start|>" not in chat_template:
        raise UnsupportedCheckpoint(f"{path}: the tokenizer's chat template is not ChatML (no <|im_start|>); "
                                    "expected the InternVL 2.5/3/3.5 format")
    text_type = str(text.get("model_type", "")).lower()
    family = "internvl3.5" if any(name in text_type for name in _QWEN3_LIKE) else "internvl3"
    tpl = get_template("internvl2_5")
    return ModelSpec(
        family=family, checkpoint_format="native", template="internvl2_5",
        llm_arch=(text.get("architectures") or [_arch_from_type(text_type)])[0],
        image_size=image_size, dynamic=bool(image_proc.get("crop_to_patches", True)), use_thumbnail=True,
        min_tiles=int(image_proc.get("min_patches", 1)), max_tiles=int(image_proc.get("max_patches", 12)),
        tokens_per_tile=tokens, ps_version="v2",
        context_length=int(text.get("max_position_embeddings", 4096)),
        stop_words=tpl.stop_words,
        system_message=None,  # the "-hf" chat templates carry no default system prompt; we render what they render
        random_weights=bool(config.get("random_weights", False)), thinking=family in THINKING_FAMILIES,
        extra={"image_mean": tuple(image_proc.get("image_mean", IMAGENET_MEAN)),
               "image_std": tuple(image_proc.get("image_std", IMAGENET_STD))},
    )


def _chat_template(path: Path) -> str:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        value = _read_json(path / name).get("chat_template")
        if isinstance(value, str):
            return value
    raise UnsupportedCheckpoint(f"{path}: no chat template found (chat_template.jinja, chat_template.json or "
                                "tokenizer_config.json)")


def _arch_from_type(model_type: str) -> str:
    return {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
            "qwen3_moe": "Qwen3MoeForCausalLM", "gpt_oss": "GptOssForCausalLM"}.get(model_type, model_type or "unknown")
