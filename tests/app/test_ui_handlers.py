"""Unit tests of the web UI's event handlers and helpers. The controller is replaced by a scripted stream source
(this tests the layer above it); the real controller is used in test_ui_client.py and test_ui_browser.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image

from app.client import ControllerClient
from app.grounding import SCALE, draw_boxes, parse_boxes
from app.messages import from_display, message_text, to_display, to_openai_messages
from app.models_panel import describe_model
from common.errors import ErrorCode, ServingError
from tests.support.ui_handlers import PARAMS, SETTINGS, ScriptedStream, image_file, log_lines, make, run


# ------------------------------------------------------------------------------------------------ messages


@pytest.mark.parametrize("text", ["<b>bold</b> & <script>alert(1)</script>", "x < y and `a<b` and $a<b$",
                                  "```html\n<i>code</i>\n```\n<u>u</u>", "&lt; stays literal", "\\(x<1\\) \\[y>2\\]"])
def test_display_escaping_shows_html_as_text_and_round_trips(text):
    shown = to_display(text)
    assert from_display(shown) == text
    outside_code = shown.split("```")[0].split("`")[0]
    assert "<" not in outside_code.replace("$a<b$", "").replace("\\(x<1\\)", "")


def test_history_becomes_openai_messages_with_every_image_and_video_in_order(tmp_path):
    img1, img2 = image_file(tmp_path, "a.png"), image_file(tmp_path, "b.jpg", (0, 0, 255))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": img1}}, {"type": "text", "text": "1 &lt; 2?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
        {"role": "assistant", "content": [{"type": "file", "file": {"path": img1}}],
         "metadata": {"title": "Boxes: cat", "id": "grounding"}},
        {"role": "user", "content": [{"type": "text", "text": "this one fails"}]},
        {"role": "assistant", "content": "no worker", "metadata": {"title": "x", "id": "error"}},
        {"role": "user", "content": [{"type": "file", "file": {"path": img2}}, {"type": "file", "file": {"path": str(video)}},
                                     {"type": "text", "text": "compare"}]},
    ]
    msgs = to_openai_messages(history, "Be brief.", num_frames=6, max_bytes=2**20)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"][1] == {"type": "text", "text": "1 < 2?"}
    sent = base64.b64decode(msgs[1]["content"][0]["image_url"]["url"].split(",", 1)[1])
    assert sent == Path(img1).read_bytes()
    last = msgs[3]["content"]
    assert [p["type"] for p in last] == ["image_url", "video_url", "text"]
    assert last[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert last[1]["video_url"]["num_frames"] == 6 and last[1]["video_url"]["url"].startswith("data:video/mp4")


def test_unsupported_file_is_refused_by_name_before_anything_is_sent(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hi")
    h = make(tmp_path, ScriptedStream(["x"]))
    # never raised (a raised error leaves the page locked): a toast, and nothing is added
    with pytest.warns(UserWarning, match="notes.txt"):
        assert h.add_user_message([], {"text": "read this", "files": [str(bad)]}) is None
    with pytest.warns(UserWarning, match="Type a message"):
        assert h.add_user_message([], {"text": "  ", "files": []}) is None


async def test_empty_or_too_large_file_becomes_an_error_note_naming_it(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    big = image_file(tmp_path, "big.png")
    Path(big).write_bytes(b"\x89PNG" + b"\x00" * (2 * 2**20))
    source = ScriptedStream(["never"])
    h = make(tmp_path, source)
    for path, words in ((empty, "'empty.png' in your 1st message is empty"),
                        (big, "'big.png' in your 1st message is 2.0 MB")):
        history, _ = h.add_user_message([], {"text": "look", "files": [str(path)]})
        final = (await run(h.stream_reply(history, SETTINGS)))[-1]
        assert words in final[-1]["content"] and final[-1]["metadata"]["id"] == "error"
    assert source.payloads == []


# ------------------------------------------------------------------------------------------------ streaming


async def test_answer_streams_token_by_token_and_the_turn_is_logged_with_media_once(tmp_path):
    img = image_file(tmp_path)
    source = ScriptedStream(["A red ", "square", "."])
    h = make(tmp_path, source)
    history, box = h.add_user_message([], {"text": "What is <this>?", "files": [img]})
    assert box == {"text": "", "files": []}
    yields = await run(h.stream_reply(history, SETTINGS))
    texts = [message_text(y[-1]) for y in yields]
    assert texts[0] == "A red " and texts[-1] == "A red square."  # first delta at once, the rest joined
    payload = source.payloads[0]
    assert payload["model"] == "internvl-demo" and payload["max_tiles"] == 4 and payload["num_frames"] == 6
    assert payload["messages"][1]["content"][1]["text"] == "What is <this>?"

    history = yields[-1]
    history, _ = h.add_user_message(history, {"text": "again", "files": [img]})
    await run(h.stream_reply(history, SETTINGS))
    turns = [r for r in log_lines(tmp_path) if r["type"] == "turn"]
    assert [t["turn"] for t in turns] == [1, 2]
    assert turns[0]["answer"] == "A red square." and turns[0]["worker"] == "worker-test"
    assert turns[0]["params"]["temperature"] == 0.5 and turns[0]["outcome"] == "ok"
    assert turns[0]["first_token_s"] is not None and turns[0]["total_s"] >= turns[0]["first_token_s"]
    media = list((tmp_path / "logs" / "media").iterdir())
    assert len(media) == 1 and media[0].read_bytes() == Path(img).read_bytes()
    assert turns[1]["messages"][1]["content"][0]["media"] == media[0].name
    # One session id per chat: its turns stay on one worker; another chat has its own.
    history, _ = h.add_user_message([], {"text": "another chat", "files": [img]})
    await run(h.stream_reply(history, SETTINGS))
    first, second, other = source.session_ids
    assert first and first == second and other and other != first


async def test_a_waiting_turn_shows_its_place_in_line_then_the_answer(tmp_path):
    source = ScriptedStream(["Here", " it is."])
    source.wait_s, source.places = 0.5, [(3, 4), (2, 4), (1, 3)]
    h = make(tmp_path, source)
    h.place_poll_s = 0.1
    history, _ = h.add_user_message([], {"text": "hello", "files": []})
    yields = await run(h.stream_reply(history, SETTINGS))
    waiting = [y[-1]["content"] for y in yields if y[-1].get("metadata", {}).get("id") == "waiting"]
    assert waiting[:3] == [f"Waiting for a free worker, {n} in line." for n in ("3rd", "2nd", "1st")]
    assert yields[-1][-1] == {"role": "assistant", "content": {"type": "text", "text": "Here it is."}}  # the answer replaced the place
    assert all(y[:-1] == history for y in yields if y[-1].get("metadata"))  # never kept in the history
    assert set(source.asked_places) == {source.request_ids[0]}  # asked by the id the request was sent with
    assert not any("could not" in str(y).lower() for y in yields)  # a wait that ends in an answer is no error


async def test_logging_switched_off_writes_nothing(tmp_path):
    h = make(tmp_path, ScriptedStream(["ok"]), logging=False)
    history, _ = h.add_user_message([], {"text": "hi", "files": [image_file(tmp_path)]})
    await run(h.stream_reply(history, SETTINGS))
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("code, advice", [(ErrorCode.NO_WORKER, "start a worker"),
                                          (ErrorCode.CONTEXT_TOO_LONG, "Start a new chat"),
                                          (ErrorCode.INVALID_IMAGE, "remove that image")])
async def test_errors_say_what_to_do_and_the_chat_stays_usable(tmp_path, code, advice):
    source = ScriptedStream([], error=ServingError(code, "the server's own words"))
    h = make(tmp_path, source)
    history, _ = h.add_user_message([], {"text": "first", "files": []})
    final = (await run(h.stream_reply(history, SETTINGS)))[-1]
    note = final[-1]
    assert note["metadata"]["id"] == "error" and "The server's own words" in note["content"]
    assert advice in note["content"]
    source.error = None
    source.deltas = ["fine"]
    history, _ = h.add_user_message(final, {"text": "second", "files": []})
    final = (await run(h.stream_reply(history, SETTINGS)))[-1]
    assert message_text(final[-1]) == "fine"
    sent = source.payloads[-1]["messages"]
    assert [m["content"][-1]["text"] for m in sent if m["role"] == "user"] == ["second"]


@pytest.mark.parametrize("param, words", [
    ("messages[1].content[1]", "'dog.png' in your 1st message: image 2 (message 2) is odd"),  # after the system prompt
    ("messages[1]", "Your 1st message: image 2 (message 2) is odd"),
    ("model", "Image 2 (message 2) is odd"),  # not a place in the conversation: the server's words alone
])
async def test_the_param_of_an_error_names_the_file_or_message_in_the_readers_words(tmp_path, param, words):
    source = ScriptedStream([], error=ServingError(ErrorCode.INVALID_IMAGE, "image 2 (message 2) is odd", param=param))
    h = make(tmp_path, source)
    history, _ = h.add_user_message([], {"text": "two", "files": [image_file(tmp_path), image_file(tmp_path,
                                                                                                   "dog.png")]})
    note = (await run(h.stream_reply(history, SETTINGS)))[-1][-1]
    assert note["metadata"]["id"] == "error" and note["content"].startswith(words), note["content"]


async def test_mid_stream_error_keeps_the_partial_answer_and_adds_a_note(tmp_path):
    h = make(tmp_path, ScriptedStream(["half an ", "answer"], error=ServingError(ErrorCode.WORKER_LOST, "worker died")))
    history, _ = h.add_user_message([], {"text": "go", "files": []})
    final = (await run(h.stream_reply(history, SETTINGS)))[-1]
    assert message_text(final[-2]) == "half an answer" and "Regenerate" in final[-1]["content"]
    assert log_lines(tmp_path)[0]["outcome"] == ErrorCode.WORKER_LOST.value


async def test_stop_cancels_the_stream_closes_it_and_logs_the_turn_as_stopped(tmp_path):
    source = ScriptedStream(["one ", "two ", "three"], block_after=2)
    h = make(tmp_path, source)
    history, _ = h.add_user_message([], {"text": "long story", "files": []})
    seen = []

    async def consume():
        async for y in h.stream_reply(history, SETTINGS):
            seen.append(message_text(y[-1]))

    task = asyncio.create_task(consume())
    while not seen or seen[-1] != "one two ":  # the two quick deltas arrive joined (app/coalesce.py)
        await asyncio.sleep(0.01)
    task.cancel()  # what Gradio's cancels= does to the running event
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed.is_set() and seen[-1] == "one two "
    assert log_lines(tmp_path)[0]["outcome"] == "stopped"


# ------------------------------------------------------------------------------------------------ buttons


async def test_regenerate_undo_clear_and_votes(tmp_path):
    img = image_file(tmp_path)
    source = ScriptedStream(["first answer"])
    h = make(tmp_path, source)
    history, _ = h.add_user_message([], {"text": "a <tag>", "files": [img]})
    history = (await run(h.stream_reply(history, SETTINGS)))[-1]
    source.deltas = ["second answer"]
    regen = await run(h.regenerate_chat(history, *PARAMS))
    assert regen[0] == history[:1] and message_text(regen[-1][-1]) == "second answer"
    assert source.payloads[0]["messages"] == source.payloads[1]["messages"]

    rest, box = h.undo(regen[-1])
    assert rest == [] and box == {"text": "a <tag>", "files": [img]}
    with pytest.warns(UserWarning, match="no message to answer again"):
        assert await run(h.regenerate_chat([], *PARAMS)) == [[]]
    assert h.clear() == ([], {"text": "", "files": []})

    h.vote(regen[-1], gr.LikeData(None, {"index": 1, "value": "second answer", "liked": False}))
    vote = [r for r in log_lines(tmp_path) if r["type"] == "vote"][0]
    assert vote["vote"] == "dislike" and vote["turn"] == 1 and vote["answer"] == "second answer"


# ------------------------------------------------------------------------------------------------ grounding


def test_grounding_boxes_are_parsed_without_eval_and_drawn_where_they_belong(tmp_path):
    text = ("<ref>cat</ref><box>[[100, 200, 500, 600]]</box> and <ref>dogs</ref><box>[[0,0,50,50], [900,900,1200,950]]"
            "</box> <box>[[__import__('os').system('x'), 1, 2, 3]]</box> <ref>bad</ref><box>[[5,5,5,9]]</box>")
    boxes = parse_boxes(text)
    assert [(b.label, b.x1, b.y2) for b in boxes] == [("cat", 100, 600), ("dogs", 0, 50), ("dogs", 900, 950)]
    assert boxes[2].x2 == SCALE  # clamped
    src = image_file(tmp_path, "grey.png", (128, 128, 128), (400, 300))
    out = Image.open(draw_boxes(src, boxes[:1], tmp_path / "out.png")).convert("RGB")
    w, h = out.size
    x1, y1, x2, y2 = (round(v / SCALE * s) for v, s in zip((100, 200, 500, 600), (w, h, w, h)))
    assert out.getpixel((x1 + 1, (y1 + y2) // 2)) != (128, 128, 128)  # left edge drawn
    assert out.getpixel((x2 - 1, (y1 + y2) // 2)) != (128, 128, 128)  # right edge drawn
    assert out.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == (128, 128, 128)  # inside untouched
    assert out.getpixel((w - 5, h - 5)) == (128, 128, 128)


async def test_grounding_answer_shows_the_image_again_with_boxes(tmp_path):
    img = image_file(tmp_path, size=(200, 200))
    h = make(tmp_path, ScriptedStream(["<ref>sun</ref>", "<box>[[700, 80, 900, 290]]</box>"]))
    history, _ = h.add_user_message([], {"text": "where is the sun?", "files": [img]})
    final = (await run(h.stream_reply(history, SETTINGS)))[-1]
    preview = final[-1]
    assert preview["metadata"] == {"title": "Boxes: sun", "id": "grounding"}
    assert Image.open(preview["content"][0]["file"]["path"]).size == (200, 200)
    assert message_text(final[-2]) == to_display("<ref>sun</ref><box>[[700, 80, 900, 290]]</box>")


# ------------------------------------------------------------------------------------------------ models, client


def test_model_panel_names_workers_and_flags_random_weights():
    cards = [{"id": "internvl-demo", "random_weights": True, "family": "internvl", "engine": "transformers",
              "context_length": 4096, "workers": [{"id": "w1", "healthy": True, "in_flight": 2},
                                                  {"id": "w2", "healthy": True, "in_flight": 0, "benched_for_s": 12.4}]},
             {"id": "real", "random_weights": False, "family": None, "engine": None, "context_length": None,
              "workers": []}]
    info, status = describe_model(cards, "internvl-demo", None)
    assert "random weights" in status and "`w1` up, 2 busy" in info and "context 4096 tokens" in info
    assert "`w2` benched (failing; retried in 12 s), 0 busy" in info
    assert describe_model(cards, "real", None)[1] == ""
    assert "Start a worker" in describe_model([], None, None)[0]
    assert "演示模型" in describe_model(cards, "internvl-demo", None, "zh-Hans")[1]
    assert "在線" in describe_model(cards, "internvl-demo", None, "zh-Hant")[0]
    assert "no longer served" in describe_model(cards, "gone", None)[1]


async def test_client_turns_http_and_mid_stream_error_bodies_into_serving_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["model"] == "missing":
            return httpx.Response(404, json={"error": {"message": "model 'missing' is not served here",
                                                       "code": "model_not_found", "type": "x", "param": "model"}})
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
        body = (f"data: {json.dumps(chunk)}\n\n"
                'data: {"error": {"message": "worker w1 failed", "code": "worker_lost"}}\n\ndata: [DONE]\n\n')
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream", "x-worker-id": "w1"})

    client = ControllerClient("http://controller", transport=httpx.MockTransport(handler))
    got = []
    with pytest.raises(ServingError) as err:
        async for d in client.stream_chat({"model": "m", "messages": []}):
            got.append(d)
    assert got == ["Hel"] and err.value.code == ErrorCode.WORKER_LOST and "w1 failed" in err.value.message
    with pytest.raises(ServingError) as err:
        async for _ in client.stream_chat({"model": "missing", "messages": []}):
            pass
    assert err.value.code == ErrorCode.MODEL_NOT_FOUND
    await client.aclose()


async def test_client_says_how_to_start_the_controller_when_it_is_down():
    client = ControllerClient("http://127.0.0.1:9", connect_timeout_s=1)
    with pytest.raises(ServingError) as err:
        await client.models()
    assert err.value.code == ErrorCode.NO_WORKER and "python -m controller" in err.value.message
    await client.aclose()


async def test_coalesce_sends_the_first_delta_at_once_and_joins_fast_ones():
    async def deltas(gaps):
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield f"w{i} "

    from app.coalesce import coalesce

    fast = [d async for d in coalesce(deltas([0] + [0.001] * 20))]
    assert fast[0] == "w0 " and len(fast) < 5 and "".join(fast) == "".join(f"w{i} " for i in range(21))
    slow = [d async for d in coalesce(deltas([0] + [0.08] * 3))]
    assert slow == ["w0 ", "w1 ", "w2 ", "w3 "]  # slower than the interval: every delta goes out by itself
    seen, started = [], asyncio.get_running_loop().time()
    async for d in coalesce(deltas([0, 0.001, 1.0])):  # the model pauses after two quick deltas
        seen.append((d, asyncio.get_running_loop().time() - started))
    assert seen[1][0] == "w1 " and seen[1][1] < 0.5  # not held until the pause ends


def test_preflight_names_the_file_and_message_in_the_readers_words(tmp_path):
    from app.limits import check_conversation, served_limits
    from common.protocol import ModelCard
    from common.protocol import ModelLimits as Limits

    small, wide = image_file(tmp_path, "small.png"), image_file(tmp_path, "wide.png", size=(400, 300))
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": small}}, {"type": "text", "text": "a"}]},
               {"role": "assistant", "content": "ok"},
               {"role": "user", "content": [{"type": "file", "file": {"path": wide}}, {"type": "text", "text": "b"}]}]
    with pytest.raises(ServingError, match="'wide.png' in your 2nd message is 400×300 pixels"):
        check_conversation(history, Limits(max_image_pixels=100_000), 2**20)
    with pytest.raises(ServingError, match="最多接受 1 个"):
        check_conversation(history, Limits(max_images_per_request=1), 2**20, "zh-Hans")
    assert len(check_conversation(history, Limits(), 2**20)) == 2
    advertised = served_limits(ModelCard.model_validate({"id": "m", "context_length": 8192,
                                                         "limits": {"max_images_per_request": 4}}))
    assert advertised.context_length == 8192 and advertised.max_images_per_request == 4
    assert served_limits(None) == Limits()


# -- the UI's disk (issue 22, item 3) -------------------------------------------------------------------------------

async def test_a_refused_message_is_logged_as_what_was_refused_not_in_full(tmp_path):
    """A 1 MB paste refused as too long is logged as its size, the reason and its first characters."""
    h = make(tmp_path, ScriptedStream([], error=ServingError(ErrorCode.CONTEXT_TOO_LONG, "needs 300000 tokens")))
    pasted = "START " + "lorem ipsum " * 90_000
    history, _ = h.add_user_message([], {"text": pasted, "files": [image_file(tmp_path)]})
    await run(h.stream_reply(history, SETTINGS))
    [line] = log_lines(tmp_path)
    assert line["outcome"] == "context_length_exceeded" and "messages" not in line
    refused = line["refused"]
    assert refused["message"] == "needs 300000 tokens" and refused["files"] == 1
    assert refused["text_chars"] >= len(pasted) and refused["excerpt"].startswith("START lorem")
    assert sum(f.stat().st_size for f in (tmp_path / "logs").rglob("*") if f.is_file()) < 4096  # no media either
