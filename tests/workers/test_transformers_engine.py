"""TransformersEngine on the demo checkpoint (CPU): streaming, sampling, stop strings, cancellation, queueing,
input checks, error mapping; plus the multi-GPU device-map builder."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from common.errors import ErrorCode, ServingError
from workers.demo_checkpoint import IMG_CONTEXT, TILE, TOKENS_PER_TILE, ensure_demo_checkpoint
from workers.engines.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from workers.engines.transformers_engine import _END, TransformersEngine
from workers.engines.transformers_loading import NATIVE_LAYOUT, remote_code_layout, split_device_map
from workers.model_spec import ModelSpec
from workers.settings import WorkerSettings

LONG = 300  # long enough that a stream is still running when the test acts on it


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    path, _ = ensure_demo_checkpoint(tmp_path_factory.getbasetemp() / "demo-checkpoint-seed0", seed=0)
    return path


def demo_spec() -> ModelSpec:
    return ModelSpec(family="internvl3", checkpoint_format="native", template="internvl2_5",
                     llm_arch="Qwen2ForCausalLM", image_size=TILE, dynamic=True, use_thumbnail=True, min_tiles=1,
                     max_tiles=12, tokens_per_tile=TOKENS_PER_TILE, ps_version="v2",
                     context_length=4096, stop_words=("<|im_end|>",), random_weights=True)


@pytest.fixture
async def engine(demo_checkpoint):
    eng = TransformersEngine(WorkerSettings(model_path=str(demo_checkpoint), device="cpu", controller_url=None),
                             demo_spec())
    await eng.start()
    yield eng
    await eng.stop()


def make_request(request_id="r1", tiles=2, question="Describe the image.", image_tokens=None, **sampling):
    image_tokens = tiles * TOKENS_PER_TILE if image_tokens is None else image_tokens
    image = f"<img>{IMG_CONTEXT * image_tokens}</img>\n" if tiles else ""
    prompt = f"<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n"
    pixels = torch.randn(tiles, 3, TILE, TILE, generator=torch.Generator().manual_seed(0)) if tiles else None
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=request_id, prompt=prompt, pixel_values=pixels,
                             num_tiles=[tiles] if tiles else [], sampling=SamplingParams(**sampling))


async def collect(stream):
    events = [event async for event in stream]
    assert isinstance(events[-1], FinishEvent)
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events[-1], len(events) - 1


def reference_greedy(engine, request) -> tuple[str, list[int]]:
    """transformers' own generate on the same model and inputs: what the stream must add up to."""
    loaded = engine._loaded
    encoded = loaded.tokenizer(request.prompt, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**encoded, pixel_values=request.pixel_values, do_sample=False,
                                    max_new_tokens=request.sampling.max_new_tokens, eos_token_id=engine._eos_ids)
    new = out[0, encoded["input_ids"].shape[1]:].tolist()
    return loaded.tokenizer.decode(new, skip_special_tokens=True), new


async def test_stream_matches_transformers_generate(engine):
    request = make_request(max_new_tokens=40)
    text, finish, deltas = await collect(engine.generate(request))
    expected_text, expected_ids = reference_greedy(engine, request)
    assert text == expected_text
    assert deltas >= 3 and len(set(expected_ids)) >= 3
    assert finish.prompt_tokens == len(engine.tokenize(request.prompt))
    assert finish.completion_tokens == len(expected_ids)
    assert finish.reason == ("stop" if expected_ids[-1] in engine._eos_ids else "length")
    assert (engine.queued, engine.running) == (0, 0)


async def test_each_event_says_how_many_tokens_its_text_completes(engine):
    events = [e async for e in engine.generate(make_request("count", max_new_tokens=24))]
    finish = events[-1]
    # the reasoning-token count (workers/reasoning.py) adds these up: none lost, none counted twice
    assert sum(e.tokens for e in events[:-1]) == finish.completion_tokens
    assert all(e.tokens >= 1 for e in events[:-2])


async def test_greedy_is_deterministic_and_seeded_sampling_repeats(engine):
    first, _, _ = await collect(engine.generate(make_request("a", max_new_tokens=20)))
    second, _, _ = await collect(engine.generate(make_request("b", max_new_tokens=20)))
    assert first == second
    sampled = []
    for i, seed in enumerate([7, 7, 8, 9]):
        request = make_request(f"s{i}", max_new_tokens=20, temperature=5.0, top_p=0.95, top_k=100, seed=seed)
        sampled.append((await collect(engine.generate(request)))[0])
    assert sampled[0] == sampled[1]
    assert len(set(sampled)) >= 2  # the seed, not chance, made the first two equal


async def test_max_new_tokens_finishes_with_length(engine):
    request = make_request(max_new_tokens=5)
    _, expected_ids = reference_greedy(engine, request)
    assert not set(expected_ids) & set(engine._eos_ids)  # precondition: no natural end within 5 tokens
    _, finish, _ = await collect(engine.generate(request))
    assert (finish.reason, finish.completion_tokens) == ("length", 5)


async def test_stop_string_truncates_the_text(engine):
    full, _, _ = await collect(engine.generate(make_request("full", max_new_tokens=40)))
    stop = full[12:15]
    expected = full[:full.index(stop)]
    text, finish, _ = await collect(engine.generate(make_request("cut", max_new_tokens=40, stop=(stop, "never-seen"))))
    assert text == expected
    assert finish.reason == "stop"
    assert finish.completion_tokens < 40


async def test_a_cancelled_prefill_stops_within_a_layer(engine):
    """The cancel flag set between the prompt and the first token (the client left during prefill): the layer hooks
    stop the forward pass, no token is made, and the model is free again."""
    request = make_request("prefill", max_new_tokens=LONG)
    inputs = engine._prepare_inputs(request, engine._loaded)
    cancel = threading.Event()
    tokens: list = []

    class Streamer:
        tap = None  # no logprobs asked

        def put(self, value):
            if not cancel.is_set():
                cancel.set()  # generate() puts the prompt right before the prefill forward pass
            else:
                tokens.append(value)

        def end(self):
            pass

        def send(self, item):
            tokens.append(item)

    streamer = Streamer()
    kwargs = engine._generation_kwargs(request.sampling, int(inputs["input_ids"].shape[1]))
    engine._run(engine._loaded, inputs, kwargs, None, cancel, streamer)
    assert tokens == [_END]  # no token, no error: just the end
    _, finish, _ = await asyncio.wait_for(collect(engine.generate(make_request("next", max_new_tokens=8))), 30)
    assert finish.completion_tokens > 0


async def test_closing_the_stream_early_frees_the_model(engine):
    stream = engine.generate(make_request("gone", max_new_tokens=LONG))
    assert isinstance(await anext(stream), TokenEvent)
    await stream.aclose()
    _, finish, _ = await asyncio.wait_for(collect(engine.generate(make_request("next", max_new_tokens=8))), 30)
    assert finish.completion_tokens > 0
    assert (engine.queued, engine.running) == (0, 0)


async def test_cancelled_consumer_frees_the_model(engine):
    async def consume():
        async for _ in engine.generate(make_request("task", max_new_tokens=LONG)):
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    while engine.running == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, finish, _ = await asyncio.wait_for(collect(engine.generate(make_request("next", max_new_tokens=8))), 30)
    assert finish.completion_tokens > 0


async def test_requests_queue_for_the_model_and_a_queued_one_can_leave(engine):
    first = engine.generate(make_request("first", max_new_tokens=LONG))
    assert isinstance(await anext(first), TokenEvent)
    waiting = asyncio.create_task(collect(engine.generate(make_request("second", max_new_tokens=8))))
    while engine.queued == 0:
        await asyncio.sleep(0.01)
    assert (engine.queued, engine.running) == (1, 1)
    waiting.cancel()  # its consumer went away while it waited for the model
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (engine.queued, engine.running) == (0, 1)  # the first stream still holds the model
    await first.aclose()


async def test_image_tokens_must_match_the_tiles(engine):
    with pytest.raises(ServingError) as err:
        await anext(engine.generate(make_request(tiles=2, image_tokens=2 * TOKENS_PER_TILE - 1)))
    assert err.value.code == ErrorCode.INVALID_REQUEST and IMG_CONTEXT in err.value.message
    bad_shape = make_request(tiles=1)
    bad_shape.pixel_values = torch.zeros(1, 3, TILE + 1, TILE + 1)
    with pytest.raises(ServingError, match="expected"):
        await anext(engine.generate(bad_shape))
    text_only, finish, _ = await collect(engine.generate(make_request(tiles=0, max_new_tokens=4)))
    assert finish.completion_tokens > 0 and (engine.queued, engine.running) == (0, 0)


async def test_model_failures_become_serving_errors(engine, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine._loaded.model, "generate", out_of_memory)
    with pytest.raises(ServingError) as err:
        await collect(engine.generate(make_request()))
    assert err.value.code == ErrorCode.ENGINE_ERROR and "out of memory" in err.value.message
    assert (engine.queued, engine.running) == (0, 0)


async def test_health_tokens_and_limits(demo_checkpoint):
    eng = TransformersEngine(WorkerSettings(model_path=str(demo_checkpoint), device="cpu", controller_url=None),
                             demo_spec())
    assert eng.model_id == demo_checkpoint.name
    with pytest.raises(ServingError) as err:
        await eng.check_health()
    assert err.value.code == ErrorCode.ENGINE_ERROR
    await eng.start()
    await eng.check_health()
    request = make_request(tiles=3)
    assert eng.tokenize(request.prompt) == eng._loaded.tokenizer(request.prompt).input_ids
    assert len(eng.tokenize(request.prompt)) > 3 * TOKENS_PER_TILE
    assert eng.context_length == demo_spec().context_length
    longest = max(len(eng._loaded.tokenizer.decode([i])) for i in range(len(eng._loaded.tokenizer)))
    assert eng.max_token_chars >= longest  # a sound bound: no token stands for more characters
    await eng.stop()


# ------------------------------------------------------------------------------------------------ device maps


@pytest.mark.parametrize("layers,gpus", [(60, 2), (60, 4), (48, 8), (24, 3), (2, 2)])
def test_split_device_map_spreads_layers_with_gpu0_lightest(layers, gpus):
    device_map = split_device_map(remote_code_layout("LlamaForCausalLM"), layers, gpus)
    layer_gpus = [device_map[f"language_model.model.layers.{i}"] for i in range(layers)]
    assert len([k for k in device_map if ".layers." in k]) == layers
    assert layer_gpus[0] == 0 and layer_gpus[-1] == 0
    for name in ("vision_model", "mlp1", "language_model.model.embed_tokens", "language_model.lm_head",
                 "language_model.model.norm"):
        assert device_map[name] == 0
    counts = [layer_gpus.count(g) for g in range(gpus)]
    if layers >= 4 * gpus:
        assert all(counts) and counts[0] <= min(counts[1:-1] or counts[1:]) + 1


def test_internlm2_layout_names_its_own_embeddings():
    device_map = split_device_map(remote_code_layout("InternLM2ForCausalLM"), 48, 2)
    assert device_map["language_model.model.tok_embeddings"] == 0 and device_map["language_model.output"] == 0


def test_native_layout_covers_every_parameter_of_the_real_model(engine):
    """Every key names a real module of InternVLForConditionalGeneration and every weight is placed."""
    model = engine._loaded.model
    layers = model.config.get_text_config().num_hidden_layers
    device_map = split_device_map(NATIVE_LAYOUT, layers, 2)
    modules = dict(model.named_modules())
    assert all(name in modules for name in device_map)
    for param_name, _ in model.named_parameters():
        assert any(param_name.startswith(prefix + ".") for prefix in device_map), param_name


@pytest.mark.gpu
async def test_streams_on_gpu_in_bfloat16(demo_checkpoint):
    eng = TransformersEngine(WorkerSettings(model_path=str(demo_checkpoint), controller_url=None), demo_spec())
    await eng.start()
    try:
        assert eng._loaded.input_device.type == "cuda" and eng._loaded.dtype == torch.bfloat16
        text, finish, deltas = await collect(eng.generate(make_request(max_new_tokens=16)))
        assert deltas >= 1 and finish.completion_tokens >= 1
    finally:
        await eng.stop()
