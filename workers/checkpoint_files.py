"""What a checkpoint folder says about itself, read in one place: the language model's part of config.json and the
bytes of its weights (split into vision and the rest). The model spec (workers/model_spec.py), the engine choice
(workers/engines/select.py), TurboMind's sizing (workers/engines/turbomind_config.py), the V1 vision tower
(workers/engines/vision_v1.py) and the launcher's GPU plan (launcher/gpus.py) read them from here. Light imports
only: the launcher imports this at start-up.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Tensors of the vision tower and projector, in both formats (remote code: vision_model/mlp1; transformers-native).
VISION_PREFIXES = ("vision_model.", "mlp1.", "model.vision_tower.", "model.multi_modal_projector.",
                   "vision_tower.", "multi_modal_projector.")
# Weights without a safetensors header: only their file sizes are known.
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")


def language_model_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's config inside an InternVL config.json: `llm_config` (remote code) or `text_config`
    (transformers-native); {} when it has neither."""
    return cfg.get("llm_config") or cfg.get("text_config") or {}


@dataclass(frozen=True)
class WeightBytes:
    vision: int  # vision tower + projector
    total: int  # everything; total - vision is the language model (+ anything not vision)


def weight_bytes(model_path: str | Path) -> WeightBytes:
    """Safetensors headers give exact per-tensor sizes without reading the weights; other weight files (.bin, .pt)
    only their file sizes, all counted as language model (the conservative side)."""
    path = Path(model_path)
    vision = total = 0
    files = sorted(path.glob("*.safetensors"))
    for file in files:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            total += end - begin
            if name.startswith(VISION_PREFIXES):
                vision += end - begin
    if not files:
        total = sum(f.stat().st_size for f in path.glob("*") if f.name.endswith(OTHER_WEIGHT_SUFFIXES) and f.is_file())
    return WeightBytes(vision, total)
