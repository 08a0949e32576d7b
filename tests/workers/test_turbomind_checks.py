"""What TurboMind would get silently wrong or die on, caught at start-up (CPU; settings -> configs on the real
lmdeploy config classes, requests through the real lmdeploy AsyncEngine with tests/support/scripted_turbomind.py in
place of TurboMind's CUDA part, which keeps TurboMind's fatal pixel-dtype check of its native ViT)."""

from __future__ import annotations

import json
import shutil

import pydantic
import pytest
import torch

from common.errors import ServingError
from tests.support import scripted_turbomind
from tests.support.scripted_turbomind import load_engine, pretend_gpu
from workers.engines import turbomind_config as tc
from workers.engines.base import GenerationRequest, SamplingParams
from workers.engines.turbomind_engine import TurbomindEngine
from workers.model_spec import detect_model_spec
from workers.prompts.templates import TEMPLATES
from workers.settings import TurbomindOptions, WorkerSettings

GPU = pretend_gpu()


def edited(src, dst, **changes):
    """A copy of a checkpoint with config.json changed (keys "a.b" reach into sub-configs)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def one_image_request(eng):
    ph = eng.spec.image_start + eng.spec.image_token * eng.spec.tokens_per_tile + eng.spec.image_end
    prompt = TEMPLATES[eng.spec.template].render(eng.spec.system_message, [("user", f"{ph}\nWhat is it?")])
    return GenerationRequest(request_id="r", prompt=prompt, pixel_values=torch.randn(1, 3, 448, 448), num_tiles=[1],
                             sampling=SamplingParams(max_new_tokens=3, temperature=0))


# -- (a) one dtype for the LLM, TurboMind's ViT and the pixels --------------------------------------------------------

@pytest.mark.parametrize("vision_dtype, setting, expected", [
    ("float16", "auto", "bfloat16"),  # vision and text configs disagree: lmdeploy alone would run the ViT in fp16
    ("bfloat16", "float16", "float16"),
])
async def test_pixels_reach_turbomind_in_the_dtype_its_vit_runs(v2_checkpoint, tmp_path, monkeypatch, vision_dtype,
                                                                setting, expected):
    path = edited(v2_checkpoint, tmp_path / "ckpt", **{"vision_config.dtype": vision_dtype})
    eng = await load_engine(path, monkeypatch, " a b c", dtype=setting)
    try:
        assert eng.resolved.dtype == expected and eng.tm.engine_config.dtype == expected
        assert eng.tm.vision_dtype == expected  # what TurboMind's ViT runs in, by lmdeploy's own rule
        events = [e async for e in eng.generate(one_image_request(eng))]
        assert events[-1].reason == "length"
        assert not eng.tm.violations, eng.tm.violations  # a pixel-dtype TM_CHECK would have stopped the process
        assert eng.tm.calls[-1].multimodal[0]["pixel_values"].dtype == getattr(torch, expected)
    finally:
        await eng.stop()


def test_dtype_follows_the_language_model_and_the_gpu():
    facts = tc.CheckpointFacts("X", 2, 2, 2, 128, 4096, 10**9, 10**8, llm_dtype="float16")
    assert tc.compute_dtype("auto", facts, GPU, []) == "float16"
    assert tc.compute_dtype("auto", tc.CheckpointFacts("X", 2, 2, 2, 128, 4096, 1, 1, llm_dtype="float32"), GPU,
                            []) == "bfloat16"
    notes: list[str] = []
    old_gpu = tc.GpuFacts(name="V100", count=1, total_bytes=32 * tc.GiB, free_bytes=31 * tc.GiB, bf16=False)
    assert tc.compute_dtype("bfloat16", facts, old_gpu, notes) == "float16" and "no bfloat16" in notes[0]


# -- (b), (c) what TurboMind's native ViT would get silently wrong ----------------------------------------------------

async def test_a_feature_layer_turbomind_ignores_is_refused_at_start(v2_checkpoint, tmp_path):
    path = edited(v2_checkpoint, tmp_path / "ckpt", vision_feature_layer=-2)
    eng = TurbomindEngine(WorkerSettings(model_path=str(path)), detect_model_spec(path))
    with pytest.raises(ServingError, match="vision layer -2 .* always uses the last layer"):
        eng.resolve(GPU)


def test_the_v1_route_keeps_honouring_select_layer(v1_checkpoint, tmp_path):
    path = edited(v1_checkpoint, tmp_path / "ckpt", select_layer=-2)  # our own ViT runs it: layer -2 is fine
    eng = TurbomindEngine(WorkerSettings(model_path=str(path)), detect_model_spec(path))
    assert eng.resolve(GPU).language_model_only


async def test_tokens_per_tile_must_match_turbomind_s_own_figure(v2_checkpoint, tmp_path, monkeypatch):
    # processor_config.json says 256 per tile (the prompt's figure); TurboMind reads config.json's image_seq_length.
    path = edited(v2_checkpoint, tmp_path / "ckpt", image_seq_length=64)
    eng = TurbomindEngine(WorkerSettings(model_path=str(path)), detect_model_spec(path))
    assert eng.spec.tokens_per_tile == 256
    with pytest.raises(ServingError, match="TurboMind's vision tower makes 64 tokens per tile .* holds 256"):
        eng.resolve(GPU)


async def test_after_loading_turbomind_s_built_vision_model_is_checked_too(v2_checkpoint, tmp_path, monkeypatch):
    path = edited(v2_checkpoint, tmp_path / "ckpt")
    eng = TurbomindEngine(WorkerSettings(model_path=str(path)), detect_model_spec(path))
    resolved = eng.resolve(GPU)
    scripted = scripted_turbomind.install(monkeypatch, [1])
    edited(path, tmp_path / "other", image_seq_length=64)  # the stand-in reports what it was built from
    (path / "config.json").write_text((tmp_path / "other" / "config.json").read_text())
    with pytest.raises(ServingError, match="makes 64 tokens per tile but the prompt holds 256"):
        await eng.load(resolved, vision_device="cpu")
    assert scripted["tm"].source_model.vision_model._image_seq_length == 64


# -- (d) TurboMind's fatal bound on the cache share -------------------------------------------------------------------

def test_cache_share_of_one_is_refused_by_the_settings():
    with pytest.raises(pydantic.ValidationError, match="less than 1"):
        WorkerSettings(model_path="/x", turbomind={"cache_max_entry_count": 1.0})
    assert TurbomindOptions(cache_max_entry_count=0.95).cache_max_entry_count == 0.95


# -- start-up memory: the prefill limit bounds the ViT's pinned host buffer ------------------------------------------

def test_prefill_limit_holds_one_full_image_and_bounds_the_vit_pinned_buffer(v2_checkpoint):
    spec = detect_model_spec(v2_checkpoint)  # InternVL3-like: up to 12 tiles + thumbnail, 448 px, 256 tokens each
    facts = tc.CheckpointFacts.read(v2_checkpoint)
    r = tc.resolve_options(TurbomindOptions(), spec=spec, facts=facts, gpus=GPU, tp=1, dtype="auto",
                           max_concurrency=8)
    assert (spec.max_tiles, spec.use_thumbnail, spec.tokens_per_tile) == (12, True, 256)
    assert r.max_prefill_token_num == 4096  # 13 x 256 = 3328, rounded up to 1024
    tile_bytes = 3 * 448 * 448 * 2
    assert r.vit_pinned_bytes == 2 * (4096 + 8) * tile_bytes  # 9.9 GB, where lmdeploy's 8192 would pin 19.7 GB
    assert tc.engine_config(r).max_prefill_token_num == 4096
    explicit = tc.resolve_options(TurbomindOptions(max_prefill_token_num=2048), spec=spec, facts=facts, gpus=GPU,
                                  tp=1, dtype="auto", max_concurrency=8)
    assert explicit.vit_pinned_bytes == 2 * (2048 + 8) * tile_bytes


def test_v1_route_keeps_lmdeploy_prefill_and_pins_nothing_for_a_vit(v1_checkpoint):
    spec = detect_model_spec(v1_checkpoint)
    r = tc.resolve_options(TurbomindOptions(), spec=spec, facts=tc.CheckpointFacts.read(v1_checkpoint), gpus=GPU,
                           tp=1, dtype="auto", max_concurrency=8)
    assert (r.max_prefill_token_num, r.vit_pinned_bytes) == (4096, 0)  # 8192, capped at the 4096-token session


def test_tp2_stays_a_checked_configuration(v2_checkpoint):
    """tp=2 (documented, checked on CPU only: one GPU can be borrowed): each rank pins its own ViT buffer, sized by
    max_prefill_token_num + max_batch_size rounded up to a multiple of tp."""
    spec = detect_model_spec(v2_checkpoint)
    gpus = tc.GpuFacts(name="2 x H100", count=2, total_bytes=80 * tc.GiB, free_bytes=79 * tc.GiB)
    r = tc.resolve_options(TurbomindOptions(max_batch_size=7), spec=spec, facts=tc.CheckpointFacts.read(v2_checkpoint),
                           gpus=gpus, tp=2, dtype="auto", max_concurrency=8)
    assert (r.tp, r.devices, r.dtype) == (2, [0, 1], "bfloat16")
    assert r.vit_pinned_bytes == 2 * 4104 * 3 * 448 * 448 * 2  # 4096 + 7 = 4103, rounded up to 4104
    cfg = tc.engine_config(r)
    assert (cfg.tp, cfg.devices, cfg.dtype, cfg.max_prefill_token_num) == (2, [0, 1], "bfloat16", 4096)
