"""Greedy decoding with transformers on a random-weight checkpoint: the reference the TurboMind GPU tests compare
against (tests/gpu/test_turbomind_outputs.py), exercised on CPU by tests/workers/test_reference_decode.py.

- ps_version v2 (transformers-native InternVL): the model the transformers engine serves, loaded by its own loader
  (`workers.engines.transformers_loading.load_model`), fed the pixels; transformers places the image features.
- ps_version v1 (InternVL-Chat-V1-2 layout, which ships no model code): transformers' LlamaForCausalLM with the
  checkpoint's `language_model.*` weights, fed embeddings where the `<IMG_CONTEXT>` runs hold our InternViT's
  features (proven equal to transformers' own InternVL vision path on CPU in tests/workers/test_vision_v1.py).

`compare` states what "equal" means where bf16 kernels legitimately differ. The reference scores the tokens the
engine under test chose (teacher forcing: one forward pass over prompt + those tokens), then at every step
- the engine's logits are within `LOGIT_TOL` of the reference's, in units of the reference's logit range (bf16 vs
  fp32 transformers on the tiny checkpoints: ~0.003; another image in the same prompt: 0.05-0.12);
- the engine's token is the reference's greedy choice, unless the reference's top two are closer than `TIE_MARGIN`
  (a near tie, where either choice is right).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.prompts.templates import get_template

LOGIT_TOL = 0.015  # max |logit - reference| / (reference max - min), per generated step
TIE_MARGIN = 2 * LOGIT_TOL  # a reference top-2 gap below this (same units) is a near tie
STEPS = 16


@dataclass(frozen=True)
class Case:
    """One prompt: the user text with a placeholder per image, and the tiles of each image."""

    name: str
    text: str  # "{0}", "{1}", ... where each image's placeholder goes
    tiles: tuple[int, ...]  # tiles per image, prompt order


def cases(dynamic: bool) -> list[Case]:
    """Text, one image, two images, a 4-frame video (frames are one tile each, labelled as the model card does).
    The one image has 3 tiles (2 + thumbnail) when the checkpoint tiles images."""
    frames = "".join(f"Frame{i + 1}: {{{i}}}\n" for i in range(4))
    return [Case("text", "Describe a quiet morning.", ()),
            Case("one_image", "{0}\nWhat is in the picture?", (3 if dynamic else 1,)),
            Case("two_images", "Image-1: {0}\nImage-2: {1}\nCompare the two images.", (1, 1)),
            Case("video_4_frames", frames + "What happens in the video?", (1, 1, 1, 1))]


def prompt_of(spec, case: Case) -> str:
    holders = [spec.image_start + spec.image_token * (t * spec.tokens_per_tile) + spec.image_end for t in case.tiles]
    return get_template(spec.template).render(spec.system_message, [("user", case.text.format(*holders))])


def pixels_of(spec, case: Case, seed: int = 0) -> torch.Tensor | None:
    if not case.tiles:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(case.tiles), 3, spec.image_size, spec.image_size, generator=g)


@dataclass
class Reference:
    tokens: list[int]
    logits: torch.Tensor  # [steps, vocab] float32, step i's logits (it chose tokens[i])


class ReferenceModel:
    """The checkpoint in transformers, for greedy decoding from token ids (+ pixel tiles in prompt order)."""

    def __init__(self, path: str | Path, spec, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.path, self.spec, self.device, self.dtype = Path(path), spec, device, dtype
        self.v1 = spec.ps_version != "v2"
        if self.v1:
            self._load_v1()
        else:
            from workers.engines.transformers_loading import load_model
            from workers.settings import WorkerSettings

            name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
            settings = WorkerSettings(model_path=str(path), device="cuda" if device.startswith("cuda") else "cpu",
                                      dtype=name, controller_url=None)
            self.model = load_model(settings, spec).model

    def _load_v1(self) -> None:
        from safetensors import safe_open
        from transformers import LlamaConfig, LlamaForCausalLM

        from workers.engines.vision_v1 import InternVisionV1

        cfg = json.loads((self.path / "config.json").read_text())
        llm = {k: v for k, v in cfg["llm_config"].items() if k not in ("model_type", "torch_dtype", "architectures")}
        self.model = LlamaForCausalLM(LlamaConfig(**llm))  # test-sized checkpoints: built, then overwritten
        state = {}
        for shard in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as fh:
                state |= {k[len("language_model."):]: fh.get_tensor(k) for k in fh.keys()
                          if k.startswith("language_model.")}
        self.model.load_state_dict(state, strict=True)
        self.model.to(self.device, self.dtype).eval()
        self.vision = InternVisionV1.from_pretrained(self.path, device=self.device, dtype=self.dtype)

    def _forward(self, ids: torch.Tensor, pixels: torch.Tensor | None, image_token_id: int, **kwargs):
        if not self.v1:
            extra = {} if pixels is None else {"pixel_values": pixels.to(self.device, self.dtype)}
            return self.model(input_ids=ids, **extra, **kwargs)
        embeds = self.model.get_input_embeddings()(ids)
        if pixels is not None:
            feats = self.vision(pixels).to(embeds.dtype)
            mask = ids[0] == image_token_id
            assert int(mask.sum()) == feats.shape[0] * feats.shape[1], "placeholders do not match the tiles"
            embeds[0, mask] = feats.reshape(-1, feats.shape[-1])
        return self.model(inputs_embeds=embeds, **kwargs)

    @torch.inference_mode()
    def greedy(self, input_ids: list[int], pixels: torch.Tensor | None, image_token_id: int,
               steps: int = STEPS) -> Reference:
        """Greedy decoding with the KV cache, as the transformers engine generates."""
        out = self._forward(torch.tensor([input_ids], device=self.device), pixels, image_token_id, use_cache=True)
        tokens, logits = [], []
        for step in range(steps):
            last = out.logits[0, -1].float()
            logits.append(last.cpu())
            tokens.append(int(last.argmax()))
            if step + 1 < steps:
                nxt = torch.tensor([[tokens[-1]]], device=self.device)
                out = self.model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        return Reference(tokens=tokens, logits=torch.stack(logits))

    @torch.inference_mode()
    def score(self, input_ids: list[int], pixels: torch.Tensor | None, image_token_id: int,
              tokens: list[int]) -> torch.Tensor:
        """The reference's logits at each step of a given continuation: [len(tokens), vocab] float32."""
        ids = torch.tensor([input_ids + tokens[:-1]], device=self.device)
        logits = self._forward(ids, pixels, image_token_id).logits[0, len(input_ids) - 1:]
        return logits.float().cpu()


def compare(tokens: list[int], logits: torch.Tensor, reference: torch.Tensor) -> dict:
    """The engine's greedy tokens and their logits [steps, vocab'] against the reference's scores of the same tokens
    [steps, vocab] (see the module docstring). `ok` is what the tests assert; the rest is recorded."""
    vocab = reference.shape[1]
    errors, clear, wrong = [], 0, []
    for step, (token, row, ref) in enumerate(zip(tokens, logits[:, :vocab].float(), reference)):
        span = float(ref.max() - ref.min())
        errors.append(float((row - ref).abs().max()) / span)
        top = ref.topk(2).values
        clear += float(top[0] - top[1]) >= TIE_MARGIN * span
        if float(ref.max() - ref[token]) >= TIE_MARGIN * span:
            wrong.append(step)
    max_error = max(errors) if errors else 0.0
    return {"ok": bool(errors) and max_error <= LOGIT_TOL and not wrong, "max_logit_error": round(max_error, 5),
            "logit_tol": LOGIT_TOL, "steps": len(errors), "clear_steps": clear, "wrong_token_steps": wrong,
            "tokens": list(tokens)}
