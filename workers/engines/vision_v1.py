"""InternViT + MLP projector in PyTorch for pixel-shuffle v1 checkpoints (InternVL-Chat-V1-1, V1-2, V1-5 and kin).

lmdeploy 0.18 runs the InternViT inside TurboMind and refuses `ps_version` v1 (its kernels implement v2 only). For
those checkpoints the TurboMind engine runs TurboMind as a language model only and feeds it the image features
computed here, as `input_embeddings` placed at the `<IMG_CONTEXT>` runs of the prompt.

v1 vs v2 pixel shuffle: both merge each 2x2 block of patch features (row offset major, column offset minor, in
channels); v2 lays the merged tokens out row by row, v1 column by column (v1 skips the final transpose). The
projector then maps each merged token independently, so a v1 checkpoint served with v2 code gets its image tokens in
transposed order: no error, just worse answers. That is why `InternVisionV1` refuses any other ps_version.

Weights load from the remote-code (InternVLChatModel) layout, `vision_model.*` and `mlp1.*`: every v1 checkpoint
is in that format (transformers-native InternVL implements v2 only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ErrorCode, ServingError
from workers.checkpoint_files import language_model_config


@dataclass(frozen=True)
class VisionV1Config:
    hidden_size: int
    num_heads: int
    num_layers: int  # layers actually run: up to the selected feature layer
    intermediate_size: int
    image_size: int
    patch_size: int
    qk_norm: bool
    norm_type: str  # "rms_norm" | "layer_norm"
    norm_eps: float
    qkv_bias: bool
    hidden_act: str
    downsample_ratio: float
    llm_hidden_size: int
    ps_version: str

    @property
    def tokens_per_tile(self) -> int:
        side = self.image_size // self.patch_size
        return int(side * self.downsample_ratio) ** 2

    @classmethod
    def from_checkpoint_config(cls, cfg: dict[str, Any]) -> VisionV1Config:
        """From a remote-code (InternVLChatModel) or transformers-native (InternVLForConditionalGeneration)
        config.json. The native format has no ps_version (transformers implements v2); `ps_version` is read, never
        assumed, so a v2 checkpoint cannot slip into the v1 code."""
        v = cfg["vision_config"]
        native = "text_config" in cfg
        llm = language_model_config(cfg)
        depth = int(v["num_hidden_layers"])
        select = int(cfg.get("vision_feature_layer", -1) if native else cfg.get("select_layer", -1))
        # hidden_states[i] is the output of layer i (0 = embeddings): a negative index counts from depth + 1.
        run = depth + 1 + select if select < 0 else select
        if not 1 <= run <= depth:
            raise ValueError(f"vision feature layer {select} out of range for {depth} layers")
        image = v["image_size"][0] if isinstance(v["image_size"], list) else v["image_size"]
        patch = v["patch_size"][0] if isinstance(v["patch_size"], list) else v["patch_size"]
        return cls(hidden_size=int(v["hidden_size"]), num_heads=int(v["num_attention_heads"]), num_layers=run,
                   intermediate_size=int(v["intermediate_size"]), image_size=int(image), patch_size=int(patch),
                   qk_norm=bool(v.get("use_qk_norm") if native else v.get("qk_normalization", False)),
                   norm_type=v.get("norm_type", "rms_norm"), norm_eps=float(v.get("layer_norm_eps", 1e-6)),
                   qkv_bias=bool(v.get("attention_bias", True) if native else v.get("qkv_bias", True)),
                   hidden_act=v.get("hidden_act", "gelu"), downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
                   llm_hidden_size=int(llm["hidden_size"]),
                   ps_version=str(cfg.get("ps_version", "v2" if native else "v1")))


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def _norm(cfg: VisionV1Config, dim: int) -> nn.Module:
    return _RMSNorm(dim, cfg.norm_eps) if cfg.norm_type == "rms_norm" else nn.LayerNorm(dim, eps=cfg.norm_eps)


def _act(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU(), "gelu_pytorch_tanh": nn.GELU(approximate="tanh")}
    if name not in acts:
        raise ValueError(f"unsupported vision activation {name!r}")
    return acts[name]


class _Attention(nn.Module):
    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)  # packed q, k, v (the remote-code layout)
        self.q_norm = _RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = _RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else None
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.q_norm is not None:  # normalised over all heads together, as trained
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _act(cfg.hidden_act)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        self.norm1 = _norm(cfg, cfg.hidden_size)
        self.attn = _Attention(cfg)
        self.ls1 = nn.Parameter(torch.ones(cfg.hidden_size))
        self.norm2 = _norm(cfg, cfg.hidden_size)
        self.mlp = _Mlp(cfg)
        self.ls2 = nn.Parameter(torch.ones(cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class _Embeddings(nn.Module):
    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        d = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, (cfg.image_size // cfg.patch_size) ** 2 + 1, d))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class _Encoder(nn.Module):
    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        self.layers = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))


class _VisionModel(nn.Module):
    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)


def pixel_shuffle_v1(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, side, side, C] -> [B, side*r, side*r, C/r^2], v1 layout: merged token (i, j) sits at [:, j, i]."""
    b, w, h, c = x.shape
    x = x.reshape(b, w, int(h * ratio), int(c / ratio)).permute(0, 2, 1, 3)
    return x.reshape(b, int(h * ratio), int(w * ratio), int(c / ratio**2))


class InternVisionV1(nn.Module):
    """pixel tiles [N, 3, S, S] (normalised) -> image embeddings [N, tokens_per_tile, llm_hidden]."""

    def __init__(self, cfg: VisionV1Config):
        super().__init__()
        if cfg.ps_version != "v1":
            raise ServingError(ErrorCode.ENGINE_ERROR, f"vision_v1 implements pixel-shuffle v1 only; this checkpoint "
                               f"has ps_version {cfg.ps_version!r} and must use the v2 vision path")
        self.cfg = cfg
        self.vision_model = _VisionModel(cfg)
        merged = cfg.hidden_size * int(1 / cfg.downsample_ratio) ** 2
        # Same indices as the checkpoint's nn.Sequential(LayerNorm, Linear, GELU, Linear): mlp1.0 / .1 / .3
        self.mlp1 = nn.Sequential(nn.LayerNorm(merged), nn.Linear(merged, cfg.llm_hidden_size), nn.GELU(),
                                  nn.Linear(cfg.llm_hidden_size, cfg.llm_hidden_size))

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Hidden states of the selected layer, class token included: [N, 1 + patches, hidden]."""
        x = self.vision_model.embeddings(pixels)
        for block in self.vision_model.encoder.layers:
            x = block(x)
        return x

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ServingError(ErrorCode.INVALID_IMAGE, f"expected pixel tiles [N, 3, {size}, {size}], "
                               f"got {list(pixels.shape)}")
        param = self.mlp1[1].weight
        x = self.vision_features(pixels.to(param.device, param.dtype))[:, 1:]
        side = int(math.isqrt(x.shape[1]))
        x = pixel_shuffle_v1(x.reshape(x.shape[0], side, side, -1), self.cfg.downsample_ratio)
        return self.mlp1(x.reshape(x.shape[0], -1, x.shape[-1]))

    # -- loading ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.bfloat16) -> InternVisionV1:
        path = Path(model_path)
        cfg = VisionV1Config.from_checkpoint_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
        with torch.device("meta"):
            model = cls(cfg)
        state = dict(_vision_tensors(path))
        # Layers past the selected feature layer are never run: leave them on disk.
        keep = {k: v for k, v in state.items() if not _beyond(k, cfg.num_layers)}
        missing, unexpected = model.load_state_dict(keep, strict=False, assign=True)
        if missing or unexpected:
            raise ServingError(ErrorCode.ENGINE_ERROR, f"vision weights of {path} do not match the config: "
                               f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return model.to(device=device, dtype=dtype).eval()


def _beyond(name: str, layers: int) -> bool:
    prefix = "vision_model.encoder.layers."
    return name.startswith(prefix) and int(name[len(prefix):].split(".", 1)[0]) >= layers


_WANTED = ("vision_model.", "mlp1.")


def _vision_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Only the vision tower and projector tensors, straight from the shards (the LLM is TurboMind's)."""
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(str(shard), framework="pt") as fh:
                for name in fh.keys():
                    if name.startswith(_WANTED):
                        yield name, fh.get_tensor(name)
        return
    for shard in sorted(path.glob("*.bin")):
        state = torch.load(shard, map_location="cpu", mmap=True, weights_only=True)
        yield from ((k, v) for k, v in state.items() if k.startswith(_WANTED))
