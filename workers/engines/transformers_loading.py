"""Loading an InternVL checkpoint with transformers: native (`InternVLForConditionalGeneration`) or remote-code
(`InternVLChatModel` through `trust_remote_code`), on CPU, one GPU, or split over several GPUs."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import ErrorCode, ServingError
from workers.model_spec import ModelSpec
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleLayout:
    """Where the parts of a checkpoint live, by module name, for building a device map."""

    vision: tuple[str, ...]  # vision tower and projector
    edges: tuple[str, ...]  # token embeddings, final norm, rotary embedding, LM head
    layers: str  # prefix of the numbered decoder layers


NATIVE_LAYOUT = ModuleLayout(
    vision=("model.vision_tower", "model.multi_modal_projector"),
    edges=("model.language_model.embed_tokens", "model.language_model.norm", "model.language_model.rotary_emb",
           "lm_head"),
    layers="model.language_model.layers",
)


def remote_code_layout(llm_arch: str) -> ModuleLayout:
    """InternVLChatModel wraps the LLM as `language_model`; InternLM2 names its embeddings and head differently."""
    if "InternLM2" in llm_arch:
        edges = ("language_model.model.tok_embeddings", "language_model.output")
    else:
        edges = ("language_model.model.embed_tokens", "language_model.lm_head")
    return ModuleLayout(vision=("vision_model", "mlp1"),
                        edges=edges + ("language_model.model.norm", "language_model.model.rotary_emb"),
                        layers="language_model.model.layers")


def split_device_map(layout: ModuleLayout, num_layers: int, num_gpus: int) -> dict[str, int]:
    """Spread the decoder layers over `num_gpus`, counting GPU 0 as half a GPU because it also holds the vision
    tower, the embeddings and the head. The last layer sits on GPU 0 too, next to the final norm and head, so the
    logits need no extra hop (the split the InternVL model cards recommend)."""
    if num_layers < 1 or num_gpus < 1:
        raise ValueError("need at least one layer and one GPU")
    device_map: dict[str, int] = {name: 0 for name in layout.vision + layout.edges}
    if num_gpus == 1:
        device_map.update({f"{layout.layers}.{i}": 0 for i in range(num_layers)})
        return device_map
    per_gpu = math.ceil(num_layers / (num_gpus - 0.5))
    counts = [math.ceil(per_gpu * 0.5)] + [per_gpu] * (num_gpus - 1)
    layer = 0
    for gpu, count in enumerate(counts):
        for _ in range(count):
            if layer < num_layers:
                device_map[f"{layout.layers}.{layer}"] = gpu
                layer += 1
    device_map[f"{layout.layers}.{num_layers - 1}"] = 0
    return device_map


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ServingError(ErrorCode.ENGINE_ERROR, "device 'cuda' was requested but no CUDA GPU is visible")
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    import torch

    if setting == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[setting]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    input_device: torch.device  # where input ids and pixel values go (the embeddings' device)
    dtype: torch.dtype
    image_token_id: int


def load_model(settings: WorkerSettings, spec: ModelSpec) -> LoadedModel:
    """Load weights and tokenizer; failures become a ServingError that names the checkpoint and the cause."""
    path = Path(settings.model_path)
    if not (path / "config.json").is_file():
        raise ServingError(ErrorCode.ENGINE_ERROR, f"{path} is not a checkpoint folder (no config.json)")
    weights_mib = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20
    # One line per phase (the launcher shows them while the stack starts): imports take most of a small model's load.
    log.info("importing torch and transformers, then loading %.0f MiB of weights from %s", weights_mib, path)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if settings.load_in_8bit and device != "cuda":
        raise ServingError(ErrorCode.ENGINE_ERROR, "load_in_8bit needs a CUDA GPU (bitsandbytes)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server log is no terminal
    try:
        if spec.checkpoint_format == "remote_code":
            model, tokenizer = _load_remote_code(path, spec, settings, device, dtype)
        else:
            model, tokenizer = _load_native(path, settings, device, dtype)
    except ServingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported with the checkpoint named
        raise ServingError(ErrorCode.ENGINE_ERROR,
                           f"could not load {path} ({spec.checkpoint_format} format): {type(exc).__name__}: {exc}"
                           ) from exc
    model.eval()
    image_token_id = tokenizer.convert_tokens_to_ids(spec.image_token)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ServingError(ErrorCode.ENGINE_ERROR, f"the tokenizer in {path} has no {spec.image_token} token")
    if spec.checkpoint_format == "remote_code":
        model.img_context_token_id = image_token_id  # InternVLChatModel.generate looks for it
    return LoadedModel(model=model, tokenizer=tokenizer, input_device=model.get_input_embeddings().weight.device,
                       dtype=dtype, image_token_id=image_token_id)


def _quantization(settings: WorkerSettings) -> dict[str, Any]:
    if not settings.load_in_8bit:
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}


def _gpu_device_map(layout: ModuleLayout, num_layers: int) -> dict[str, int] | None:
    import torch

    gpus = torch.cuda.device_count()
    return split_device_map(layout, num_layers, gpus) if gpus > 1 else None


def _load_native(path: Path, settings: WorkerSettings, device: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    kwargs: dict[str, Any] = {"dtype": dtype, **_quantization(settings)}
    if device == "cuda":
        from transformers import AutoConfig

        layers = AutoConfig.from_pretrained(path).get_text_config().num_hidden_layers
        kwargs["device_map"] = _gpu_device_map(NATIVE_LAYOUT, layers) or {"": 0}
    model = InternVLForConditionalGeneration.from_pretrained(path, **kwargs)
    return model, AutoTokenizer.from_pretrained(path)


def _load_remote_code(path: Path, spec: ModelSpec, settings: WorkerSettings, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, "low_cpu_mem_usage": True, "trust_remote_code": True,
                              **_quantization(settings)}
    if device == "cuda":
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        layers = config.llm_config.num_hidden_layers
        kwargs["device_map"] = _gpu_device_map(remote_code_layout(spec.llm_arch), layers) or {"": 0}
    model = AutoModel.from_pretrained(path, **kwargs)
    # The InternVL model cards load the slow tokenizer; some fast conversions differ on special tokens.
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
