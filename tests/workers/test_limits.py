"""Request limits, declared once (common/limits.py), advertised on the model card of a real worker and through the
controller, and errors that name the real cause: one file, or the conversation as a whole (issue 11: the 4th turn of
a chat with four photos that each pass the per-file limit failed with "use a smaller file")."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.support.media_samples import noise_png
from tests.support.stack import start_controller, start_worker

KB = 1024
LIMITS = dict(max_media_bytes=300 * KB, max_body_bytes=1000 * KB, max_image_pixels=2_000_000,
              max_images_per_request=5, max_video_seconds=30.0, max_video_frames=12, default_num_frames=4)
MODEL = "limits-demo"
CONTROLLER_BODY = 900 * KB  # lower than the worker's: the controller's card says so


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir, max_body_bytes=CONTROLLER_BODY)
    worker = None
    try:
        worker = start_worker(log_dir, demo_checkpoint, controller.url, engine="transformers", model_name=MODEL,
                              **LIMITS)
        yield controller.url, worker.url
    finally:
        if worker is not None:
            worker.stop()
        controller.stop()


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def chat(url: str, messages: list[dict], **extra) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": messages, "max_tokens": 2, **extra})


def test_limits_are_advertised_on_the_worker_and_through_the_controller(stack):
    controller, worker = stack
    for url, body in ((worker, LIMITS["max_body_bytes"]), (controller, CONTROLLER_BODY)):
        card = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]
        limits = card["limits"]
        assert {k: limits[k] for k in LIMITS} == LIMITS | {"max_body_bytes": body}, url
        assert limits["context_length"] == card["context_length"] > 0


def test_one_file_over_the_limit_is_named(stack):
    controller, _ = stack
    small, big = noise_png(100 * KB), noise_png(400 * KB)
    r = chat(controller, [{"role": "user", "content": [image_part(small), {"type": "text", "text": "a"}]},
                          {"role": "assistant", "content": "b"},
                          {"role": "user", "content": [image_part(big), {"type": "text", "text": "c"}]}])
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "upload_too_large"
    assert "image 2 (message 3)" in error["message"]
    assert "files of up to 0.3 MB each" in error["message"]


def test_a_conversation_over_the_body_limit_says_so_though_each_photo_passes(stack):
    """Four photos of ~200 KB each (under the 300 KB per file): the 4th turn carries all four, ~1.1 MB of base64,
    over the 900 KB body limit. The error must name the conversation, not a file."""
    controller, _ = stack
    photo = noise_png(200 * KB)
    assert len(photo) < LIMITS["max_media_bytes"]
    messages: list[dict] = []
    for turn in range(4):
        messages.append({"role": "user", "content": [image_part(photo), {"type": "text", "text": f"photo {turn}"}]})
        r = chat(controller, messages)
        if turn < 3:
            assert r.status_code == 200, (turn, r.text)
            messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"] or "ok"})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "request_too_large"
    assert "whole conversation" in error["message"] and "start a new conversation" in error["message"]
    assert "the request is 1.1 MB, over the 0.9 MB this server takes per request" in error["message"]


def test_too_many_files_and_too_many_frames_name_the_conversation_and_the_video(stack):
    controller, _ = stack
    tiny = noise_png(2 * KB)
    r = chat(controller, [{"role": "user", "content": [image_part(tiny)] * 6 + [{"type": "text", "text": "?"}]}])
    assert r.status_code == 400 and "conversation as a whole has 6 images" in r.json()["error"]["message"]
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA", "num_frames": 13}}
    r = chat(controller, [{"role": "user", "content": [video, {"type": "text", "text": "?"}]}])
    assert r.status_code == 400, r.text
    assert "video in message 1 asks for 13 frames" in r.json()["error"]["message"]
