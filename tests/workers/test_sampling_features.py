"""The parts of OpenAI compatibility below the HTTP layer, unit by unit: the admission table (what is accepted,
ignored or refused), the penalties' arithmetic, n choices (seeds, merging, stopping), and the controller's
collection of a streamed answer with several choices and logprobs.
End to end: tests/integration/test_openai_compat.py."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from common.errors import ErrorCode, ServingError
from common.openai_fields import DEFAULT_ONLY, IGNORED
from common.protocol import ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Delta
from controller.aggregate import collect
from workers.choices import choice_requests, merged
from workers.engines.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from workers.engines.transformers_sampling import _penalties
from workers.openai_support import ALL_FEATURES, refuse_unsupported


class _Engine:
    name = "test"
    features = ALL_FEATURES


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})


# ------------------------------------------------------------------------------------------- admission


@pytest.mark.parametrize("name", list(DEFAULT_ONLY))
def test_default_only_fields_take_their_default_and_refuse_the_rest(name):
    default = DEFAULT_ONLY[name]
    refuse_unsupported(chat(**{name: default}), _Engine())
    refuse_unsupported(chat(**{name: None}), _Engine())
    other = {bool: (not default) if isinstance(default, bool) else None, int: 3, float: 2.5,
             list: [1] if name == "allowed_token_ids" else ["x"], dict: {"x": 1}, str: "x"}[type(default)]
    with pytest.raises(ServingError) as info:
        refuse_unsupported(chat(**{name: other}), _Engine())
    assert info.value.code == ErrorCode.UNSUPPORTED_VALUE and info.value.param == name
    assert info.value.message.startswith(f"this server does not support {name}=")


def test_ignored_fields_take_any_value():
    values = {"priority": 7, "request_id": "abc", "chat_template_kwargs": {"enable_thinking": True},
              "spaces_between_special_tokens": False, "store": True, "service_tier": "flex", "verbosity": "low",
              "metadata": {"a": "b"}, "separate_reasoning": False, "parallel_tool_calls": False}
    assert set(values) <= set(IGNORED)
    refuse_unsupported(chat(**values), _Engine())


def test_an_engine_without_a_feature_refuses_it_and_the_message_names_the_value():
    class Plain(_Engine):
        name = "plain"
        features = frozenset()

    refuse_unsupported(chat(logprobs=False, presence_penalty=0.0, skip_special_tokens=True, ignore_eos=False,
                            response_format={"type": "text"}), Plain())
    with pytest.raises(ServingError, match=r"this server does not support logprobs=true: the plain engine"):
        refuse_unsupported(chat(logprobs=True), Plain())
    with pytest.raises(ServingError, match=r'response_format.type="json_object"'):
        refuse_unsupported(chat(response_format={"type": "json_object"}), Plain())


def test_shape_rules_of_the_new_fields():
    with pytest.raises(ValueError, match="top_logprobs needs logprobs: true"):
        chat(top_logprobs=2)
    with pytest.raises(ValueError, match="logit_bias keys are token ids"):
        chat(logit_bias={"hello": 1})
    with pytest.raises(ValueError, match="values lie in"):
        chat(logit_bias={"5": 101})
    assert chat(seed=-(2**63)).seed == -(2**63) and chat(seed=2**64 - 1).seed == 2**64 - 1
    assert chat(messages=[{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]) \
        .messages[0].role == "system"


def test_chunks_always_carry_finish_reason_and_logprobs_keys():
    chunk = ChatCompletionChunk(id="c", model="m", choices=[ChunkChoice(delta=Delta(content="x"))])
    choice = json.loads(chunk.model_dump_json(exclude_none=True))["choices"][0]
    assert choice == {"index": 0, "delta": {"content": "x"}, "finish_reason": None, "logprobs": None}


# ------------------------------------------------------------------------------------------- penalties


def test_presence_and_frequency_penalties_count_only_the_answer():
    prompt = [4, 4, 4]
    answer = [1, 1, 2]
    scores = torch.zeros(1, 6)
    out = _penalties(0.5, 2.0, len(prompt))(torch.tensor([prompt + answer]), scores.clone())
    # token 1: twice -> 2 * 2.0 + 0.5; token 2: once -> 2.0 + 0.5; token 4 only in the prompt: untouched
    assert out.tolist() == [[0.0, -4.5, -2.5, 0.0, 0.0, 0.0]]
    assert torch.equal(_penalties(0.5, 2.0, 3)(torch.tensor([prompt]), scores.clone()), scores)


# ------------------------------------------------------------------------------------------- n choices


def test_each_choice_has_its_own_request_id_and_seed():
    gen = GenerationRequest("r", "p", None, sampling=SamplingParams(seed=2**64 - 1))
    choices = choice_requests(gen, 3)
    assert [c.request_id for c in choices] == ["r-0", "r-1", "r-2"]
    assert [c.sampling.seed for c in choices] == [2**64 - 1, 0, 1]
    unseeded = choice_requests(GenerationRequest("r", "p", None), 2)
    assert [c.sampling.seed for c in unseeded] == [None, None]
    assert choice_requests(gen, 1) == [gen]


class _Stream:
    """An engine stream: `tokens` TokenEvents then a FinishEvent, one per `step_s`; records being closed."""

    def __init__(self, tokens: int, step_s: float = 0.001, fail: bool = False):
        self.tokens, self.step_s, self.fail = tokens, step_s, fail
        self.closed = False

    async def run(self):
        try:
            for i in range(self.tokens):
                await asyncio.sleep(self.step_s)
                yield TokenEvent(f"t{i}")
            if self.fail:
                raise ServingError(ErrorCode.ENGINE_ERROR, "boom")
            yield FinishEvent("length", 3, self.tokens)
        finally:
            self.closed = True


async def test_merged_streams_tag_each_event_with_its_choice():
    streams = [_Stream(3), _Stream(2)]
    events = [e async for e in merged([s.run() for s in streams])]
    for index, stream in enumerate(streams):
        mine = [e for i, e in events if i == index]
        assert [type(e).__name__ for e in mine] == ["TokenEvent"] * stream.tokens + ["FinishEvent"]
    assert all(s.closed for s in streams)


async def test_closing_merged_streams_closes_every_generation():
    streams = [_Stream(1000, 0.01), _Stream(1000, 0.01)]
    events = merged([s.run() for s in streams])
    await anext(events)
    await events.aclose()
    deadline = asyncio.get_running_loop().time() + 5
    while not all(s.closed for s in streams) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert all(s.closed for s in streams)


async def test_an_error_in_one_choice_ends_the_answer():
    streams = [_Stream(2, fail=True), _Stream(1000, 0.01)]
    with pytest.raises(ServingError, match="boom"):
        async for _ in merged([s.run() for s in streams]):
            pass
    deadline = asyncio.get_running_loop().time() + 5
    while not streams[1].closed and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert streams[1].closed


# ------------------------------------------------------------------------------------------- controller side


async def test_the_controller_collects_each_choice_with_its_logprobs():
    def chunk(index, content=None, finish=None, logprobs=None):
        return json.dumps({"id": "c1", "choices": [{"index": index, "delta": {"content": content},
                                                     "finish_reason": finish, "logprobs": logprobs}]})

    lp = {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]}
    events = [chunk(0, "a", logprobs=lp), chunk(1, "b", logprobs=lp), chunk(0, "a", logprobs=lp),
              chunk(1, finish="stop"), chunk(0, finish="length"),
              json.dumps({"id": "c1", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3,
                                                                "total_tokens": 5}}), "[DONE]"]

    async def feed():
        for e in events:
            yield e

    done = await collect(feed(), "m")
    assert [(c.index, c.message.content, c.finish_reason) for c in done.choices] == [(0, "aa", "length"),
                                                                                    (1, "b", "stop")]
    assert [len(c.logprobs.content) for c in done.choices] == [2, 1] and done.usage.total_tokens == 5


def test_zerogpu_serves_what_survives_its_process_boundary():
    """On ZeroGPU the generation arguments are pickled into the GPU process: the penalties' processor must pickle;
    logprobs and response_format, which do not cross, are refused by name."""
    import pickle

    from workers.engines.zerogpu_engine import ZeroGPUEngine

    penalty = pickle.loads(pickle.dumps(_penalties(0.5, 1.0, 2)))
    assert (penalty.presence, penalty.frequency, penalty.prompt_tokens) == (0.5, 1.0, 2)
    engine = ZeroGPUEngine.__new__(ZeroGPUEngine)
    refuse_unsupported(chat(presence_penalty=1.0, logit_bias={"3": 2}, ignore_eos=True), engine)
    for fields, param in (({"logprobs": True}, "logprobs"), ({"response_format": {"type": "json_object"}},
                                                             "response_format.type")):
        with pytest.raises(ServingError, match=f"this server does not support {param}=.*transformers-zerogpu"):
            refuse_unsupported(chat(**fields), engine)
