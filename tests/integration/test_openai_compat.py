"""OpenAI compatibility, through the official `openai` client: a real controller and one real worker (transformers
engine, demo checkpoint) on loopback. Each documented parameter is sent as SDKs and the field's clients send it;
what the engine honours is checked by its effect, what it cannot honour must be a 400 `unsupported_value` that names
the parameter and the value. The table in docs/operations.md follows these tests."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.support.media_samples import png_data_url
from tests.support.stack import DEMO_MODEL as MODEL
from tests.support.stack import DIRECT_KEY, start_controller, start_worker

HI = [{"role": "user", "content": "Describe the picture."}]


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, api_keys=[DIRECT_KEY])
    yield controller, worker
    worker.stop()
    controller.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(demo_checkpoint):
    return AutoTokenizer.from_pretrained(demo_checkpoint)


def chat(client, **kwargs):
    kwargs.setdefault("messages", HI)
    kwargs.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=MODEL, **kwargs)


def streamed(client, **kwargs):
    """-> (text per choice index, finish reason per index, the chunks)."""
    chunks = list(chat(client, stream=True, **kwargs))
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish, chunks


def refused(client, param: str, **kwargs) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, **kwargs)
    body = info.value.body
    assert body["code"] == "unsupported_value", body
    assert body["message"].startswith(f"this server does not support {param}="), body
    assert body["param"] == param
    return info.value


# ------------------------------------------------------------------------------------------- accepted as SDKs send


def test_every_documented_parameter_at_its_neutral_value_is_accepted(client):
    r = chat(client, logprobs=False, presence_penalty=0, frequency_penalty=0, logit_bias={},
             response_format={"type": "text"}, tools=[], tool_choice="none", parallel_tool_calls=True, n=1,
             seed=-(2**63), store=False, metadata={"k": "v"}, user="u", service_tier="auto", modalities=["text"],
             prediction={"type": "content", "content": "x"}, prompt_cache_key="c", safety_identifier="s",
             prompt_cache_retention="in_memory", prompt_cache_options={"ttl": "30m"}, verbosity="medium",
             max_completion_tokens=8, stop=["\n\n"], top_p=0.9, temperature=0.5, function_call="none")
    assert r.choices[0].finish_reason in ("stop", "length")


def test_the_routers_added_fields_are_accepted(client):
    """What vllm-router and sglang-router add to every request they forward."""
    r = chat(client, extra_body={"logprobs": False, "no_stop_trim": False, "ignore_eos": False,
                                 "continue_final_message": False, "skip_special_tokens": True, "top_k": 0,
                                 "min_p": 0.0, "repetition_penalty": 1.0, "separate_reasoning": True,
                                 "stream_reasoning": True, "chat_template_kwargs": {}, "rid": None,
                                 "return_hidden_states": False, "add_generation_prompt": True})
    assert r.choices[0].message.content is not None


def test_keys_clients_put_on_parts_and_messages_are_accepted(client):
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url((200, 30, 30)), "detail": "original"},
         "modalities": "multi-images", "uuid": "img-1"},
        {"type": "text", "text": "What is this?", "prompt_cache_breakpoint": {"mode": "explicit"}}]}]
    assert chat(client, messages=messages).choices[0].finish_reason


def test_a_field_nobody_sends_is_still_refused_by_name(client):
    with pytest.raises(openai.BadRequestError, match="unknown field 'temprature'"):
        chat(client, extra_body={"temprature": 0.5})


def test_developer_role_is_the_system_message(client):
    system = chat(client, temperature=0, messages=[{"role": "system", "content": "Be brief."}, *HI])
    developer = chat(client, temperature=0, messages=[{"role": "developer", "content": "Be brief."}, *HI])
    without = chat(client, temperature=0)
    assert developer.usage.prompt_tokens == system.usage.prompt_tokens != without.usage.prompt_tokens
    assert developer.choices[0].message.content == system.choices[0].message.content


# ------------------------------------------------------------------------------------------- honoured


def test_logprobs_with_top_logprobs(client):
    r = chat(client, temperature=0, logprobs=True, top_logprobs=3, max_tokens=6, extra_body={"ignore_eos": True})
    tokens = r.choices[0].logprobs.content
    assert r.choices[0].finish_reason == "length" and len(tokens) == r.usage.completion_tokens == 6
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # greedy, no penalties: the chosen token is the most likely one
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)


def test_streamed_chunks_carry_finish_reason_null_and_logprobs(stack):
    """Strict typed decoders expect both keys on every chunk choice (raw SSE, not the SDK's lenient parse)."""
    body = {"model": MODEL, "messages": HI, "max_tokens": 5, "stream": True, "logprobs": True, "temperature": 0,
            "ignore_eos": True}
    with httpx.stream("POST", stack[0].url + "/v1/chat/completions", json=body, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    choices = [c for e in events for c in e["choices"]]
    assert all("finish_reason" in c and "logprobs" in c for c in choices)
    assert [c["finish_reason"] for c in choices[:-1]] == [None] * (len(choices) - 1)
    assert choices[-1]["finish_reason"] == "length"
    assert sum(len(c["logprobs"]["content"]) for c in choices[:-1]) == 5


def test_logit_bias_forces_a_token(client, tokenizer):
    token_id = tokenizer.convert_tokens_to_ids("a")
    r = chat(client, temperature=0, logit_bias={str(token_id): 100}, max_tokens=5, extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == "aaaaa"
    with pytest.raises(openai.BadRequestError, match="logit_bias names token 999999"):
        chat(client, logit_bias={"999999": 1})


def test_frequency_and_presence_penalties_change_a_repetitive_answer(client, tokenizer):
    """Greedy answers of the random model repeat tokens; a penalty on repeats changes them. (The penalty's arithmetic
    is checked exactly in tests/workers/test_sampling_features.py.)"""
    base = dict(temperature=0, max_tokens=30, logprobs=True, extra_body={"ignore_eos": True})
    plain = [t.token for t in chat(client, **base).choices[0].logprobs.content]
    assert len(set(plain)) < len(plain)  # it repeats itself
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalised = [t.token for t in chat(client, **base, **penalty).choices[0].logprobs.content]
        assert penalised != plain, penalty
        assert len(set(penalised)) > len(set(plain)), (penalty, plain, penalised)


def test_n_choices_with_a_seed_are_repeatable_and_streamed_alike(client):
    kwargs = dict(n=3, seed=7, temperature=1.0, max_tokens=6, extra_body={"ignore_eos": True})
    r = chat(client, **kwargs)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1  # each choice samples with its own seed
    assert [c.message.content for c in chat(client, **kwargs).choices] == texts
    stream_texts, finish, _ = streamed(client, **kwargs)
    assert [stream_texts[i] for i in range(3)] == texts and set(finish) == {0, 1, 2}
    assert r.usage.completion_tokens == 3 * 6  # the choices' tokens add up
    assert r.usage.prompt_tokens == chat(client, max_tokens=1).usage.prompt_tokens  # the prompt counts once


def test_the_worker_used_directly_answers_n_choices_with_logprobs_alike(stack, client):
    """The controller always streams from the worker; a client of the worker itself gets the worker's own
    non-streaming answer, which must hold the same choices."""
    direct = openai.OpenAI(base_url=stack[1].url + "/v1", api_key=DIRECT_KEY, max_retries=0)
    kwargs = dict(n=2, seed=11, temperature=1.0, max_tokens=5, logprobs=True, top_logprobs=1)
    mine = chat(direct, **kwargs)
    assert [c.message.content for c in mine.choices] == [c.message.content for c in chat(client, **kwargs).choices]
    for c in mine.choices:
        assert c.logprobs.content and all(t.logprob <= 0 and len(t.top_logprobs) == 1 for t in c.logprobs.content)
        if c.message.content.isascii():  # (a token that is part of a UTF-8 character reads as U+FFFD alone)
            assert "".join(t.token for t in c.logprobs.content) == c.message.content
    texts, _, _ = streamed(direct, **kwargs)
    assert [texts[0], texts[1]] == [c.message.content for c in mine.choices]


def test_seed_makes_sampling_repeatable_and_negative_seeds_work(client):
    a = chat(client, seed=-12345, temperature=1.0, max_tokens=10).choices[0].message.content
    b = chat(client, seed=-12345, temperature=1.0, max_tokens=10).choices[0].message.content
    assert a == b


def test_response_format_json_schema_constrains_the_answer(client):
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]}}, "required": ["colour"],
              "additionalProperties": False}
    r = chat(client, max_tokens=40, response_format={"type": "json_schema",
                                                     "json_schema": {"name": "c", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    assert json.loads(r.choices[0].message.content)["colour"] in ("red", "green")


def test_response_format_json_object_gives_an_object(client):
    r = chat(client, temperature=0, max_tokens=60, response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_a_schema_the_grammar_cannot_use_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="json_schema.schema cannot be used"):
        chat(client, response_format={"type": "json_schema",
                                      "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}})


def test_ignore_eos_and_min_tokens(client):
    r = chat(client, max_tokens=12, extra_body={"ignore_eos": True})
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 12)
    r = chat(client, max_tokens=12, extra_body={"min_tokens": 12})
    assert r.usage.completion_tokens == 12


def test_skip_special_tokens_false_shows_special_tokens(client, tokenizer):
    token_id = tokenizer.convert_tokens_to_ids("<img>")
    kwargs = dict(temperature=0, max_tokens=2, logit_bias={str(token_id): 100})
    assert chat(client, **kwargs).choices[0].message.content == ""
    shown = chat(client, **kwargs, extra_body={"skip_special_tokens": False}).choices[0].message.content
    assert shown == "<img><img>"


# ------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("param, kwargs", [
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
    ("tool_choice", {"tool_choice": "required"}),
    ("n", {"n": 9}),
    ("response_format.type", {"response_format": {"type": "regex"}}),
    ("reasoning_effort", {"reasoning_effort": "high"}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text"]}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("web_search_options", {"web_search_options": {}}),
    ("continue_final_message", {"extra_body": {"continue_final_message": True}}),
    ("no_stop_trim", {"extra_body": {"no_stop_trim": True}}),
    ("use_beam_search", {"extra_body": {"use_beam_search": True}}),
    ("messages[1].role", {"messages": [*HI, {"role": "tool", "content": "42", "tool_call_id": "c1"}]}),
])
def test_values_this_server_cannot_honour_are_refused_by_name(client, param, kwargs):
    refused(client, param, **kwargs)


def test_stream_options_without_stream_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="stream_options is only allowed when stream is true"):
        chat(client, stream_options={"include_usage": True})


def test_the_worker_keeps_serving_after_refusals(client):
    refused(client, "n", n=100)
    assert chat(client).choices[0].finish_reason


# ------------------------------------------------------------------------------------------- paths


def test_unknown_paths_answer_in_the_openai_error_format(stack, client):
    r = httpx.get(stack[0].url + "/v1/no-such-thing", timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and "/v1/no-such-thing" in r.json()["error"]["message"]
    r = httpx.delete(stack[0].url + "/v1/chat/completions", timeout=5)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    with pytest.raises(openai.NotFoundError, match="does not serve /v1/completions"):
        client.completions.create(model=MODEL, prompt="hello")
