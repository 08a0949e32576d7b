"""TurboMind engine, the parts that are plain data: settings -> lmdeploy configs with defaults from the checkpoint
and the GPUs, explicit chat templates, sampling and error mapping, engine choice. (Request flow through lmdeploy:
test_turbomind_flow.py; the GPU half: tests/gpu/test_turbomind_gpu.py.)
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from common.errors import ErrorCode, ServingError
from workers.engines import turbomind_config as tc
from workers.engines.base import SamplingParams
from workers.engines.select import choose_engine, load_engine_class, turbomind_checkpoint_problem
from workers.engines.turbomind_engine import TurbomindEngine, serving_error
from workers.model_spec import detect_model_spec
from workers.prompts.templates import TEMPLATES
from workers.settings import WorkerSettings

GiB = 1024**3
H100 = tc.GpuFacts(name="NVIDIA H100 80GB HBM3", count=8, total_bytes=80 * GiB, free_bytes=79 * GiB)
# InternVL-Chat-V1-2: Yi-34B (60 layers, 56 heads, 8 KV heads, head_dim 128) + InternViT-6B, bf16.
V1_2 = tc.CheckpointFacts(architecture="InternVLChatModel", num_layers=60, num_heads=56, num_kv_heads=8,
                          head_dim=128, max_position_embeddings=4096, llm_weight_bytes=int(34.4e9 * 2),
                          vision_weight_bytes=int(5.9e9 * 2))


def spec_like(**changes):
    base = dict(family="internvl-chat-v1-2", checkpoint_format="remote_code", template="Hermes-2",
                llm_arch="LlamaForCausalLM", image_size=448, dynamic=False, use_thumbnail=False, min_tiles=1,
                max_tiles=1, tokens_per_tile=256, ps_version="v1", context_length=4096,
                stop_words=("<|im_end|>", "<|endoftext|>"), system_message="Answer the questions.")
    from workers.model_spec import ModelSpec

    return ModelSpec(**(base | changes))


def resolve(opts=None, spec=None, facts=V1_2, gpus=H100, tp=2, dtype="auto", max_concurrency=16):
    return tc.resolve_options(opts or tc.TurbomindOptions(), spec=spec or spec_like(), facts=facts, gpus=gpus, tp=tp,
                              dtype=dtype, max_concurrency=max_concurrency)


# -- settings -> TurbomindEngineConfig ------------------------------------------------------------------------------

def test_v1_2_defaults_on_two_h100():
    r = resolve()
    per_token = 2 * 60 * (8 / 2) * 128 * 2  # K+V, layers, KV heads per rank, head_dim, bf16 bytes
    assert r.kv_bytes_per_token == per_token
    assert (r.tp, r.devices, r.session_len, r.max_batch_size) == (2, [0, 1], 4096, 16)
    assert r.language_model_only and not r.enable_prefix_caching and r.quant_policy == 0
    free_after = H100.free_bytes - (V1_2.llm_weight_bytes / 2 + V1_2.vision_weight_bytes)
    assert r.cache_max_entry_count == pytest.approx(16 * 4096 * per_token / free_after, abs=1e-4)
    cfg = tc.engine_config(r)
    assert (cfg.tp, cfg.devices, cfg.session_len, cfg.max_batch_size, cfg.enable_prefix_caching) == \
        (2, [0, 1], 4096, 16, False)
    assert cfg.language_model_only and cfg.cache_max_entry_count == r.cache_max_entry_count and cfg.quant_policy == 0


def test_v2_checkpoints_default_to_prefix_caching_and_native_vision():
    r = resolve(spec=spec_like(ps_version="v2", template="internlm2-chat"))
    assert r.enable_prefix_caching and not r.language_model_only


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=1, gpus=dataclasses.replace(H100, free_bytes=40 * GiB)), "raise --tp"),  # 81 GB of weights
    (dict(tp=3), "does not divide"),
    (dict(tp=16), "needs 16 GPUs"),
    (dict(dtype="float32"), "not float32"),
    (dict(opts=tc.TurbomindOptions(enable_prefix_caching=True)), "prefix caching cannot be enabled"),
])
def test_settings_that_cannot_work_fail_before_loading(kwargs, message):
    with pytest.raises(ServingError, match=message):
        resolve(**kwargs)


def test_tight_memory_switches_to_int8_kv_and_explicit_options_win():
    tight = dataclasses.replace(H100, free_bytes=int(V1_2.llm_weight_bytes / 2 + V1_2.vision_weight_bytes + 4 * GiB))
    r = resolve(gpus=tight)
    assert r.quant_policy == 8 and any("int8" in n for n in r.notes)
    assert r.kv_bytes_per_token == 2 * 60 * 4 * 128 * 1
    explicit = tc.TurbomindOptions(session_len=2048, cache_max_entry_count=0.5, max_batch_size=64, quant_policy=4)
    r = resolve(opts=explicit)
    assert (r.session_len, r.cache_max_entry_count, r.max_batch_size, r.quant_policy) == (2048, 0.5, 64, 4)


def test_options_come_from_worker_flags_and_environment(monkeypatch):
    from pydantic_settings import CliApp

    assert WorkerSettings(model_path="/x").turbomind == tc.TurbomindOptions()
    parsed = CliApp.run(WorkerSettings, cli_args=["--model-path", "/x", "--turbomind.session-len", "8192",
                                                  "--turbomind.quant-policy", "8"])
    assert (parsed.turbomind.session_len, parsed.turbomind.quant_policy, parsed.turbomind.max_batch_size) == \
        (8192, 8, None)
    monkeypatch.setenv("INTERNVL_WORKER_TURBOMIND__MAX_BATCH_SIZE", "64")
    assert WorkerSettings(model_path="/x").turbomind.max_batch_size == 64


def test_checkpoint_facts_split_vision_and_llm_bytes(v1_checkpoint):
    facts = tc.CheckpointFacts.read(v1_checkpoint)
    from safetensors import safe_open

    sizes = {"vision": 0, "llm": 0}
    for shard in v1_checkpoint.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            for k in fh.keys():
                t = fh.get_tensor(k)
                sizes["llm" if k.startswith("language_model.") else "vision"] += t.numel() * t.element_size()
    assert (facts.vision_weight_bytes, facts.llm_weight_bytes) == (sizes["vision"], sizes["llm"])
    assert (facts.num_layers, facts.head_dim) == (2, 128)


# -- chat template, sampling, errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("system", ["Answer the questions.", None])
def test_chat_template_config_renders_our_prompt_bytes(name, system):
    spec = spec_like(template=name, system_message=system, stop_words=TEMPLATES[name].stop_words)
    cfg = tc.chat_template_config(spec)
    turns = [("user", "<image>\nWhat is it?"), ("assistant", "A cat."), ("user", "And now?")]
    messages = [{"role": r, "content": t} for r, t in turns]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    assert cfg.chat_template().messages2prompt(messages) == TEMPLATES[name].render(system, turns)
    assert set(TEMPLATES[name].stop_words) <= set(cfg.stop_words)


def test_v1_2_uses_llava_chatml_explicitly():
    cfg = tc.chat_template_config(spec_like())
    assert (cfg.model_name, cfg.meta_instruction) == ("llava-chatml", "Answer the questions.")
    assert "<|im_end|>" in cfg.stop_words
    with pytest.raises(ServingError, match="no prompt template 'mystery'"):
        tc.chat_template_config(spec_like(template="mystery"))


def test_generation_config_mapping():
    g = tc.generation_config(SamplingParams(temperature=0.0, top_k=None, seed=7), max_new_tokens=9)
    assert (g.do_sample, g.top_k, g.random_seed, g.max_new_tokens, g.ignore_eos) == (False, 0, 7, 9, False)
    g = tc.generation_config(SamplingParams(temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1),
                             max_new_tokens=3, ignore_eos=True)
    assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.repetition_penalty, g.ignore_eos) == \
        (True, 0.7, 0.9, 40, 1.1, True)


def test_lmdeploy_errors_map_to_our_error_model():
    from lmdeploy.serve.core import ErrorCode as LmErr, RequestError

    too_long = serving_error(RequestError(LmErr.CONTEXT_LENGTH_EXCEEDED))
    assert (too_long.code, too_long.status) == (ErrorCode.CONTEXT_TOO_LONG, 400)
    assert serving_error(RequestError(LmErr.INVALID_REQUEST, "bad")).status == 400
    internal = serving_error(RequestError(LmErr.INTERNAL_ERROR))
    assert (internal.code, internal.status, internal.retryable) == (ErrorCode.ENGINE_ERROR, 500, True)



# -- engine choice --------------------------------------------------------------------------------------------------

def test_engine_choice(v1_checkpoint):
    spec = detect_model_spec(v1_checkpoint)
    auto = WorkerSettings(model_path=str(v1_checkpoint), engine="auto")
    assert choose_engine(auto, spec).endswith(":TransformersEngine")  # no CUDA here
    tm = WorkerSettings(model_path=str(v1_checkpoint), engine="turbomind")
    assert load_engine_class(choose_engine(tm, spec)) is TurbomindEngine
    assert load_engine_class("tests.support.scripted_engine:ScriptedEngine").name
    for bad in ("nonsense", "no.such.module:X", "workers.settings:WorkerSettings"):
        with pytest.raises(ServingError):
            load_engine_class(bad)
    assert turbomind_checkpoint_problem(v1_checkpoint) is None


def test_unsupported_language_model_is_not_picked_by_auto(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["InternVLChatModel"], '
                                          '"llm_config": {"architectures": ["GPTNeoXForCausalLM"]}}')
    assert "does not implement the language model GPTNeoXForCausalLM" in turbomind_checkpoint_problem(tmp_path)


async def test_start_without_cuda_is_a_clear_error(v1_checkpoint):
    eng = TurbomindEngine(WorkerSettings(model_path=str(v1_checkpoint)), detect_model_spec(v1_checkpoint))
    with pytest.raises(ServingError, match="--engine turbomind cannot run: no CUDA GPU"):
        await eng.start()



def test_kv_arithmetic_matches_an_independent_count():
    facts = dataclasses.replace(V1_2, num_kv_heads=1)
    assert tc.kv_bytes_per_token(facts, 4, 0) == 2 * 60 * 1 * 128 * 2  # one KV head is replicated, not split
    assert math.isclose(tc.kv_bytes_per_token(V1_2, 8, 4), 2 * 60 * 1 * 128 * 0.5)
