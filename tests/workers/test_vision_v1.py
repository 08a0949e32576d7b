"""The ps_version v1 vision path (workers/engines/vision_v1.py) against independent references, on CPU.

Weights are written in the remote-code (InternVLChatModel) layout by name, as real V1-2 shards name them, then renamed
to the transformers-native layout to load transformers' own InternVL classes with the same numbers:
- the vision tower output must match transformers' InternVLVisionModel;
- the whole image-feature path must match transformers' InternVLModel.get_image_features up to the v1 token order
  (transformers implements v2, whose merged tokens run row by row; v1's run column by column);
- the v1 pixel shuffle must match a loop written from its definition.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from common.errors import ErrorCode, ServingError
from workers.engines.vision_v1 import InternVisionV1, VisionV1Config, pixel_shuffle_v1

IMAGE, PATCH, HIDDEN, HEADS, INTER, LLM_HIDDEN = 56, 14, 32, 2, 64, 48


def remote_config(*, layers=2, select_layer=-1, qk_norm=True, norm_type="rms_norm", ps_version="v1") -> dict:
    cfg = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "Hermes-2",
        "downsample_ratio": 0.5, "select_layer": select_layer, "force_image_size": IMAGE,
        "vision_config": {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": layers,
                          "intermediate_size": INTER, "image_size": IMAGE, "patch_size": PATCH,
                          "qk_normalization": qk_norm, "norm_type": norm_type, "layer_norm_eps": 1e-6,
                          "qkv_bias": True, "hidden_act": "gelu"},
        "llm_config": {"architectures": ["LlamaForCausalLM"], "hidden_size": LLM_HIDDEN},
    }
    if ps_version is not None:
        cfg["ps_version"] = ps_version
    return cfg


def remote_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the remote-code names (spelled out here, not taken from the module under test)."""
    g = torch.Generator().manual_seed(seed)
    v = cfg["vision_config"]
    d, layers = v["hidden_size"], v["num_hidden_layers"]
    rnd = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    patches = (v["image_size"] // v["patch_size"]) ** 2
    w = {"vision_model.embeddings.class_embedding": rnd(1, 1, d),
         "vision_model.embeddings.patch_embedding.weight": rnd(d, 3, PATCH, PATCH, s=0.05),
         "vision_model.embeddings.patch_embedding.bias": rnd(d),
         "vision_model.embeddings.position_embedding": rnd(1, patches + 1, d)}
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "attn.qkv.weight": rnd(3 * d, d), p + "attn.qkv.bias": rnd(3 * d),
              p + "attn.proj.weight": rnd(d, d), p + "attn.proj.bias": rnd(d),
              p + "mlp.fc1.weight": rnd(INTER, d), p + "mlp.fc1.bias": rnd(INTER),
              p + "mlp.fc2.weight": rnd(d, INTER), p + "mlp.fc2.bias": rnd(d),
              p + "norm1.weight": 1 + rnd(d), p + "norm2.weight": 1 + rnd(d),
              p + "ls1": rnd(d, s=0.5), p + "ls2": rnd(d, s=0.5)}
        if v["norm_type"] == "layer_norm":
            w |= {p + "norm1.bias": rnd(d), p + "norm2.bias": rnd(d)}
        if v["qk_normalization"]:
            w |= {p + "attn.q_norm.weight": 1 + rnd(d), p + "attn.k_norm.weight": 1 + rnd(d)}
    merged = d * 4
    w |= {"mlp1.0.weight": 1 + rnd(merged), "mlp1.0.bias": rnd(merged), "mlp1.1.weight": rnd(LLM_HIDDEN, merged),
          "mlp1.1.bias": rnd(LLM_HIDDEN), "mlp1.3.weight": rnd(LLM_HIDDEN, LLM_HIDDEN), "mlp1.3.bias": rnd(LLM_HIDDEN),
          # LLM tensors share the shards; the vision loader must leave them alone.
          "language_model.model.embed_tokens.weight": rnd(16, LLM_HIDDEN)}
    return w


def to_native(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remote-code names -> transformers InternVLModel names (q/k/v unpacked)."""
    out = {}
    for name, t in w.items():
        if name.startswith("language_model."):
            continue
        if name == "vision_model.embeddings.class_embedding":
            out["vision_tower.embeddings.cls_token"] = t
        elif name == "vision_model.embeddings.position_embedding":
            out["vision_tower.embeddings.position_embeddings"] = t
        elif name.startswith("vision_model.embeddings.patch_embedding."):
            out["vision_tower.embeddings.patch_embeddings.projection." + name.rsplit(".", 1)[1]] = t
        elif name.startswith("mlp1."):
            idx, leaf = name[5:].split(".")
            out[f"multi_modal_projector.{ {'0': 'layer_norm', '1': 'linear_1', '3': 'linear_2'}[idx] }.{leaf}"] = t
        else:
            i, rest = name[len("vision_model.encoder.layers."):].split(".", 1)
            p = f"vision_tower.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                leaf = rest.rsplit(".", 1)[1]
                for proj, part in zip("qkv", t.chunk(3, dim=0)):
                    out[f"{p}attention.{proj}_proj.{leaf}"] = part
                continue
            for old, new in [("attn.proj.", "attention.projection_layer."), ("attn.q_norm.", "attention.q_norm."),
                             ("attn.k_norm.", "attention.k_norm."), ("norm1.", "layernorm_before."),
                             ("norm2.", "layernorm_after."), ("ls1", "lambda_1"), ("ls2", "lambda_2"),
                             ("mlp.", "mlp.")]:
                if rest.startswith(old):
                    out[p + new + rest[len(old):]] = t
                    break
            else:
                raise AssertionError(name)
    return out


def transformers_model(cfg: dict, weights: dict[str, torch.Tensor]):
    from transformers import InternVLConfig, InternVLModel

    v = cfg["vision_config"]
    tcfg = InternVLConfig(
        vision_config=dict(hidden_size=v["hidden_size"], num_hidden_layers=v["num_hidden_layers"],
                           num_attention_heads=v["num_attention_heads"], intermediate_size=v["intermediate_size"],
                           image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH], use_qk_norm=v["qk_normalization"],
                           norm_type=v["norm_type"], layer_norm_eps=v["layer_norm_eps"], attention_bias=True,
                           hidden_act="gelu", use_mean_pooling=True),
        text_config=dict(model_type="qwen2", hidden_size=LLM_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, vocab_size=16),
        downsample_ratio=cfg["downsample_ratio"], projector_hidden_act="gelu",
        vision_feature_layer=cfg["select_layer"], vision_feature_select_strategy="default")
    model = InternVLModel(tcfg).eval()
    missing, unexpected = model.load_state_dict(to_native(weights), strict=False)
    assert not unexpected
    assert all(k.startswith("language_model.") for k in missing), missing
    return model


def write_checkpoint(path, cfg, weights):
    (path / "config.json").write_text(json.dumps(cfg))
    names = sorted(weights)
    half = len(names) // 2  # two shards, as real checkpoints come
    save_file({k: weights[k].contiguous() for k in names[:half]}, str(path / "model-00001-of-00002.safetensors"))
    save_file({k: weights[k].contiguous() for k in names[half:]}, str(path / "model-00002-of-00002.safetensors"))
    return path


def pixels(n=2, seed=1):
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def v2_to_v1_order(features: torch.Tensor) -> torch.Tensor:
    b, n, d = features.shape
    side = int(n**0.5)
    return features.reshape(b, side, side, d).transpose(1, 2).reshape(b, n, d)


@pytest.mark.parametrize("variant", [dict(), dict(qk_norm=False, norm_type="layer_norm")],
                         ids=["rmsnorm-qknorm(V1-2)", "layernorm"])
def test_vision_tower_and_projector_match_transformers(tmp_path, variant):
    cfg = remote_config(**variant)
    weights = remote_weights(cfg)
    ours = InternVisionV1.from_pretrained(write_checkpoint(tmp_path, cfg, weights), dtype=torch.float32)
    ref = transformers_model(cfg, weights)
    px = pixels()
    with torch.no_grad():
        ref_tower = ref.vision_tower(pixel_values=px).last_hidden_state
        ref_features = ref.get_image_features(pixel_values=px, vision_feature_layer=-1,
                                              vision_feature_select_strategy="default").pooler_output
        ours_tower = ours.vision_features(px)
    ours_features = ours(px)
    torch.testing.assert_close(ours_tower, ref_tower, rtol=1e-4, atol=1e-5)
    assert ours_features.shape == (2, ours.cfg.tokens_per_tile, LLM_HIDDEN) == ref_features.shape
    torch.testing.assert_close(ours_features, v2_to_v1_order(ref_features), rtol=1e-4, atol=1e-5)
    # And the orders really differ: serving v1 weights with v2 code would be silently wrong.
    assert not torch.allclose(ours_features, ref_features, atol=1e-3)


def test_selected_feature_layer_matches_transformers_hidden_states(tmp_path):
    cfg = remote_config(layers=3, select_layer=-2)
    weights = remote_weights(cfg, seed=3)
    ours = InternVisionV1.from_pretrained(write_checkpoint(tmp_path, cfg, weights), dtype=torch.float32)
    assert len(ours.vision_model.encoder.layers) == 2  # the last layer is never run, so never loaded
    ref = transformers_model(cfg, weights)
    px = pixels(1)
    with torch.no_grad():
        hidden = ref.vision_tower(pixel_values=px, output_hidden_states=True).hidden_states[-2]
        ref_features = ref.get_image_features(pixel_values=px, vision_feature_layer=-2,
                                              vision_feature_select_strategy="default").pooler_output
        torch.testing.assert_close(ours.vision_features(px), hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours(px), v2_to_v1_order(ref_features), rtol=1e-4, atol=1e-5)


def test_pixel_shuffle_v1_follows_its_definition():
    """Merged token (i, j) = channels of patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) in that order;
    v1 stores it at [:, j, i], v2 (transformers) at [:, i, j]."""
    from transformers.models.internvl.modeling_internvl import InternVLModel

    x = torch.randn(2, 8, 8, 3)
    got = pixel_shuffle_v1(x, 0.5)
    v2 = InternVLModel.pixel_shuffle(None, x, 0.5)
    assert got.shape == v2.shape == (2, 4, 4, 12)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                expected = torch.cat([x[b, 2 * i + m, 2 * j + k] for m in (0, 1) for k in (0, 1)])
                assert torch.equal(got[b, j, i], expected)
                assert torch.equal(v2[b, i, j], expected)


def test_config_reads_v1_facts():
    cfg = VisionV1Config.from_checkpoint_config(remote_config())
    assert (cfg.ps_version, cfg.tokens_per_tile, cfg.num_layers, cfg.llm_hidden_size) == ("v1", 4, 2, LLM_HIDDEN)
    # Remote-code configs without the field are v1: that is the remote-code config's own default.
    assert VisionV1Config.from_checkpoint_config(remote_config(ps_version=None)).ps_version == "v1"


@pytest.mark.parametrize("cfg", [remote_config(ps_version="v2"),
                                 {"architectures": ["InternVLForConditionalGeneration"], "downsample_ratio": 0.5,
                                  "vision_config": remote_config()["vision_config"], "text_config": {"hidden_size": 8}}],
                         ids=["remote-code-v2", "transformers-native"])
def test_v2_checkpoints_are_refused(cfg):
    with pytest.raises(ServingError, match="pixel-shuffle v1 only"):
        InternVisionV1(VisionV1Config.from_checkpoint_config(cfg))


def test_bad_pixel_shape_is_a_clear_error():
    model = InternVisionV1(VisionV1Config.from_checkpoint_config(remote_config()))
    with pytest.raises(ServingError) as err:
        model(torch.zeros(1, 3, 32, 32))
    assert err.value.code == ErrorCode.INVALID_IMAGE and "[N, 3, 56, 56]" in err.value.message


def test_missing_vision_weights_fail_loudly(tmp_path):
    cfg = remote_config()
    weights = remote_weights(cfg)
    del weights["mlp1.3.weight"]
    with pytest.raises(ServingError, match="missing.*mlp1.3.weight"):
        InternVisionV1.from_pretrained(write_checkpoint(tmp_path, cfg, weights))
