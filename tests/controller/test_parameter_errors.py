"""Malformed parameters (issue 15, item 5) through a real controller and worker on loopback: each is a 400 that names
the field, refused before any worker or connection is involved, and values sent by the client come back only as a
short excerpt."""

from __future__ import annotations

import httpx
import pytest

from tests.support.stack import SCRIPTED, start_controller, start_worker

MODEL = "scripted"


@pytest.fixture(scope="module")
def standalone_worker(demo_checkpoint, log_dir):
    worker = start_worker(log_dir, demo_checkpoint, None, SCRIPTED, model_name=MODEL)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, SCRIPTED, model_name=MODEL,
                          allow_remote_media=True)
    try:
        yield controller, worker
    finally:
        worker.stop()
        controller.stop()


def chat(content="hi", **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}


def image(url: str) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is it?"}]


CASES = {
    "seed-2^70": (chat(seed=2**70), "seed"),
    "seed-below-int64": (chat(seed=-(2**63) - 1), "seed"),  # OpenAI takes any 64-bit seed, negative ones too
    "port-99999": (chat(image("http://example.com:99999/cat.png")), "url"),
    "port-not-a-number": (chat(image("http://example.com:http/cat.png")), "url"),
    "control-character": (chat(image("http://example.com/c\x01at.png")), "url"),
    "newline-in-url": (chat(image("http://example.com/cat.png\r\nX-Evil: 1")), "url"),
    "no-host": (chat(image("http:///cat.png")), "url"),
    "video-port": (chat([{"type": "video_url", "video_url": {"url": "https://example.com:70000/v.mp4"}},
                         {"type": "text", "text": "?"}]), "url"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_malformed_parameter_is_a_400_naming_the_field(stack, case):
    controller, _ = stack
    body, field = CASES[case]
    r = httpx.post(controller.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"].endswith(field) and field in error["message"]


def test_largest_seed_is_accepted(stack):
    controller, _ = stack
    assert httpx.post(controller.url + "/v1/chat/completions", json=chat(seed=2**63 - 1), timeout=30).status_code == 200


@pytest.mark.parametrize("target", ["controller", "worker"])
def test_echoed_values_are_cut_to_an_excerpt(request, target):
    url = request.getfixturevalue("stack")[0].url if target == "controller" else \
        request.getfixturevalue("standalone_worker").url
    huge = "m" * 1_000_000
    r = httpx.post(url + "/v1/chat/completions", json=chat() | {"model": huge}, timeout=30)
    assert r.status_code == 404
    error = r.json()["error"]
    assert len(error["message"]) < 300 and "1000000 characters" in error["message"]
    r = httpx.post(url + "/v1/chat/completions", json=chat() | {huge: 1}, timeout=30)
    assert r.status_code == 400 and len(r.text) < 1000
