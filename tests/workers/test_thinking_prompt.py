"""Thinking requests through prepare_generation: the system prompt, the sampling, earlier reasoning, refusals."""

from __future__ import annotations

import pytest

from common.errors import ErrorCode, ServingError
from common.protocol import ChatCompletionRequest
from workers.model_spec import detect_model_spec
from workers.pipeline import prepare_generation
from workers.prompts.thinking import R1_SYSTEM_PROMPT
from workers.settings import MediaLimits


@pytest.fixture(scope="module")
def spec35(demo_checkpoint_35):
    return detect_model_spec(demo_checkpoint_35)


@pytest.fixture(scope="module")
def spec3(demo_checkpoint):
    return detect_model_spec(demo_checkpoint)


def _req(messages, **kw):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **kw})


USER = {"role": "user", "content": "Why is the sky blue?"}
TAIL = "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"


async def test_thinking_puts_the_authors_prompt_first_and_the_users_after_it(spec35):
    gen = await prepare_generation(_req([USER], thinking=True), spec35, MediaLimits(), "r")
    assert gen.prompt == f"<|im_start|>system\n{R1_SYSTEM_PROMPT}<|im_end|>\n{TAIL}"
    gen = await prepare_generation(_req([{"role": "system", "content": "Answer in French."}, USER], thinking=True),
                                   spec35, MediaLimits(), "r")
    assert gen.prompt == f"<|im_start|>system\n{R1_SYSTEM_PROMPT}\nAnswer in French.<|im_end|>\n{TAIL}"
    plain = await prepare_generation(_req([USER]), spec35, MediaLimits(), "r")
    assert plain.prompt == TAIL and R1_SYSTEM_PROMPT not in plain.prompt


async def test_thinking_samples_as_the_model_card_says_unless_the_request_sets_it(spec35):
    card = await prepare_generation(_req([USER], thinking=True), spec35, MediaLimits(), "r")
    own = await prepare_generation(_req([USER], thinking=True, temperature=0.2), spec35, MediaLimits(), "r")
    off = await prepare_generation(_req([USER]), spec35, MediaLimits(), "r")
    assert (card.sampling.temperature, own.sampling.temperature, off.sampling.temperature) == (0.6, 0.2, 0.7)


async def test_a_family_without_thinking_refuses_the_switch(spec3):
    with pytest.raises(ServingError) as err:
        await prepare_generation(_req([USER], thinking=True), spec3, MediaLimits(), "r")
    assert err.value.code == ErrorCode.THINKING_UNSUPPORTED and err.value.status == 400
    assert "internvl3" in err.value.message
    assert (await prepare_generation(_req([USER], thinking=False), spec3, MediaLimits(), "r")).prompt == TAIL


async def test_earlier_reasoning_goes_back_once_as_the_model_wrote_it(spec35):
    earlier = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello.", "reasoning_content": "\nA greeting.\n"}, USER]
    gen = await prepare_generation(_req(earlier, thinking=True), spec35, MediaLimits(), "r")
    assert "<|im_start|>assistant\n<think>\nA greeting.\n</think>\n\nHello.<|im_end|>\n" in gen.prompt
    # a client that sends the raw answer back (tags included) and the reasoning apart: never twice
    raw = [earlier[0], {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello.",
                        "reasoning_content": "\nA greeting.\n"}, USER]
    gen = await prepare_generation(_req(raw, thinking=True), spec35, MediaLimits(), "r")
    assert gen.prompt.count("A greeting.") == 1


async def test_reasoning_content_only_on_assistant_messages(spec35):
    with pytest.raises(ServingError) as err:
        await prepare_generation(_req([{"role": "user", "content": "x", "reasoning_content": "y"}]), spec35,
                                 MediaLimits(), "r")
    assert err.value.status == 400 and err.value.param == "messages[0].reasoning_content"
