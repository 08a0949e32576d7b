"""TurboMind engine: everything CPU can prove (the GPU half is tests/gpu/test_turbomind_gpu.py).

The flow tests run the real lmdeploy AsyncEngine (sessions, request-handle pool, detokenizer, error statuses) with
our engine on top. Only TurboMind's CUDA instance cannot run here: it is replaced at lmdeploy's own seam
(`AsyncEngine._build_turbomind`) by a scripted stand-in that records what lmdeploy hands it and streams fixed tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
import torch

from common.errors import ErrorCode, ServingError
from tests.gpu.random_checkpoint import build_native_v2, build_remote_v1
from workers.engines import turbomind_config as tc
from workers.engines.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from workers.engines.select import choose_engine, load_engine_class, turbomind_checkpoint_problem
from workers.engines.turbomind_engine import (StopStrings, TurbomindEngine, embedding_ranges, image_runs,
                                              serving_error)
from workers.engines.vision_v1 import InternVisionV1
from workers.prompts.families import detect_model_spec
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
                max_tiles=1, tokens_per_tile=256, ps_version="v1", normalize="clip", context_length=4096,
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


# -- prompt -> TurboMind inputs -------------------------------------------------------------------------------------

def test_image_runs_and_ranges_follow_the_tokenized_prompt(v1_engine):
    eng = v1_engine
    ph = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    ids = eng.encode(f"Image-1: {ph}\nImage-2: {ph}\nCompare.")
    ctx = eng.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    runs = embedding_ranges(ids, ctx, [1, 1], 2, 256)
    assert [e - b for b, e in runs] == [256, 256] and all(ids[b - 1] != ctx != ids[e] for b, e in runs)
    assert runs == image_runs(ids, ctx)
    with pytest.raises(ServingError, match="2 image placeholders for 1 images"):
        embedding_ranges(ids, ctx, [2], 2, 256)
    with pytest.raises(ServingError, match="expected 2 tiles x 256"):
        embedding_ranges(ids[:runs[1][0]] + ids[runs[1][1]:], ctx, [2], 2, 256)


def test_stop_strings_cut_across_chunks():
    s = StopStrings(("STOP",))
    assert [s.feed(x) for x in ["ab", "cS", "TO", "Pxyz"]] == ["ab", "c", "", ""] and s.hit
    s = StopStrings(("STOP",))
    assert s.feed("aST") == "a" and s.feed("x") == "STx" and s.flush() == ""


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


# -- the request flow through lmdeploy's AsyncEngine ----------------------------------------------------------------

class ScriptedTurboMind:
    """Stands in for lmdeploy.turbomind.TurboMind (CUDA only): records each request, streams one token per step."""

    def __init__(self, engine_config, tokens):
        self.engine_config, self.tokens, self.calls, self.fail_status = engine_config, tokens, [], None

    def create_instance(self, cuda_stream_id=0):
        return ScriptedInstance(self)

    def close(self):
        pass

    async def get_health_status(self):
        return dict(alive=True, message="scripted", schedule_metrics=None)


class ScriptedInstance:
    def __init__(self, tm):
        self.tm, self.cancelled, self.call = tm, False, None

    async def async_cancel(self, session_id=None):  # what lmdeploy calls to stop a running request
        self.cancelled = True
        if self.call is not None:
            self.call["cancelled"] = True

    async def async_stream_infer(self, session_id, input_ids, gen_config=None, input_embeddings=None,
                                 input_embedding_ranges=None, multimodal=None, stream_output=False, **kwargs):
        from lmdeploy.messages import EngineOutput, ResponseType

        self.cancelled = False
        call = dict(input_ids=list(input_ids), embeds=input_embeddings, ranges=input_embedding_ranges,
                    multimodal=multimodal, cancelled=False, released=False)
        self.tm.calls.append(call)
        self.call = call
        try:
            if self.tm.fail_status is not None:
                yield EngineOutput(self.tm.fail_status, [])
                return
            for i in range(gen_config.max_new_tokens):
                await asyncio.sleep(0.002)
                if self.cancelled:
                    yield EngineOutput(ResponseType.CANCEL, [])
                    return
                yield EngineOutput(ResponseType.SUCCESS, [self.tm.tokens[i % len(self.tm.tokens)]])
            yield EngineOutput(ResponseType.FINISH, [])
        finally:
            call["released"] = True  # TurboMind frees the sequence's KV blocks when its stream ends


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory):
    return build_remote_v1(tmp_path_factory.mktemp("v1"), "tiny")


@pytest.fixture(scope="module")
def v2_checkpoint(tmp_path_factory):
    return build_native_v2(tmp_path_factory.mktemp("v2"), "tiny")


async def _engine(path, monkeypatch, **settings):
    from lmdeploy.serve.core import AsyncEngine

    eng = TurbomindEngine(WorkerSettings(model_path=str(path), **settings), detect_model_spec(path))
    tokens = eng.encode(" the cat sat on the mat STOP and")
    scripted = {}

    def build(self, model_path, backend_config=None, trust_remote_code=False, **kw):
        scripted["tm"] = ScriptedTurboMind(backend_config, tokens)
        return scripted["tm"]

    monkeypatch.setattr(AsyncEngine, "_build_turbomind", build)
    gpus = tc.GpuFacts(name="test", count=1, total_bytes=80 * GiB, free_bytes=79 * GiB)
    await eng.load(eng.resolve(gpus), vision_device="cpu")
    eng.tm = scripted["tm"]
    return eng


@pytest.fixture
async def v1_engine(v1_checkpoint, monkeypatch):
    eng = await _engine(v1_checkpoint, monkeypatch)
    yield eng
    await eng.stop()


def request(eng, images=2, max_new=6, stop=(), rid="r1"):
    ph = "<img>" + "<IMG_CONTEXT>" * eng.spec.tokens_per_tile + "</img>"
    text = "".join(f"Image-{i + 1}: {ph}\n" for i in range(images)) + "Describe."
    prompt = eng.spec and TEMPLATES[eng.spec.template].render(eng.spec.system_message, [("user", text)])
    px = torch.randn(images, 3, 448, 448, generator=torch.Generator().manual_seed(5)) if images else None
    return GenerationRequest(request_id=rid, prompt=prompt, pixel_values=px, num_tiles=[1] * images,
                             sampling=SamplingParams(max_new_tokens=max_new, temperature=0, stop=stop))


async def collect(agen):
    return [ev async for ev in agen]


async def test_v1_images_reach_turbomind_as_embeddings_at_their_runs(v1_engine, v1_checkpoint):
    eng = v1_engine
    assert eng.tm.engine_config.language_model_only and eng.tm.engine_config.session_len == 4096
    req = request(eng)
    events = await collect(eng.generate(req))
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "length"
    assert events[-1].completion_tokens == 6 and events[-1].prompt_tokens == len(eng.encode(req.prompt))
    assert "".join(e.text for e in events[:-1]) == eng.tokenizer.decode(eng.tm.tokens[:6])
    call = eng.tm.calls[-1]
    assert call["multimodal"] is None and call["input_ids"] == eng.encode(req.prompt)
    ctx = eng.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert [tuple(r) for r in call["ranges"]] == image_runs(call["input_ids"], ctx)
    reference = InternVisionV1.from_pretrained(v1_checkpoint, dtype=torch.float32)(req.pixel_values)
    for i, emb in enumerate(call["embeds"]):
        torch.testing.assert_close(emb, reference[i], rtol=1e-4, atol=1e-4)
    assert call["released"]


async def test_abort_ends_the_turbomind_request(v1_engine):
    eng = v1_engine
    gen = eng.generate(request(eng, max_new=500, rid="abort-me"))
    first = await gen.__anext__()
    assert isinstance(first, TokenEvent)
    await eng.abort("abort-me")
    rest = await collect(gen)
    assert rest[-1].reason == "abort" and rest[-1].completion_tokens < 500
    assert eng.tm.calls[-1]["cancelled"] and eng.tm.calls[-1]["released"]


async def test_closing_the_stream_cancels_and_releases(v1_engine):
    eng = v1_engine
    gen = eng.generate(request(eng, images=1, max_new=500, rid="gone"))
    await gen.__anext__()
    await gen.aclose()  # the client went away
    call = eng.tm.calls[-1]
    assert call["cancelled"] and call["released"] and eng._live == {}
    assert eng._pipe.session_mgr.sessions == {}


async def test_concurrent_requests_and_one_abort(v1_engine):
    eng = v1_engine

    async def run(rid, n):
        return await collect(eng.generate(request(eng, images=1, max_new=n, rid=rid)))

    tasks = [asyncio.create_task(run(f"c{i}", 40)) for i in range(4)]
    await asyncio.sleep(0.02)
    await eng.abort("c2")
    results = await asyncio.gather(*tasks)
    assert [r[-1].reason for r in results] == ["length", "length", "abort", "length"]


async def test_stop_string_ends_with_stop_and_is_not_emitted(v1_engine):
    eng = v1_engine
    events = await collect(eng.generate(request(eng, images=0, max_new=50, stop=("STOP",))))
    text = "".join(e.text for e in events[:-1])
    assert events[-1].reason == "stop" and "STOP" not in text and text.strip().endswith("mat")
    assert eng.tm.calls[-1]["released"]


async def test_context_errors_are_4xx(v1_engine):
    eng = v1_engine
    huge = request(eng, images=0)
    huge.prompt = "word " * 5000
    with pytest.raises(ServingError) as err:
        await collect(eng.generate(huge))
    assert (err.value.code, err.value.status) == (ErrorCode.CONTEXT_TOO_LONG, 400)
    from lmdeploy.messages import ResponseType

    eng.tm.fail_status = ResponseType.INPUT_LENGTH_ERROR  # TurboMind itself refuses the input
    with pytest.raises(ServingError) as err:
        await collect(eng.generate(request(eng, images=0)))
    assert err.value.code == ErrorCode.CONTEXT_TOO_LONG
    bad = request(eng, images=1)
    bad.prompt += "<IMG_CONTEXT>"  # a literal image token in the user's text
    with pytest.raises(ServingError, match="2 image placeholders for 1 images"):
        await collect(eng.generate(bad))


async def test_v2_images_go_to_turbomind_native_vision(v2_checkpoint, monkeypatch):
    eng = await _engine(v2_checkpoint, monkeypatch)
    try:
        assert not eng.tm.engine_config.language_model_only and eng.tm.engine_config.enable_prefix_caching
        assert eng._vision is None
        req = request(eng)
        await collect(eng.generate(req))
        call = eng.tm.calls[-1]
        assert call["embeds"] is None
        ctx = eng.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        runs = image_runs(call["input_ids"], ctx)
        assert [(m["offset"], m["offset"] + m["image_tokens"]) for m in call["multimodal"]] == runs
        for i, m in enumerate(call["multimodal"]):
            assert m["pixel_values"].dtype == torch.bfloat16
            torch.testing.assert_close(m["pixel_values"].float(), req.pixel_values[i:i + 1], atol=0.02, rtol=0.01)
        await eng.check_health()
    finally:
        await eng.stop()


def test_kv_arithmetic_matches_an_independent_count():
    facts = dataclasses.replace(V1_2, num_kv_heads=1)
    assert tc.kv_bytes_per_token(facts, 4, 0) == 2 * 60 * 1 * 128 * 2  # one KV head is replicated, not split
    assert math.isclose(tc.kv_bytes_per_token(V1_2, 8, 4), 2 * 60 * 1 * 128 * 0.5)
