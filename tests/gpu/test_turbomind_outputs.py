"""TurboMind's outputs equal transformers' on the same random-weight checkpoints, on a GPU, tp=1, both vision routes
(v1: our InternViT + `input_embeddings`; v2: TurboMind's native ViT), for text, one image, two images and a 4-frame
video. A wrong cuBLAS, features on the wrong tokens or a wrong pixel layout change the logits far beyond bf16 noise.

The request goes through our TurbomindEngine (tokens, image runs, pixels or features, lmdeploy, TurboMind); a spy on
lmdeploy's TurboMindInstance records the token ids TurboMind generated and asks it for their logits. The reference
(tests/support/reference_decode.py, fp32 transformers on the same GPU) scores those tokens; `compare` says what must
hold. Figures go to $GPU_CHECK_OUT/gpu-outputs.json when set (bench/gpu_check.sh sets it).

Written to run without pytest-asyncio (the GPU machine has none): plain tests that call asyncio.run.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import os
from pathlib import Path

import pytest
import torch

from tests.gpu.random_checkpoint import build_native_v2, build_remote_v1
from tests.support import reference_decode as rd

pytestmark = pytest.mark.gpu
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    out = os.environ.get("GPU_CHECK_OUT")
    if out and RESULTS:
        (Path(out) / "gpu-outputs.json").write_text(json.dumps(RESULTS, indent=1))


def spy_on_turbomind(monkeypatch) -> dict[int, dict]:
    """Record, per lmdeploy session id, the tokens TurboMind generated and their logits (output_logits='generation')."""
    from lmdeploy.turbomind.turbomind import TurboMindInstance

    records: dict[int, dict] = {}
    real = TurboMindInstance.async_stream_infer

    async def spy(self, session_id, *args, gen_config=None, **kwargs):
        gen_config = copy.copy(gen_config)
        gen_config.output_logits = "generation"
        rec = records.setdefault(session_id, {"tokens": [], "logits": None})
        async for out in real(self, session_id, *args, gen_config=gen_config, **kwargs):
            rec["tokens"] += list(out.token_ids)
            if out.logits is not None:
                rec["logits"] = out.logits
            yield out

    monkeypatch.setattr(TurboMindInstance, "async_stream_infer", spy)
    return records


async def turbomind_outputs(path: Path, spec, inputs: list[tuple[str, list[int], torch.Tensor | None, tuple]],
                            records: dict[int, dict]) -> dict[str, tuple[list[int], torch.Tensor, str]]:
    from workers.engines.base import GenerationRequest, SamplingParams, TokenEvent
    from workers.engines.turbomind_engine import TurbomindEngine
    from workers.settings import WorkerSettings

    engine = TurbomindEngine(WorkerSettings(model_path=str(path), engine="turbomind", dtype="bfloat16",
                                            max_concurrency=4, controller_url=None), spec)
    engine.ignore_eos = True  # exactly STEPS tokens, as the reference
    await engine.start()
    results = {}
    try:
        for name, ids, pixels, tiles in inputs:
            prompt = rd.prompt_of(spec, next(c for c in rd.cases(spec.dynamic) if c.name == name))
            assert engine.tokenize(prompt) == ids
            before = set(records)
            request = GenerationRequest(request_id=name, prompt=prompt, pixel_values=pixels, num_tiles=list(tiles),
                                        sampling=SamplingParams(max_new_tokens=rd.STEPS, temperature=0))
            events = [e async for e in engine.generate(request)]
            assert events[-1].reason == "length" and events[-1].completion_tokens == rd.STEPS, events[-1]
            (session,) = set(records) - before
            rec = records[session]
            text = "".join(e.text for e in events if isinstance(e, TokenEvent))
            results[name] = (rec["tokens"], rec["logits"].float().cpu(), text)
    finally:
        await engine.stop()
    return results


@pytest.mark.parametrize("route", ["remote_v1", "native_v2"])
def test_turbomind_equals_transformers(route, tmp_path, monkeypatch):
    from workers.engines.turbomind_engine import TurbomindEngine
    from workers.model_spec import detect_model_spec
    from workers.settings import WorkerSettings

    path = {"remote_v1": build_remote_v1, "native_v2": build_native_v2}[route](tmp_path / route, "tiny", "cpu")
    spec = detect_model_spec(path)
    tokenizer_engine = TurbomindEngine(WorkerSettings(model_path=str(path)), spec)
    image_token = tokenizer_engine.tokenizer.convert_tokens_to_ids(spec.image_token)
    inputs = [(c.name, tokenizer_engine.tokenize(rd.prompt_of(spec, c)), rd.pixels_of(spec, c), c.tiles)
              for c in rd.cases(spec.dynamic)]

    records = spy_on_turbomind(monkeypatch)
    outputs = asyncio.run(turbomind_outputs(path, spec, inputs, records))
    gc.collect()
    torch.cuda.empty_cache()

    reference = rd.ReferenceModel(path, spec, device="cuda", dtype=torch.float32)
    failures = []
    for name, ids, pixels, _ in inputs:
        tokens, logits, text = outputs[name]
        assert len(tokens) == rd.STEPS and logits.shape[0] == rd.STEPS, (name, len(tokens), logits.shape)
        result = rd.compare(tokens, logits, reference.score(ids, pixels, image_token, tokens))
        result["text"] = text
        if pixels is not None:  # the same check on misplaced features must fail: the check can tell
            wrong = pixels.roll(1, dims=0) if pixels.shape[0] > 1 else \
                torch.randn(pixels.shape, generator=torch.Generator().manual_seed(1))
            control = rd.compare(tokens, logits, reference.score(ids, wrong, image_token, tokens))
            result["misplaced_images_logit_error"] = control["max_logit_error"]
            if control["ok"]:
                failures.append(f"{name}: misplaced images would pass too")
        RESULTS[f"{route}/{name}"] = result
        if not result["ok"]:
            failures.append(f"{name}: {result}")
    assert not failures, failures
