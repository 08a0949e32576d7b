"""End to end on CPU: a real controller and two real workers (transformers engine, demo checkpoint) on loopback,
driven through the official `openai` client. Fault cases (kill -9, controller restart, hangs) are in test_faults.py."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from tests.support.media_samples import png_data_url
from tests.support.stack import DEMO_MODEL as MODEL
from tests.support.stack import DIRECT_KEY, start_controller, start_worker


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    workers = [start_worker(log_dir, demo_checkpoint, controller.url, api_keys=[DIRECT_KEY]) for _ in range(2)]
    yield controller, workers
    for proc in [*workers, controller]:
        proc.stop()


@pytest.fixture()
def client(stack):
    controller, _ = stack
    return openai.OpenAI(base_url=controller.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_demo_model_with_both_workers_and_random_weights(client, stack):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = models[0].model_dump()
    assert card["random_weights"] is True and len(card["workers"]) == 2
    workers = httpx.get(stack[0].url + "/workers").json()["workers"]
    assert {w["url"] for w in workers} == {w.url for w in stack[1]}


def test_multi_turn_two_image_conversation_streams(client, stack):
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare these two pictures."},
        {"type": "image_url", "image_url": {"url": png_data_url((255, 0, 0))}},
        {"type": "image_url", "image_url": {"url": png_data_url((0, 0, 255), (60, 200))}}]}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True, max_tokens=24,
                                            temperature=0, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, "the answer should arrive in several pieces"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    first_prompt_tokens = usage.prompt_tokens
    assert usage.completion_tokens >= 1 and first_prompt_tokens > 8  # two images' tokens are in the prompt

    messages += [{"role": "assistant", "content": text},
                 {"role": "user", "content": "And which one is bigger?"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert second.choices[0].finish_reason in ("stop", "length")
    # The earlier images stay in context: the second prompt is longer than the first.
    assert second.usage.prompt_tokens > first_prompt_tokens


def test_greedy_answers_are_identical_whichever_worker_serves(client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Say something."}], max_tokens=12, temperature=0)
    answers = {client.chat.completions.create(**ask).choices[0].message.content for _ in range(4)}
    assert len(answers) == 1


def test_in_flight_returns_to_zero_after_streams(client, stack):
    for _ in range(3):
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                            stream=True, max_tokens=4))
    workers = httpx.get(stack[0].url + "/workers").json()["workers"]
    assert all(w["in_flight"] == 0 for w in workers)
    assert sum(w["served"] for w in workers) >= 3


def test_errors_reach_the_openai_client_as_typed_exceptions(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "available: internvl-demo" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"nope").decode()}}]}])
    assert err.value.body["code"] == "invalid_image"


def test_worker_can_be_used_directly(stack):
    worker = stack[1][0]
    direct = openai.OpenAI(base_url=worker.url + "/v1", api_key=DIRECT_KEY, max_retries=0)
    reply = direct.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_answers_name_the_worker_that_served_them(stack):
    controller, workers = stack
    ids = {w["worker_id"] for w in httpx.get(controller.url + "/workers").json()["workers"]}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    plain = httpx.post(controller.url + "/v1/chat/completions", json=body, timeout=60)
    with httpx.stream("POST", controller.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as streamed:
        streamed.read()
    assert plain.headers["x-worker-id"] in ids and streamed.headers["x-worker-id"] in ids
