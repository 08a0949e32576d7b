"""gradio_client drives whole conversations (issue 12 item 5): the history /chat returns goes back unchanged, with
its images, to /chat, /regenerate and /undo; outputs are named; the API description lists the served models."""

from __future__ import annotations

import pytest

from tests.support.stack import EXAMPLES

SETTINGS = ("", 0.7, 0.9, 32, 1.05, 2, 4)  # system prompt, temperature, top_p, max tokens, rep. penalty, tiles, frames


@pytest.fixture()
def client(ui_stack):
    from gradio_client import Client

    # download_files=False: files in the returned history stay references to the server's copies, so the history
    # can be sent back as it is (a downloaded copy would be a path on this machine)
    return Client(ui_stack["url"] + "/", verbose=False, download_files=False)


def text_of(message: dict) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")


def test_a_three_turn_image_conversation_continues_with_the_returned_history(client):
    from gradio_client import handle_file

    history, box = client.predict({"text": "What is this?", "files": [handle_file(str(EXAMPLES / "landscape.jpg"))]},
                                  [], "internvl-fast", *SETTINGS, api_name="/chat")
    assert text_of(history[-1]).startswith("I see 1 image.")
    history, _ = client.predict({"text": "And this one?", "files": [handle_file(str(EXAMPLES / "chart.png"))]},
                                history, "internvl-fast", *SETTINGS, api_name="/chat")
    assert text_of(history[-1]).startswith("I see 2 images.")  # the first image went back with the history
    history, _ = client.predict({"text": "Compare them.", "files": []}, history, "internvl-fast", *SETTINGS,
                                api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant"] * 3
    assert text_of(history[-1]).startswith("I see 2 images.")
    assert [p["type"] for p in history[0]["content"]] == ["file", "text"]

    again = client.predict(history, "internvl-fast", *SETTINGS, api_name="/regenerate")
    assert len(again) == 6 and text_of(again[-1]).startswith("I see 2 images.")
    rest, box = client.predict(again, api_name="/undo")
    assert len(rest) == 4 and box["text"] == "Compare them."


def test_api_description_names_outputs_and_lists_the_models(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    chat = api["/chat"]
    assert [r["label"] for r in chat["returns"]] == ["history", "message"]
    model = next(p for p in chat["parameters"] if p["parameter_name"] == "model")
    assert {"internvl-fast", "internvl-slow"} <= set(model["type"].get("enum", []) or
                                                      model["python_type"]["type"].split("'")[1::2])
    assert "/stop" not in api  # a client stops an answer with job.cancel()


def test_bad_input_through_the_api_is_an_answer_not_an_exception(client):
    history, box = client.predict({"text": "   ", "files": []}, [], "internvl-fast", *SETTINGS, api_name="/chat")
    assert history == []
    assert client.predict([], "internvl-fast", *SETTINGS, api_name="/regenerate") == []


def test_an_avif_photo_is_accepted_and_reaches_the_model(client, tmp_path):
    """The UI takes every image type the worker decodes (one list: common/media_types.py); .avif was refused."""
    from gradio_client import handle_file
    from PIL import Image

    photo = tmp_path / "photo.avif"
    Image.open(EXAMPLES / "landscape.jpg").convert("RGB").save(photo, "AVIF")
    history, _ = client.predict({"text": "What is this?", "files": [handle_file(str(photo))]}, [], "internvl-fast",
                                *SETTINGS, api_name="/chat")
    assert text_of(history[-1]).startswith("I see 1 image."), history[-1]


def test_a_queued_turn_shows_its_place_then_answers(client, ui_stack):
    """Every slot of the slow model's worker taken (8 held streams): a turn waits in the controller's line, the UI
    says where it is, and once a slot frees it answers, with no error on the way."""
    import time

    import httpx

    from tests.support.chat_http import HeldStream, body

    ctl = ui_stack["controller"].url
    with httpx.Client(timeout=30) as http:
        held = [HeldStream(http, ctl, body("internvl-slow", f"hold {i}", 2000, stream=True)) for i in range(8)]
        try:
            job = client.submit({"text": "Are you there?", "files": []}, [], "internvl-slow", *SETTINGS,
                                api_name="/chat")
            deadline = time.monotonic() + 20
            while not any(text_of(out[0][-1]) == "Waiting for a free worker, 1st in line."
                          for out in job.outputs() if out[0]):
                assert time.monotonic() < deadline, [o[0][-1] for o in job.outputs() if o[0]]
                time.sleep(0.1)
            held.pop().close()  # a slot frees: the waiting turn gets it
            while not any(text_of(out[0][-1]).startswith("I see 0 images.") for out in job.outputs() if out[0]):
                assert time.monotonic() < deadline, job.outputs()[-1:]
                time.sleep(0.1)
            shown = [text_of(out[0][-1]) for out in job.outputs() if out[0]]
            assert not any("could not answer" in t.lower() or "⚠" in t for t in shown), shown
            job.cancel()
        finally:
            for h in held:
                h.close()


def test_an_answer_laid_out_with_tabs_and_indents_is_shown_and_sent_back_to_the_model_as_generated(client, ui_stack):
    import json

    from app.messages import from_display
    from tests.support.scripted_engine import CODE_ANSWER

    answer = "".join(CODE_ANSWER)
    history, _ = client.predict({"text": "Show me code scripted:code", "files": []}, [], "internvl-fast", *SETTINGS,
                                api_name="/chat")
    assert from_display(text_of(history[-1])) == answer  # not re-indented, its tab not turned into spaces
    history, _ = client.predict({"text": "Thanks, and now? scripted:code", "files": []}, history, "internvl-fast",
                                *SETTINGS, api_name="/chat")
    logs = ui_stack["conversations"]
    turns = [json.loads(line) for f in logs.glob("*.jsonl") for line in f.read_text().splitlines()]
    second = [t for t in turns if t["type"] == "turn" and t["turn"] == 2 and "Thanks, and now?" in json.dumps(t)][-1]
    sent = second["messages"][1]  # the first answer, as the model got it back in the conversation
    assert sent["role"] == "assistant" and sent["content"] == [{"type": "text", "text": answer}]
