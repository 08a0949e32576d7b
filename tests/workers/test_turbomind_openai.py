"""OpenAI's parameters on TurboMind, on CPU: the real lmdeploy AsyncEngine with TurboMind's CUDA instance replaced at
lmdeploy's seam (tests/support/scripted_turbomind.py records the GenerationConfig it is handed and answers logprobs
in TurboMind's own form). What TurboMind cannot honour is refused at admission, by name."""

from __future__ import annotations

import asyncio
import base64
import io

import openai
import pytest
import uvicorn
from PIL import Image

from common.errors import ErrorCode, ServingError
from common.protocol import ChatCompletionRequest
from tests.support.scripted_turbomind import collect, image_request, load_engine
from tests.support.stack import free_port
from workers.app import create_app
from workers.engines.base import SamplingParams
from workers.engines.turbomind_config import generation_config
from workers.engines.turbomind_sampling import lmdeploy_logprobs
from workers.openai_support import refuse_unsupported
from workers.pipeline import openai_sampling


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})


def test_generation_config_carries_what_turbomind_honours():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = chat(logprobs=True, top_logprobs=3, min_p=0.1, min_tokens=4, stop_token_ids=[7], ignore_eos=True,
               skip_special_tokens=False, seed=-1,
               response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    cfg = generation_config(SamplingParams(seed=req.seed % 2**64, **openai_sampling(req)), max_new_tokens=16)
    assert (cfg.logprobs, cfg.min_p, cfg.min_new_tokens, cfg.stop_token_ids) == (3, 0.1, 4, [7])
    assert cfg.ignore_eos and not cfg.skip_special_tokens and cfg.random_seed == 2**64 - 1
    assert cfg.response_format == {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    plain = generation_config(SamplingParams(**openai_sampling(chat())), max_new_tokens=16)
    assert (plain.logprobs, plain.response_format, plain.min_new_tokens, plain.stop_token_ids) == (None,) * 4
    assert plain.skip_special_tokens and not plain.ignore_eos
    # top_logprobs 0 still asks lmdeploy for one row per token (it holds the chosen token's logprob)
    assert generation_config(SamplingParams(logprobs=True), max_new_tokens=4).logprobs == 1
    assert generation_config(SamplingParams(**openai_sampling(chat(response_format={"type": "json_object"}))),
                             max_new_tokens=4).response_format == {"type": "json_object"}


@pytest.mark.parametrize("fields, param", [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1.0}, "frequency_penalty"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
])
async def test_what_turbomind_cannot_honour_is_refused_by_name(v1_engine, fields, param):
    with pytest.raises(ServingError) as info:
        refuse_unsupported(chat(**fields), v1_engine)
    err = info.value
    assert (err.code, err.status, err.param) == (ErrorCode.UNSUPPORTED_VALUE, 400, param)
    assert err.message.startswith(f"this server does not support {param}=")
    assert "turbomind engine" in err.message


async def test_what_turbomind_honours_passes_admission(v1_engine):
    refuse_unsupported(chat(logprobs=True, top_logprobs=2, response_format={"type": "json_object"}, min_p=0.2,
                            ignore_eos=True, skip_special_tokens=False, presence_penalty=0, logit_bias={}), v1_engine)


async def test_logprobs_come_back_per_token_through_lmdeploy(v1_engine):
    eng = v1_engine
    req = image_request(eng, images=0, max_new=5)
    req.sampling = SamplingParams(max_new_tokens=5, temperature=0, logprobs=True, top_logprobs=2,
                                  response_format={"type": "json_object"}, skip_special_tokens=False)
    events = await collect(eng.generate(req))
    cfg = eng.tm.calls[-1].gen_config
    assert (cfg.logprobs, cfg.response_format, cfg.skip_special_tokens) == (2, {"type": "json_object"}, False)
    tokens = [t for e in events[:-1] for t in e.logprobs]
    assert len(tokens) == events[-1].completion_tokens == 5
    assert "".join(t.token for t in tokens) == "".join(e.text for e in events[:-1])
    for t in tokens:
        assert t.logprob == -0.25 and len(t.top) == 2 and t.top[0] == (t.token, -0.25)


def test_lmdeploy_logprobs_belong_to_the_last_token_ids(v1_engine):
    """lmdeploy's GenOut keeps earlier tokens in token_ids (detokenizer context): the rows are the last ones'."""
    out = lmdeploy_logprobs([11, 12, 13], [{13: -0.5, 2: -1.0}], v1_engine.tokenizer, top=1)
    assert len(out) == 1 and out[0].logprob == -0.5
    assert out[0].token == v1_engine.tokenizer.decode([13]) and out[0].top == ((out[0].token, -0.5),)
    assert lmdeploy_logprobs([1], None, v1_engine.tokenizer, top=1) == []


# ------------------------------------------------------------------------------------------- through the openai client


@pytest.fixture
async def turbomind_worker(v1_checkpoint, monkeypatch):
    """A real worker HTTP server (uvicorn, in this process, so the scripted TurboMind seam applies) on the TurboMind
    engine, loaded as the flow tests load it (no GPU here)."""
    eng = await load_engine(v1_checkpoint, monkeypatch, controller_url=None, body_parsers=0, model_name="tm")

    async def loaded() -> None:  # the app's lifespan starts the engine: it is already loaded on the CPU
        return None

    eng.start = loaded
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(eng.settings, eng), host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert server.started
    try:
        yield eng, openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        server.should_exit = True
        await task
        await eng.stop()


def _image_turn() -> list[dict]:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "Describe."}]}]


async def test_openai_client_on_turbomind_logprobs_n_and_response_format(turbomind_worker):
    eng, client = turbomind_worker
    r = await client.chat.completions.create(model="tm", messages=_image_turn(), max_tokens=4, temperature=0, n=2,
                                             logprobs=True, top_logprobs=2, seed=-3,
                                             response_format={"type": "json_object"},
                                             extra_body={"skip_special_tokens": False, "min_p": 0.1})
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert len(c.logprobs.content) == 4 and all(t.logprob == -0.25 for t in c.logprobs.content)
        assert "".join(t.token for t in c.logprobs.content) == c.message.content
    configs = [call.gen_config for call in eng.tm.calls[-2:]]  # the two choices, each its own TurboMind request
    assert sorted(cfg.random_seed for cfg in configs) == [2**64 - 3, 2**64 - 2]
    for cfg in configs:
        assert (cfg.logprobs, cfg.response_format, cfg.skip_special_tokens, cfg.min_p) == \
            (2, {"type": "json_object"}, False, 0.1)
    chunks = [c async for c in await client.chat.completions.create(
        model="tm", messages=_image_turn(), max_tokens=4, temperature=0, stream=True, logprobs=True)]
    assert sum(len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs) == 4


@pytest.mark.parametrize("kwargs, param", [({"presence_penalty": 0.5}, "presence_penalty"),
                                           ({"logit_bias": {"7": 5}}, "logit_bias")])
async def test_openai_client_on_turbomind_is_told_what_it_cannot_have(turbomind_worker, kwargs, param):
    eng, client = turbomind_worker
    before = len(eng.tm.calls)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="tm", messages=_image_turn(), max_tokens=4, **kwargs)
    assert info.value.body["code"] == "unsupported_value" and "turbomind engine" in info.value.body["message"]
    assert info.value.body["param"] == param and len(eng.tm.calls) == before  # refused before TurboMind
