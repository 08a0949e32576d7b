"""The reference half of the TurboMind GPU output tests (tests/gpu/test_turbomind_outputs.py), run on CPU.

tests/support/reference_decode.py decodes greedily with transformers on the same random-weight checkpoints the GPU
tests serve with TurboMind. Here: on the v2 route it is the transformers engine (same loader, same tokens); and its
`compare` accepts a legitimate bf16 implementation (transformers in bf16) while telling the right images from the
same images in another order or other images, on both routes, for every GPU test case.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import reference_decode as rd
from workers.engines.base import GenerationRequest, SamplingParams, TokenEvent
from workers.engines.transformers_engine import TransformersEngine
from workers.engines.turbomind_engine import TurbomindEngine
from workers.model_spec import detect_model_spec
from workers.settings import WorkerSettings


def token_ids(path, spec):
    """How the TurboMind engine tokenizes (the GPU tests feed these ids to both sides), and its image token id."""
    eng = TurbomindEngine(WorkerSettings(model_path=str(path)), spec)
    return eng.tokenize, eng.tokenizer.convert_tokens_to_ids(spec.image_token)


@pytest.mark.parametrize("case_name", ["text", "one_image"])
async def test_reference_decodes_as_the_transformers_engine_generates(v2_checkpoint, case_name):
    spec = detect_model_spec(v2_checkpoint)
    case = next(c for c in rd.cases(spec.dynamic) if c.name == case_name)
    prompt, pixels = rd.prompt_of(spec, case), rd.pixels_of(spec, case)
    encode, image_token = token_ids(v2_checkpoint, spec)
    reference = rd.ReferenceModel(v2_checkpoint, spec).greedy(encode(prompt), pixels, image_token)

    engine = TransformersEngine(WorkerSettings(model_path=str(v2_checkpoint), device="cpu"), spec)
    await engine.start()
    try:
        request = GenerationRequest(request_id="r", prompt=prompt, pixel_values=pixels, num_tiles=list(case.tiles),
                                    sampling=SamplingParams(max_new_tokens=rd.STEPS, temperature=0))
        events = [e async for e in engine.generate(request)]
    finally:
        await engine.stop()
    assert events[-1].completion_tokens == rd.STEPS
    text = "".join(e.text for e in events if isinstance(e, TokenEvent))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(v2_checkpoint)
    assert text == tokenizer.decode(reference.tokens, skip_special_tokens=True)


@pytest.mark.parametrize("route", ["v1", "v2"])
def test_compare_accepts_bf16_and_tells_images_apart(route, v1_checkpoint, v2_checkpoint):
    path = {"v1": v1_checkpoint, "v2": v2_checkpoint}[route]
    spec = detect_model_spec(path)
    encode, image_token = token_ids(path, spec)
    fp32 = rd.ReferenceModel(path, spec, dtype=torch.float32)
    bf16 = rd.ReferenceModel(path, spec, dtype=torch.bfloat16)  # stands in for TurboMind's bf16 kernels
    clear = 0
    for case in rd.cases(spec.dynamic):
        ids, pixels = encode(rd.prompt_of(spec, case)), rd.pixels_of(spec, case)
        engine = bf16.greedy(ids, pixels, image_token)
        result = rd.compare(engine.tokens, engine.logits, fp32.score(ids, pixels, image_token, engine.tokens))
        assert result["ok"] and result["steps"] == rd.STEPS, (case.name, result)
        clear += result["clear_steps"]
        if pixels is None:
            continue
        # Features on the wrong tokens: the same tiles in another order (or another image when there is one tile).
        wrong = pixels.roll(1, dims=0) if pixels.shape[0] > 1 else rd.pixels_of(spec, case, seed=1)
        control = rd.compare(engine.tokens, engine.logits, fp32.score(ids, wrong, image_token, engine.tokens))
        assert not control["ok"] and control["max_logit_error"] > rd.LOGIT_TOL, (case.name, control)
    assert clear >= rd.STEPS  # the token comparison is not vacuous: many steps have a clear greedy choice
