"""TurboMind engine, request flow on CPU (settings and templates: test_turbomind_config.py; the GPU half:
tests/gpu/test_turbomind_gpu.py).

The flow tests run the real lmdeploy AsyncEngine (sessions, request-handle pool, detokenizer, error statuses) with
our engine on top. Only TurboMind's CUDA instance cannot run here: it is replaced at lmdeploy's own seam
(`AsyncEngine._build_turbomind`) by tests/support/scripted_turbomind.py, which records what lmdeploy hands it and
streams fixed tokens.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from common.errors import ErrorCode, ServingError
from tests.support.scripted_turbomind import collect, image_request, load_engine
from workers.engines.base import FinishEvent, TokenEvent
from workers.engines.turbomind_engine import embedding_ranges, image_runs
from workers.engines.vision_v1 import InternVisionV1


# -- prompt -> TurboMind inputs -------------------------------------------------------------------------------------

def test_image_runs_and_ranges_follow_the_tokenized_prompt(v1_engine):
    eng = v1_engine
    ph = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    ids = eng.tokenize(f"Image-1: {ph}\nImage-2: {ph}\nCompare.")
    ctx = eng.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    runs = embedding_ranges(ids, ctx, [1, 1], 2, 256)
    assert [e - b for b, e in runs] == [256, 256] and all(ids[b - 1] != ctx != ids[e] for b, e in runs)
    assert runs == image_runs(ids, ctx)
    with pytest.raises(ServingError, match="2 image placeholders for 1 images"):
        embedding_ranges(ids, ctx, [2], 2, 256)
    with pytest.raises(ServingError, match="expected 2 tiles x 256"):
        embedding_ranges(ids[:runs[1][0]] + ids[runs[1][1]:], ctx, [2], 2, 256)


# -- the request flow through lmdeploy's AsyncEngine ----------------------------------------------------------------

async def test_v1_images_reach_turbomind_as_embeddings_at_their_runs(v1_engine, v1_checkpoint):
    eng = v1_engine
    assert eng.tm.engine_config.language_model_only and eng.tm.engine_config.session_len == 4096
    req = image_request(eng)
    events = await collect(eng.generate(req))
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "length"
    assert events[-1].completion_tokens == 6 and events[-1].prompt_tokens == len(eng.tokenize(req.prompt))
    assert "".join(e.text for e in events[:-1]) == eng.tokenizer.decode(eng.tm.tokens[:6])
    assert sum(e.tokens for e in events[:-1]) == 6  # each event says how many tokens its text completes
    call = eng.tm.calls[-1]
    assert call.multimodal is None and call.input_ids == eng.tokenize(req.prompt)
    ctx = eng.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert [tuple(r) for r in call.ranges] == image_runs(call.input_ids, ctx)
    reference = InternVisionV1.from_pretrained(v1_checkpoint, dtype=torch.float32)(req.pixel_values)
    for i, emb in enumerate(call.embeds):
        torch.testing.assert_close(emb, reference[i], rtol=1e-4, atol=1e-4)
    assert call.released.is_set() and not eng.tm.violations


async def test_closing_the_stream_cancels_and_releases(v1_engine):
    """Closing the stream is the one way to stop a generation (workers/engines/base.py)."""
    eng = v1_engine
    gen = eng.generate(image_request(eng, images=1, max_new=500, rid="gone"))
    assert isinstance(await gen.__anext__(), TokenEvent)
    await gen.aclose()  # the client went away
    assert eng._live == {}
    await eng.settle()
    call = eng.tm.calls[-1]
    assert call.cancel_requested and call.status == "cancel" and len(call.tokens) < 500 and not eng.tm.violations
    assert eng._pipe.session_mgr.sessions == {} and eng.running == 0


async def test_leaving_before_turbomind_has_the_request_drops_it(v1_engine, monkeypatch):
    """The consumer leaves while the vision tower runs: TurboMind never gets the request, no session is left."""
    eng = v1_engine
    features = eng._features
    entered = asyncio.Event()

    async def slow_features(pixels):
        entered.set()
        await asyncio.sleep(30)  # the stimulus: a vision tower still busy when the consumer leaves (cancelled)
        return await features(pixels)

    monkeypatch.setattr(eng, "_features", slow_features)
    calls = len(eng.tm.calls)
    task = asyncio.create_task(collect(eng.generate(image_request(eng, images=1, rid="early"))))
    await entered.wait()
    assert eng.running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eng.settle()
    assert eng.running == 0 and len(eng.tm.calls) == calls and eng._pipe.session_mgr.sessions == {}


async def test_concurrent_requests_and_one_closed(v1_engine):
    eng = v1_engine

    async def run(rid, n):
        return await collect(eng.generate(image_request(eng, images=1, max_new=n, rid=rid)))

    async def leave_after_first_token(rid, n):
        gen = eng.generate(image_request(eng, images=1, max_new=n, rid=rid))
        first = await gen.__anext__()
        await gen.aclose()
        return [first]

    tasks = [asyncio.create_task(leave_after_first_token(f"c{i}", 400) if i == 2 else run(f"c{i}", 40))
             for i in range(4)]
    results = await asyncio.gather(*tasks)
    assert [r[-1].reason for r in results[:2] + results[3:]] == ["length"] * 3
    assert isinstance(results[2][0], TokenEvent)
    await eng.settle()
    assert sorted(c.status for c in eng.tm.calls[-4:]) == ["cancel", "finish", "finish", "finish"]
    assert not eng.tm.violations


async def test_stop_string_ends_with_stop_and_is_not_emitted(v1_engine):
    eng = v1_engine
    events = await collect(eng.generate(image_request(eng, images=0, max_new=50, stop=("STOP",))))
    text = "".join(e.text for e in events[:-1])
    assert events[-1].reason == "stop" and "STOP" not in text and text.strip().endswith("mat")
    await eng.settle()
    assert eng.tm.calls[-1].status == "cancel" and not eng.tm.violations


async def test_context_errors_are_4xx(v1_engine):
    eng = v1_engine
    huge = image_request(eng, images=0)
    huge.prompt = "word " * 5000
    with pytest.raises(ServingError) as err:
        await collect(eng.generate(huge))
    assert (err.value.code, err.value.status) == (ErrorCode.CONTEXT_TOO_LONG, 400)
    from lmdeploy.messages import ResponseType

    eng.tm.fail_status = ResponseType.INPUT_LENGTH_ERROR  # TurboMind itself refuses the input
    with pytest.raises(ServingError) as err:
        await collect(eng.generate(image_request(eng, images=0)))
    assert err.value.code == ErrorCode.CONTEXT_TOO_LONG
    bad = image_request(eng, images=1)
    bad.prompt += "<IMG_CONTEXT>"  # a literal image token in the user's text
    with pytest.raises(ServingError, match="2 image placeholders for 1 images"):
        await collect(eng.generate(bad))


async def test_v2_images_go_to_turbomind_native_vision(v2_checkpoint, monkeypatch):
    eng = await load_engine(v2_checkpoint, monkeypatch)
    try:
        assert not eng.tm.engine_config.language_model_only and eng.tm.engine_config.enable_prefix_caching
        assert eng._vision is None
        req = image_request(eng)
        await collect(eng.generate(req))
        call = eng.tm.calls[-1]
        assert call.embeds is None
        ctx = eng.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        runs = image_runs(call.input_ids, ctx)
        assert [(m["offset"], m["offset"] + m["image_tokens"]) for m in call.multimodal] == runs
        for i, m in enumerate(call.multimodal):
            assert m["pixel_values"].dtype == torch.bfloat16
            torch.testing.assert_close(m["pixel_values"].float(), req.pixel_values[i:i + 1], atol=0.02, rtol=0.01)
        await eng.check_health()
    finally:
        await eng.stop()


async def test_the_advertised_context_is_turbomind_session_len(v1_checkpoint, monkeypatch):
    eng = await load_engine(v1_checkpoint, monkeypatch, turbomind={"session_len": 1024})
    try:
        assert eng.spec.context_length != 1024 and eng.context_length == 1024 == eng.tm.engine_config.session_len
    finally:
        await eng.stop()
