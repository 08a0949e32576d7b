"""Malformed parameters (issue 15, item 5) through a real controller and worker on loopback: each is a 400 that names
the field, refused before any worker or connection is involved, and values sent by the client come back only as a
short excerpt."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.chat_http import body
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
    return body(**{"model": MODEL, "max_tokens": 2, **fields}, content=content)


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


# -- numbers JSON has no room for, and bodies not in UTF-8 (issue 22, item 6) ------------------------------------------

NOT_FINITE = {"temperature-NaN": ("temperature", "NaN"), "temperature-Infinity": ("temperature", "Infinity"),
              "top_p--Infinity": ("top_p", "-Infinity"), "temperature-1e309": ("temperature", "1e309"),
              "max_tokens-NaN": ("max_tokens", "NaN")}


@pytest.mark.parametrize("case", NOT_FINITE, ids=list(NOT_FINITE))
def test_not_finite_numbers_are_named_as_such(stack, case):
    controller, _ = stack
    field, literal = NOT_FINITE[case]
    sent = json.dumps(chat()).encode()[:-1] + f', "{field}": {literal}}}'.encode()  # json.dumps will not write it
    r = httpx.post(controller.url + "/v1/chat/completions", content=sent,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert f"{field}: must be a finite number" in message and "<=" not in message, message


def test_a_utf8_byte_order_mark_is_accepted(stack, standalone_worker):
    for url in (stack[0].url, standalone_worker.url):
        r = httpx.post(url + "/v1/chat/completions", content=b"\xef\xbb\xbf" + json.dumps(chat()).encode(),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]


ENCODED = {"utf-16": (json.dumps(chat()).encode("utf-16"), "UTF-16"),
           "utf-16-no-mark": (json.dumps(chat()).encode("utf-16-le"), "UTF-16"),
           "utf-32": (json.dumps(chat()).encode("utf-32"), "UTF-32"),
           "latin-1": (json.dumps(chat("café"), ensure_ascii=False).encode("latin-1"), "not valid UTF-8")}


@pytest.mark.parametrize("case", ENCODED, ids=list(ENCODED))
def test_bodies_not_in_utf8_are_named(stack, standalone_worker, case):
    body, named = ENCODED[case]
    for url in (stack[0].url, standalone_worker.url):
        r = httpx.post(url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_json" and named in error["message"], error
