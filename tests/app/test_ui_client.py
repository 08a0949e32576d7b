"""The launched web UI (`python -m app`, a real process) driven through gradio_client, backed by a real controller,
a transformers worker on the demo checkpoint and a slow scripted worker (for Stop)."""

from __future__ import annotations

import json

import httpx
import pytest

from app.messages import from_display
from tests.support.stack import EXAMPLES
from tests.support.waiting import wait_until
SETTINGS = ("", 0.7, 0.9, 48, 1.05, 2, 4)  # system prompt, temperature, top_p, max tokens, rep. penalty, tiles, frames


@pytest.fixture()
def client(demo_ui_stack):
    from gradio_client import Client

    return Client(demo_ui_stack["url"] + "/", verbose=False)


def text_of(message: dict) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")


def test_models_endpoint_lists_served_models_and_flags_random_weights(client):
    dropdown, info, banner, max_tokens, think = client.predict("", 1024, api_name="/models")
    assert [c[0] for c in dropdown["choices"]] == ["internvl-demo", "internvl-scripted"]
    assert dropdown["value"] == "internvl-demo" and "Served by: `worker-" in info
    assert banner["visible"] is True and "random weights" in banner["value"]
    assert max_tokens["maximum"] == 3072  # the demo checkpoint's 4096-token context, less room for the prompt
    assert think["visible"] is False  # the InternVL3 demo model has no thinking mode


def test_chat_streams_an_answer_about_an_image_and_a_video_and_logs_the_turn(client, demo_ui_stack):
    from gradio_client import handle_file

    message = {"text": "What is in <b>these</b>?",
               "files": [handle_file(str(EXAMPLES / "landscape.jpg")), handle_file(str(EXAMPLES / "bouncing_ball.mp4"))]}
    job = client.submit(message, [], "internvl-demo", *SETTINGS, api_name="/chat")
    updates = [out[0] for out in job]
    history = updates[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] and text_of(history[1]).strip()
    assert history[1]["metadata"] is None  # an answer, not an error note
    assert text_of(history[0]) == "What is in &lt;b&gt;these&lt;/b&gt;?"  # shown as text
    logs = demo_ui_stack["conversations"]
    turns = [json.loads(line) for f in logs.glob("*.jsonl") for line in f.read_text().splitlines()]
    turn = [t for t in turns if t["type"] == "turn"][-1]
    # the log keeps the answer as generated, and the chat shows it as generated: its tabs, indents and surrounding
    # whitespace too (the demo model's random answer has them at times: app/messages.py display_part)
    assert turn["model"] == "internvl-demo" and turn["outcome"] == "ok" and \
        turn["answer"] == from_display(text_of(history[1]))
    assert [p["type"] for p in turn["messages"][0]["content"]] == ["image", "video", "text"]
    assert {p.name for p in (logs / "media").iterdir()} == \
        {p["media"] for p in turn["messages"][0]["content"][:2]}


def test_an_answer_reaches_the_page_as_it_is_generated_not_at_the_end(client):
    # The scripted worker paces 40 tokens at 40 per second: about one second of answer, which the UI must show in
    # many steps (the coalescer joins deltas for at most 50-60 ms at this length). The demo model is too fast for
    # this on a quick machine: its 48 tokens can all land within three coalescing intervals.
    job = client.submit({"text": "Count slowly", "files": []}, [], "internvl-scripted", "", 0.7, 0.9, 40, 1.0, 2, 4,
                        api_name="/chat")
    updates = [out[0] for out in job]
    answers = [text_of(u[-1]) for u in updates if len(u) == 2]
    assert answers[-1].endswith("word39") and updates[-1][-1]["metadata"] is None
    assert len(set(answers)) >= 8, answers
    assert all(b.startswith(a) for a, b in zip(answers, answers[1:]))  # each step extends the one before


def test_regenerate_undo_and_clear(client):
    history = client.predict({"text": "Hello there", "files": []}, [], "internvl-demo", *SETTINGS, api_name="/chat")[0]
    again = client.predict(history, "internvl-demo", *SETTINGS, api_name="/regenerate")
    assert len(again) == 2 and text_of(again[1]).strip()
    rest, box = client.predict(again, api_name="/undo")
    assert rest == [] and box["text"] == "Hello there"
    assert client.predict(api_name="/clear")[0] == []


def test_unknown_model_gets_a_readable_error_and_the_chat_stays_usable(client):
    history = client.predict({"text": "hi", "files": []}, [], "no-such-model", *SETTINGS, api_name="/chat")[0]
    note = history[-1]
    assert note["metadata"]["title"].startswith("⚠") and "no-such-model" in text_of(note)
    assert "Pick a model that is served now" in text_of(note)
    history = client.predict({"text": "hi again", "files": []}, history, "internvl-demo", *SETTINGS,
                             api_name="/chat")[0]
    assert history[-1]["metadata"] is None and text_of(history[-1]).strip()


def test_cancelling_a_long_answer_aborts_it_on_the_worker(client, demo_ui_stack):
    def in_flight() -> int:
        return sum(w["in_flight"] for w in httpx.get(demo_ui_stack["controller"] + "/workers").json()["workers"])

    def answer() -> str:
        outputs = job.outputs()
        return text_of(outputs[-1][0][-1]) if outputs else ""

    job = client.submit({"text": "Tell me a long story", "files": []}, [], "internvl-scripted", "", 0.7, 0.9, 1024,
                        1.0, 2, 4, api_name="/chat")
    wait_until(lambda: len(answer()) >= 60, 30, "the long answer streaming", interval=0.1)
    assert in_flight() == 1
    job.cancel()
    # 1024 tokens at 40/s would take 25 s: within 10 s means the worker aborted it
    wait_until(lambda: in_flight() == 0, 10, "the worker ending the cancelled answer", interval=0.1,
               detail=lambda: str(httpx.get(demo_ui_stack["controller"] + "/workers").json()))
