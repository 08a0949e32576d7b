"""Random-weight InternVL checkpoints with TurboMind-compatible shapes (head_dim 128, 448px tiles), built offline.

Two formats, one per vision route of the TurboMind engine:
- `remote_v1`: InternVLChatModel layout like InternVL-Chat-V1-2 (Llama LLM, fixed 448 image, ps_version v1,
  Hermes-2 template) -> TurboMind runs the LLM only, our PyTorch InternViT makes the image embeddings.
- `native_v2`: transformers-native InternVLForConditionalGeneration (Qwen2 LLM, ps_version v2) -> TurboMind runs the
  InternViT itself; the transformers engine serves the same folder (the benchmark compares both on it).

The remote-code format normally ships InternVL's model code; no model code is needed to serve it with TurboMind,
only a config class, so we write a small one of our own (`configuration_internvl_chat.py`).

    python -m tests.gpu.random_checkpoint OUT_DIR --format native_v2 --size 2b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# name -> (vision: hidden, layers, heads, intermediate; llm: hidden, layers, heads, kv heads, intermediate, vocab)
SIZES = {
    "tiny": ((128, 2, 2, 512), (256, 2, 2, 2, 512, 1024)),
    "2b": ((1024, 24, 16, 4096), (1536, 28, 12, 2, 8960, 151936)),  # ~ InternVL2.5/3-2B (InternViT-300M + 1.5B)
    "8b": ((1024, 24, 16, 4096), (3584, 28, 28, 4, 18944, 152064)),  # ~ InternVL3-8B (InternViT-300M + 7B)
}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGE, PATCH = 448, 14

CONFIG_CLASS = '''"""Config class for a random-weight test checkpoint in the InternVLChatModel layout (written by
tests/gpu/random_checkpoint.py; there is no model code: TurboMind and our vision path read the weights directly)."""
from transformers import AutoConfig, PretrainedConfig


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        super().__init__(**kwargs)
        self.vision_config = PretrainedConfig(**(vision_config or {}))
        llm = dict(llm_config or {})
        self.llm_config = AutoConfig.for_model(llm.pop("model_type", "llama"), **llm)

    def to_dict(self):
        out = super().to_dict()
        out["vision_config"] = self.vision_config.to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        return out
'''


def _tokenizer():
    from workers.demo_checkpoint import _train_tokenizer  # same special tokens as the demo checkpoint

    return _train_tokenizer()


def _silence_stops(head: torch.Tensor, tokenizer) -> None:
    """Zero LM-head rows of end tokens and of ids the tokenizer lacks: greedy decoding then never stops early
    (fixed-length outputs for benchmarks) and never emits an id the detokenizer cannot read."""
    with torch.no_grad():
        head[len(tokenizer):].zero_()
        for tok in ("<|im_end|>", "<|endoftext|>"):
            head[tokenizer.convert_tokens_to_ids(tok)].zero_()


def build_native_v2(out: Path, size: str = "tiny", device: str = "cpu") -> Path:
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor)

    from workers.demo_checkpoint import CHAT_TEMPLATE, IMAGENET_MEAN, IMAGENET_STD

    (vh, vl, vheads, vi), (h, layers, heads, kv, inter, vocab) = SIZES[size]
    tok = _tokenizer()
    ids = tok.convert_tokens_to_ids
    tokens = int((IMAGE // PATCH) ** 2 * 0.25)
    config = InternVLConfig(
        vision_config=dict(hidden_size=vh, num_hidden_layers=vl, num_attention_heads=vheads, intermediate_size=vi,
                           image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH], use_mean_pooling=True),
        text_config=dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=vocab, hidden_size=h,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, max_position_embeddings=8192, tie_word_embeddings=False,
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), dtype="bfloat16"),
        image_token_id=ids("<IMG_CONTEXT>"), image_seq_length=tokens, downsample_ratio=0.5,
        tie_word_embeddings=False, dtype="bfloat16")
    config.architectures = ["InternVLForConditionalGeneration"]
    torch.manual_seed(0)
    with torch.device(device):
        model = InternVLForConditionalGeneration(config).to(torch.bfloat16).eval()
    _silence_stops(model.get_output_embeddings().weight, tok)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.save_pretrained(out)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": IMAGE, "width": IMAGE}, crop_to_patches=True,
                                              min_patches=1, max_patches=12, image_mean=IMAGENET_MEAN,
                                              image_std=IMAGENET_STD),
        video_processor=InternVLVideoProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=IMAGENET_MEAN,
                                               image_std=IMAGENET_STD),
        tokenizer=tok, image_seq_length=tokens, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    _mark_random(out)
    return out


def build_remote_v1(out: Path, size: str = "tiny", device: str = "cpu") -> Path:
    """InternVL-Chat-V1-2's layout and config shape (Llama LLM, one 448 tile, ps_version v1, Hermes-2)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, LlamaConfig, LlamaForCausalLM

    from workers.engines.vision_v1 import InternVisionV1, VisionV1Config

    (vh, vl, vheads, vi), (h, layers, heads, kv, inter, vocab) = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    ids = tok.convert_tokens_to_ids
    llm = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=h,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
               max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
               bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<|im_end|>"), torch_dtype="bfloat16")
    vision = dict(model_type="intern_vit_6b", architectures=["InternVisionModel"], hidden_size=vh,
                  num_hidden_layers=vl, num_attention_heads=vheads, intermediate_size=vi, image_size=IMAGE,
                  patch_size=PATCH, num_channels=3, qk_normalization=True, norm_type="rms_norm",
                  layer_norm_eps=1e-6, qkv_bias=False, hidden_act="gelu", torch_dtype="bfloat16")
    config = dict(architectures=["InternVLChatModel"], model_type="internvl_chat",
                  auto_map={"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"}, template="Hermes-2",
                  ps_version="v1", select_layer=-1, downsample_ratio=0.5, force_image_size=IMAGE,
                  dynamic_image_size=False, use_thumbnail=False, torch_dtype="bfloat16", vision_config=vision,
                  llm_config=llm, random_weights=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "configuration_internvl_chat.py").write_text(CONFIG_CLASS)

    torch.manual_seed(0)
    with torch.device(device):
        lm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in llm.items() if k not in ("model_type", "torch_dtype")}))
        vis = InternVisionV1(VisionV1Config.from_checkpoint_config(config))
        with torch.no_grad():  # the default init leaves embeddings at zero and layer scales at one: spread them
            for name, p in vis.named_parameters():
                if "embedding" in name or name.endswith(("ls1", "ls2")):
                    p.normal_(0, 0.1)
    _silence_stops(lm.lm_head.weight, tok)
    state = {f"language_model.{k}": v for k, v in lm.state_dict().items()} | vis.state_dict()
    state = {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in state.items()}
    names = sorted(state)
    half = len(names) // 2  # two shards + index, as real checkpoints come
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(out / shard), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids("<|im_end|>")]}))
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out)
    _mark_random(out)
    return out


def _mark_random(out: Path) -> None:
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["random_weights"] = True
    path.write_text(json.dumps(cfg, indent=2))


BUILDERS = {"native_v2": build_native_v2, "remote_v1": build_remote_v1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=sorted(BUILDERS), default="native_v2")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    BUILDERS[args.format](args.out, args.size, args.device)
    print(f"built {args.format} {args.size} (RANDOM WEIGHTS) in {args.out}")


if __name__ == "__main__":
    main()
