"""What the worker must know about a checkpoint to preprocess and prompt for it, read from the checkpoint itself.

`detect_model_spec` (in workers.prompts.families) fills this from config.json & co., never from the folder name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    normalize: Literal["imagenet", "clip"]
    context_length: int
    image_token: str = "<IMG_CONTEXT>"
    image_start: str = "<img>"
    image_end: str = "</img>"
    stop_words: tuple[str, ...] = ()
    system_message: str | None = None  # the family's default system prompt (None: none)
    random_weights: bool = False  # the demo checkpoint: answers are noise, say so wherever it is served
    extra: dict[str, object] = field(default_factory=dict)
