"""Thinking mode end to end through the official `openai` client: a real controller, a real transformers worker on
the demo checkpoint built as InternVL3.5 (the switch itself), one on the InternVL3 demo checkpoint (the refusal),
and a scripted worker on the 3.5 checkpoint whose answers think (`scripted:think`: the reasoning parser's cases)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.scripted_engine import THINKING_ANSWER, THINKING_REASONING
from tests.support.stack import SCRIPTED, spawn_worker, start_controller, wait_worker

KEY = "direct-key"
REASONING = "".join(THINKING_REASONING)
ANSWER = "A sun over a house."


@pytest.fixture(scope="module")
def stack(demo_checkpoint, demo_checkpoint_35, log_dir):
    controller = start_controller(log_dir)
    workers = {
        "think-real": spawn_worker(log_dir, demo_checkpoint_35, controller.url, model_name="think-real"),
        "plain-real": spawn_worker(log_dir, demo_checkpoint, controller.url, model_name="plain-real"),
        "think-scripted": spawn_worker(log_dir, demo_checkpoint_35, controller.url, engine=SCRIPTED,
                                       model_name="think-scripted", api_keys=[KEY], env={"SCRIPTED_RATE": "0"}),
    }
    for w in workers.values():
        wait_worker(w, controller.url)
    yield controller, workers
    for proc in [*workers.values(), controller]:
        proc.stop()


@pytest.fixture()
def client(stack):
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key="unused", max_retries=0)


def _ask(text="scripted:think What is in the picture?"):
    return [{"role": "user", "content": text}]


def test_model_cards_say_which_models_think(client):
    caps = {m.id: m.model_dump()["capabilities"] for m in client.models.list().data}
    assert caps == {"think-real": ["vision", "video", "thinking"], "plain-real": ["vision", "video"],
                    "think-scripted": ["vision", "video", "thinking"]}


def test_a_model_without_thinking_refuses_the_switch_with_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="plain-real", messages=_ask("Hi"), max_tokens=4,
                                       extra_body={"thinking": True})
    body = err.value.body
    assert err.value.status_code == 400 and body["code"] == "thinking_not_supported" and body["param"] == "thinking"
    assert "internvl3" in body["message"] and "capabilities" in body["message"]


def test_the_switch_on_the_real_demo_model_adds_the_thinking_prompt(client):
    ask = dict(model="think-real", messages=_ask("Hi"), max_tokens=4, temperature=0)
    plain = client.chat.completions.create(**ask)
    thinking = client.chat.completions.create(**ask, extra_body={"thinking": True})
    # the authors' system prompt (~100 words) is in the thinking prompt, and only there
    assert thinking.usage.prompt_tokens > plain.usage.prompt_tokens + 100
    assert thinking.choices[0].finish_reason in ("stop", "length")


def test_streamed_reasoning_comes_before_the_answer(client):
    chunks = list(client.chat.completions.create(model="think-scripted", messages=_ask(), stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"thinking": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [getattr(d, "reasoning_content", None) or "" for d in deltas]
    content = [d.content or "" for d in deltas]
    assert "".join(reasoning) == REASONING and "".join(content) == ANSWER
    last_reasoning = max(i for i, r in enumerate(reasoning) if r)
    first_content = min(i for i, c in enumerate(content) if c)
    assert last_reasoning < first_content
    assert deltas[0].role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage.completion_tokens == len(THINKING_ANSWER)
    # both tags' pieces and the reasoning between them: 2 + 13 + 3 tokens
    assert usage.completion_tokens_details.reasoning_tokens == 2 + len(THINKING_REASONING) + 3


def test_non_streaming_answers_carry_reasoning_content(client, stack):
    reply = client.chat.completions.create(model="think-scripted", messages=_ask(), extra_body={"thinking": True})
    message = reply.choices[0].message
    assert message.content == ANSWER and message.reasoning_content == REASONING
    # the worker's own non-streaming path (the controller always streams from workers)
    direct = httpx.post(stack[1]["think-scripted"].url + "/v1/chat/completions",
                        headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": "think-scripted", "messages": _ask(), "thinking": True}, timeout=30).json()
    assert direct["choices"][0]["message"] == {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}
    assert direct["usage"]["completion_tokens_details"]["reasoning_tokens"] == 18


def test_cut_by_max_tokens_while_thinking_gives_the_reasoning_so_far_and_says_why(client):
    cut = 8  # '<th', 'ink>' and six reasoning tokens
    chunks = list(client.chat.completions.create(model="think-scripted", messages=_ask(), stream=True, max_tokens=cut,
                                                 extra_body={"thinking": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "".join(THINKING_REASONING[:6])
    assert not "".join(d.content or "" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "length"
    reply = client.chat.completions.create(model="think-scripted", messages=_ask(), max_tokens=cut,
                                           extra_body={"thinking": True})
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == ""
    assert reply.choices[0].message.reasoning_content == "".join(THINKING_REASONING[:6])


def test_an_answer_without_tags_is_all_content(client):
    reply = client.chat.completions.create(model="think-scripted", messages=_ask("Hello"), max_tokens=3)
    assert reply.choices[0].message.content == "I see 0 images. word1 word2"
    assert getattr(reply.choices[0].message, "reasoning_content", None) is None
    assert reply.usage.completion_tokens_details is None


def test_earlier_reasoning_can_be_sent_back(client):
    first = client.chat.completions.create(model="think-scripted", messages=_ask(), extra_body={"thinking": True})
    message = first.choices[0].message
    follow = _ask() + [{"role": "assistant", "content": message.content,
                        "reasoning_content": message.reasoning_content}, {"role": "user", "content": "And?"}]
    second = client.chat.completions.create(model="think-scripted", messages=follow, max_tokens=2)
    assert second.choices[0].finish_reason == "length"
