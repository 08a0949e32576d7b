"""The UI checks uploads against the limits the served model advertises (its card's `limits`), through a real
controller and a real worker (scripted engine, real preprocessing), and names the real cause: this file, or the
conversation as a whole. Reproduces issue 11: a file under the UI's 50 MB but over the worker's per-file limit was
uploaded and refused by the worker under another name; the 4th turn of a chat with four photos, each under the
per-file limit, failed with "use a smaller file" when the cause is the history."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.client import ControllerClient
from app.conversation_log import ConversationLog
from app.generation import GenerationSettings
from app.handlers import ChatHandlers
from app.settings import UISettings
from tests.support.media_samples import encode, gradient, noise_png
from tests.support.stack import SCRIPTED, start_controller, start_worker

KB = 1024
MODEL = "ui-limits"


@pytest.fixture(scope="module")
def controller_url(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = None
    try:
        worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name=MODEL,
                              max_media_bytes=300 * KB, max_body_bytes=1000 * KB, env={"SCRIPTED_TOKENS": "3"})
        yield controller.url
    finally:
        if worker is not None:
            worker.stop()
        controller.stop()


@pytest.fixture
async def handlers(controller_url, tmp_path):
    settings = UISettings(log_dir=tmp_path / "logs", logging=False)  # the UI's own ceiling: 50 MB per file
    client = ControllerClient(controller_url)
    yield ChatHandlers(settings, client, ConversationLog(settings.log_dir, False), work_dir=tmp_path / "work")
    await client.aclose()


SETTINGS = GenerationSettings(MODEL, "", 0.0, 0.9, 16, 1.0, 2, 4)


async def turn(h: ChatHandlers, history: list, text: str, files: list[str]) -> list:
    history, _ = h.add_user_message(history, {"text": text, "files": files})
    return [y async for y in h.stream_reply(history, SETTINGS)][-1]


async def test_a_file_over_the_advertised_limit_is_refused_by_name_before_upload(handlers, tmp_path):
    clip = tmp_path / "holiday.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * (400 * KB))  # under the UI's 50 MB, over 300 KB
    final = await turn(handlers, [], "what happens?", [str(clip)])
    note = final[-1]
    assert note["metadata"]["id"] == "error", note
    assert "'holiday.mp4' in your 1st message is 0.4 MB" in note["content"]
    assert "at most 0.3 MB per file" in note["content"]
    assert handlers.encoded.misses == 0  # refused from its size alone: never read nor encoded


async def test_the_fourth_photo_turn_names_the_conversation_not_a_file(handlers, tmp_path):
    history: list = []
    for k in range(4):
        photo = tmp_path / f"photo{k}.png"
        photo.write_bytes(noise_png(200 * KB))  # each under the 300 KB per file; four are over 1000 KB as sent
        history = await turn(handlers, history, f"photo {k}?", [str(photo)])
        if k < 3:
            assert "metadata" not in history[-1], history[-1]
    note = history[-1]
    assert note["metadata"]["id"] == "error"
    assert "conversation as a whole" in note["content"] and "4 files" in note["content"]
    assert "press Clear to start a new chat" in note["content"]
    assert "use a smaller or shorter file" not in note["content"]
    # Earlier photos were not re-encoded on later turns (each photo encoded once), and the 4th turn was refused from
    # file sizes alone, before anything of it was read or encoded.
    assert (handlers.encoded.misses, handlers.encoded.hits) == (3, 1 + 2)


async def test_a_file_the_worker_refuses_is_named_from_the_errors_param(handlers, tmp_path):
    """The UI's header check passes a cut-off PNG; the worker's decoder refuses it. The note names the file from the
    error's `param` (its place in the request the UI built), not from the worker's wording, which it keeps."""
    good, cut = tmp_path / "good.png", tmp_path / "cut.png"
    good.write_bytes(noise_png(2 * KB))
    cut.write_bytes(encode(gradient())[:200])
    history = await turn(handlers, [], "first?", [str(good)])
    assert "metadata" not in history[-1], history[-1]
    history = await turn(handlers, history, "second?", [str(good), str(cut)])
    note = history[-1]
    assert note["metadata"]["id"] == "error", note
    assert note["content"].startswith("'cut.png' in your 2nd message: image 3 (message 3)"), note["content"]


def _models_requests(url: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "internvl_http_requests_total" and s.labels.get("route") == "/v1/models")


async def test_the_limits_are_the_cards_and_a_turn_does_not_fetch_them_again(controller_url):
    # Each fetch is a round trip to the controller before the first token: at most one per TTL, not one per turn
    # (there were two per turn).
    from app.limits import ServedLimits
    from common.protocol import ModelLimits as Limits

    client = ControllerClient(controller_url)
    try:
        before = _models_requests(controller_url)
        served = ServedLimits(client, ttl_s=60)
        for _ in range(3):
            limits = await served.get(MODEL)
            assert limits.max_media_bytes == 300 * KB and limits.max_body_bytes == 1000 * KB
        assert await served.get("not-served") == Limits()
        assert _models_requests(controller_url) - before == 1
        fresh = ServedLimits(client, ttl_s=0)
        await fresh.get(MODEL)
        await fresh.get(MODEL)
        assert _models_requests(controller_url) - before == 3
    finally:
        await client.aclose()
    gone = ServedLimits(ControllerClient("http://127.0.0.1:9"))  # nothing listens: the defaults, no raise
    assert await gone.get(MODEL) == Limits()


async def test_the_cards_are_fetched_again_once_the_ttl_has_passed(controller_url):
    # The cache is cachetools' TTLCache: one entry (the whole card list, for every model), gone after `ttl_s`.
    import time

    from app.limits import ServedLimits

    client = ControllerClient(controller_url)
    try:
        served = ServedLimits(client, ttl_s=0.5)
        before = _models_requests(controller_url)
        fetched_at = time.monotonic()
        await served.get(MODEL)
        await served.get("not-served")
        assert _models_requests(controller_url) - before == 1
        deadline = time.monotonic() + 10
        while _models_requests(controller_url) - before == 1 and time.monotonic() < deadline:
            await served.get(MODEL)
        assert _models_requests(controller_url) - before == 2
        assert time.monotonic() - fetched_at >= 0.5  # not before the TTL passed
        assert len(served._cards) == 1  # bounded: one card list, whatever the models asked for
        assert (await served.get(MODEL)).max_media_bytes == 300 * KB
    finally:
        await client.aclose()
