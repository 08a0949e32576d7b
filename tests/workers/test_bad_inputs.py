"""Bad inputs through the public APIs: the controller's OpenAI-compatible API, and the web UI's `/chat` API (driven
with gradio_client), both in front of one worker running the real transformers engine on the demo checkpoint (so
decoding, tiling, templating and the context check are the product's own code).

Every case gets either a clear 4xx (in the UI: an error note) whose message names the problem, or, for unusual but
valid media, a normal answer that really used the media (more prompt tokens than the same request without it).
After every case the worker must still serve a normal request. Media are made on the spot (tests/support/
media_samples.py, PIL and PyAV).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.support.chat_http import body
from tests.support.media_samples import (animated_gif, encode, gradient, jpeg_exif_rotated, noise_png, png_16bit,
                                         png_alpha, png_bomb, png_palette_transparent)
from tests.support.stack import ROOT, free_port, start_controller, start_worker
from tests.support.video_samples import gradient_video

MAX_MEDIA_BYTES = 1024 * 1024  # small limits, so "too large" cases stay cheap
MAX_BODY_BYTES = 4 * 1024 * 1024
MODEL = "demo"


@pytest.fixture(scope="module")
def servers(demo_checkpoint, log_dir):
    """controller + transformers worker + UI process; the UI's (seconds-long) start overlaps the worker's."""
    procs = []
    try:
        ctl = start_controller(log_dir, max_body_bytes=MAX_BODY_BYTES)
        procs.append(ctl)
        ui_port = free_port()
        with open(log_dir / f"ui-{ui_port}.log", "ab") as out:
            ui = subprocess.Popen([sys.executable, "-m", "app", "--controller-url", ctl.url, "--port", str(ui_port),
                                   "--max-upload-mb", str(MAX_MEDIA_BYTES // 2**20), "--no-logging"],
                                  cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        worker = start_worker(log_dir, demo_checkpoint, ctl.url, engine="transformers", model_name=MODEL,
                              max_media_bytes=MAX_MEDIA_BYTES, max_body_bytes=8 * MAX_BODY_BYTES)
        procs.append(worker)
        yield {"controller": ctl.url, "ui": f"http://127.0.0.1:{ui_port}", "ui_proc": ui,
               "ui_log": log_dir / f"ui-{ui_port}.log"}
    finally:
        if "ui" in locals():
            ui.terminate()
            ui.wait(15)
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture(scope="module")
def api(servers):
    with httpx.Client(base_url=servers["controller"], timeout=60) as http:
        baseline = http.post("/v1/chat/completions", json=chat([text("What is in the picture?")]))
        assert baseline.status_code == 200, baseline.text
        yield http, baseline.json()["usage"]["prompt_tokens"]


# ---------------------------------------------------------------------------------------------- request builders


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image_part(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def video_part(data: bytes, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}",
                                               "num_frames": 2}}


def chat(content: list[dict] | str, **fields) -> dict:
    return body(**{"model": MODEL, "max_tokens": 3, "temperature": 0.0, **fields}, content=content)


def with_image(data: bytes, mime: str = "image/png") -> dict:
    return chat([image_part(data, mime), text("What is in the picture?")])


# ---------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    request: Callable[[], dict | bytes]  # a JSON body, or raw bytes sent as-is
    status: int = 200  # 200: valid input that must succeed
    code: str | None = None
    names: tuple[str, ...] = ()  # words the error message must contain (case-insensitive)
    media: bool = False  # a valid request carrying media: its prompt must be longer than the text-only one


CASES = [
    # images that are unusual but valid: they must work
    Case("cmyk-jpeg", lambda: with_image(encode(gradient(mode="CMYK"), "JPEG"), "image/jpeg"), media=True),
    Case("16-bit-png", lambda: with_image(png_16bit()), media=True),
    Case("palette-png", lambda: with_image(encode(gradient().convert("P"))), media=True),
    Case("palette-transparency", lambda: with_image(png_palette_transparent()), media=True),
    Case("alpha-png", lambda: with_image(png_alpha()), media=True),
    Case("exif-rotated-jpeg", lambda: with_image(jpeg_exif_rotated(), "image/jpeg"), media=True),
    Case("animated-gif", lambda: with_image(animated_gif(), "image/gif"), media=True),
    Case("animated-gif-as-video", lambda: chat([video_part(animated_gif(), "image/gif"), text("?")]), media=True),
    Case("greyscale-webp", lambda: with_image(encode(gradient(mode="L"), "WEBP"), "image/webp"), media=True),
    Case("vp9-webm", lambda: chat([video_part(gradient_video("webm", "libvpx-vp9", 6), "video/webm"), text("What happens?")]),
         media=True),
    Case("html-script-text", lambda: chat("<script>alert('x')</script><img src=x onerror=alert(1)> &amp; hi")),
    # broken images
    Case("truncated-png", lambda: with_image(encode(gradient())[:200]), 400, "invalid_image", ("truncated",)),
    Case("truncated-jpeg", lambda: with_image(encode(gradient(), "JPEG")[:300], "image/jpeg"), 400,
         "invalid_image", ("truncated",)),
    Case("zero-byte-image", lambda: with_image(b""), 400, "invalid_image", ("empty",)),
    Case("not-an-image", lambda: with_image(b"hello, I am text"), 400, "invalid_image", ("not an image",)),
    Case("decompression-bomb", lambda: with_image(png_bomb()), 400, "invalid_image", ("pixels", "bomb")),
    Case("bad-base64", lambda: chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]),
         400, "invalid_request", ("base64",)),
    Case("file-url", lambda: chat([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]), 400,
         "invalid_request", ("scheme",)),
    Case("loopback-url", lambda: chat([{"type": "image_url", "image_url": {"url": "http://127.0.0.1/a.png"}}]),
         400, "remote_url_forbidden", ("remote",)),
    Case("image-too-large", lambda: with_image(noise_png(int(1.5 * MAX_MEDIA_BYTES))), 413, "upload_too_large",
         ("image 1", "files of up to")),
    Case("body-too-large", lambda: with_image(noise_png(MAX_BODY_BYTES)), 413, "request_too_large",
         ("per request", "whole conversation")),
    # broken videos
    Case("text-renamed-mp4", lambda: chat([video_part(b"just some text, not a video\n" * 20), text("?")]), 400,
         "invalid_video", ("video",)),
    Case("zero-frame-mp4", lambda: chat([video_part(gradient_video("mp4", "mpeg4", 0)), text("?")]), 400, "invalid_video",
         ("video",)),
    # request shape
    Case("invalid-json", lambda: b'{"model": "demo", "messages": [', 400, "invalid_json", ("json",)),
    Case("json-array-body", lambda: b"[1, 2, 3]", 400, "invalid_request", ("invalid request",)),
    Case("unknown-part-type", lambda: chat([{"type": "audio_url", "audio_url": {"url": "x"}}]), 400,
         "invalid_request", ("unsupported content part type 'audio_url'",)),
    Case("part-without-type", lambda: chat([{"text": "hi"}]), 400, "invalid_request", ("without a 'type'",)),
    Case("image-part-without-url", lambda: chat([{"type": "image_url"}]), 400, "invalid_request",
         ("messages.0.content.0.image_url: field required",)),
    Case("unknown-field", lambda: chat("hi", logit_bias_typo=1), 400, "invalid_request", ("logit_bias_typo",)),
    Case("empty-messages", lambda: {"model": MODEL, "messages": []}, 400, "invalid_request", ("messages",)),
    Case("image-in-assistant-message", lambda: {"model": MODEL, "messages": [
        {"role": "assistant", "content": [image_part(encode(gradient()))]}, {"role": "user", "content": "hi"}]},
         400, "invalid_request", ("assistant",)),
    Case("reserved-image-marker", lambda: chat("look: <IMG_CONTEXT><IMG_CONTEXT>"), 400, "invalid_request",
         ("reserved",)),
    Case("unknown-model", lambda: chat("hi", model="nope"), 404, "model_not_found", ("nope", "demo")),
    Case("prompt-longer-than-context", lambda: chat("lorem ipsum dolor " * 3000), 400, "context_length_exceeded",
         ("context",)),
    Case("max-tokens-past-context", lambda: chat("hi", max_tokens=5000), 400, "context_length_exceeded",
         ("max_tokens",)),
    Case("huge-max-tokens", lambda: chat("hi", max_tokens=10**12), 400, "invalid_request", ("max_tokens",)),
    Case("negative-temperature", lambda: chat("hi", temperature=-1), 400, "invalid_request", ("temperature",)),
    Case("huge-temperature", lambda: chat("hi", temperature=1e9), 400, "invalid_request", ("temperature",)),
    Case("negative-top-p", lambda: chat("hi", top_p=-0.5), 400, "invalid_request", ("top_p",)),
    Case("string-max-tokens", lambda: chat("hi", max_tokens="lots"), 400, "invalid_request", ("max_tokens",)),
    Case("n-zero", lambda: chat("hi", n=0), 400, "invalid_request", ("n: ",)),
    Case("n-beyond-the-servers-limit", lambda: chat("hi", n=9), 400, "unsupported_value",
         ("this server does not support n=9",)),
]


def send(http: httpx.Client, case: Case) -> httpx.Response:
    request = case.request()
    if isinstance(request, bytes):
        return http.post("/v1/chat/completions", content=request, headers={"content-type": "application/json"})
    return http.post("/v1/chat/completions", json=request)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_clear_answer_and_worker_keeps_serving(api, case):
    http, text_only_prompt_tokens = api
    r = send(http, case)
    assert r.status_code == case.status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    if case.status == 200:
        answer = r.json()
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        if case.media:
            assert answer["usage"]["prompt_tokens"] > text_only_prompt_tokens, "the media did not reach the prompt"
    else:
        error = r.json()["error"]
        assert error["code"] == case.code, error
        message = error["message"].lower()
        missing = [w for w in case.names if w.lower() not in message]
        assert not missing, f"message does not name {missing}: {error['message']!r}"
    after = http.post("/v1/chat/completions", json=chat("Still there?"))
    assert after.status_code == 200, f"the worker stopped serving after {case.id}: {after.text[:300]}"


# ---------------------------------------------------------------------------------------------- the UI's API

# system prompt, temperature, top_p, max new tokens, repetition penalty, max tiles, frames per video
UI_SETTINGS = ("", 0.0, 0.9, 16, 1.0, 2, 2)


@dataclass
class UICase:
    id: str
    files: dict[str, Callable[[], bytes]]  # uploaded file name -> content
    error: tuple[str, ...] | None = None  # None: must be answered; else words the error note must contain
    refused: str | None = None  # "app": the UI refuses it with a pop-up; "upload": Gradio refuses the upload itself
    text: str = "What is in it?"
    model: str = MODEL


UI_CASES = [
    UICase("cmyk-jpeg", {"cmyk.jpg": lambda: encode(gradient(mode="CMYK"), "JPEG")}),
    UICase("alpha-png", {"alpha.png": png_alpha}),
    UICase("exif-rotated-jpeg", {"rotated.jpg": jpeg_exif_rotated}),
    UICase("animated-gif", {"anim.gif": animated_gif}),
    UICase("vp9-webm", {"clip.webm": lambda: gradient_video("webm", "libvpx-vp9", 6)}),
    UICase("html-script-text", {}, text="<script>alert('x')</script><img src=x onerror=alert(1)>"),
    UICase("truncated-png", {"cut.png": lambda: encode(gradient())[:200]}, ("truncated",)),
    UICase("zero-byte-image", {"empty.png": lambda: b""}, ("empty",)),
    UICase("decompression-bomb", {"bomb.png": png_bomb}, ("bomb",)),
    UICase("text-renamed-mp4", {"notes.mp4": lambda: b"just some text, not a video\n" * 20}, ("video",)),
    UICase("zero-frame-mp4", {"nothing.mp4": lambda: gradient_video("mp4", "mpeg4", 0)}, ("video",)),
    UICase("oversized-upload", {"big.png": lambda: noise_png(int(1.5 * MAX_MEDIA_BYTES))}, ("maximum",),
           refused="upload"),
    UICase("text-file", {"notes.txt": lambda: b"hello"}, ("invalid file type",), refused="app"),
    UICase("unknown-model", {}, ("nope",), model="nope"),
]


@pytest.fixture(scope="module")
def ui(servers):
    from gradio_client import Client

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert servers["ui_proc"].poll() is None, servers["ui_log"].read_text()[-3000:]
        try:
            if httpx.get(servers["ui"] + "/gradio_api/info", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the UI did not start:\n" + servers["ui_log"].read_text()[-3000:])
    return Client(servers["ui"] + "/", verbose=False)


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def ui_chat(ui, text: str, files: list, model: str = MODEL) -> list[dict]:
    return ui.predict({"text": text, "files": files}, [], model, *UI_SETTINGS, api_name="/chat")[0]


@pytest.mark.parametrize("case", UI_CASES, ids=lambda c: c.id)
def test_bad_input_through_the_ui_gets_a_clear_message_and_chat_keeps_working(ui, case, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    files = []
    for name, make in case.files.items():
        (tmp_path / name).write_bytes(make())
        files.append(handle_file(str(tmp_path / name)))
    if case.refused:
        with pytest.raises((AppError, ValueError)) as refused:
            ui_chat(ui, case.text, files, case.model)
        missing = [w for w in case.error if w.lower() not in str(refused.value).lower()]
        assert not missing, f"the refusal does not name {missing}: {refused.value}"
        if case.refused == "upload":  # gradio_client checks the size before sending; so does the server
            name, make = next(iter(case.files.items()))
            direct = httpx.post(ui.src.rstrip("/") + "/gradio_api/upload", files={"files": (name, make())})
            assert direct.status_code == 413 and "maximum" in direct.text, direct.text
    else:
        last = ui_chat(ui, case.text, files, case.model)[-1]
        assert last["role"] == "assistant"
        if case.error is None:
            assert not (last.get("metadata") or {}).get("title"), f"valid input answered with an error: {last}"
        else:
            assert (last.get("metadata") or {}).get("title", "").startswith("⚠"), last
            missing = [w for w in case.error if w.lower() not in text_of(last).lower()]
            assert not missing, f"the error note does not name {missing}: {text_of(last)!r}"
    after = ui_chat(ui, "Still there?", [])[-1]
    assert after["role"] == "assistant" and not (after.get("metadata") or {}).get("title"), after
