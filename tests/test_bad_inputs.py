"""Bad inputs through the public API: the controller in front of a worker running the real transformers engine on the
demo checkpoint (so decoding, tiling, templating and the context check are the product's own code).

Every case gets either a clear 4xx whose message names the problem, or, for unusual but valid media, a normal answer
that really used the image (more prompt tokens than the same request without it). After every case the worker must
still serve a normal request. Media are generated here with PIL and PyAV.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.stack import start_controller, start_worker

MAX_MEDIA_BYTES = 1024 * 1024  # small limits, so "too large" cases stay cheap
MAX_BODY_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def api(demo_checkpoint, log_dir):
    ctl = start_controller(log_dir, max_body_bytes=MAX_BODY_BYTES)
    worker = None
    try:
        worker = start_worker(log_dir, demo_checkpoint, ctl.url, engine="transformers", max_media_bytes=MAX_MEDIA_BYTES,
                              max_body_bytes=8 * MAX_BODY_BYTES, model_name="demo")
        with httpx.Client(base_url=ctl.url, timeout=60) as http:
            baseline = http.post("/v1/chat/completions", json=chat([text("What is in the picture?")]))
            assert baseline.status_code == 200, baseline.text
            yield http, baseline.json()["usage"]["prompt_tokens"]
    finally:
        for proc in (worker, ctl):
            if proc is not None:
                proc.stop()


# ---------------------------------------------------------------------------------------------- request builders


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image_part(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def video_part(data: bytes, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}",
                                               "num_frames": 2}}


def chat(content: list[dict] | str, **fields) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": 3,
            "temperature": 0.0, **fields}


def with_image(data: bytes, mime: str = "image/png") -> dict:
    return chat([image_part(data, mime), text("What is in the picture?")])


# ---------------------------------------------------------------------------------------------- media


def encode(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def gradient(size=(96, 64), mode="RGB") -> Image.Image:
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[..., 2] = 128
    return Image.fromarray(arr, "RGB").convert(mode)


def png_16bit() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return encode(Image.fromarray(arr, "I;16"))


def png_alpha() -> bytes:
    img = gradient().convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return encode(img)


def png_palette_transparent() -> bytes:
    img = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, transparency=0)


def jpeg_exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encode(gradient((120, 40)), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [gradient().rotate(a).convert("P") for a in (0, 90, 180)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_bomb(side: int = 10_000) -> bytes:
    """A real, fully valid 1-bit PNG of side x side pixels (100 M pixels) that compresses to ~12 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * side, 9))
            + chunk(b"IEND", b""))


def noise_png(nbytes: int) -> bytes:
    side = int((nbytes / 3) ** 0.5) + 8
    arr = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr, "RGB"), compress_level=0)


def video(fmt: str, codec: str, frames: int) -> bytes:
    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format=fmt)
    stream = out.add_stream(codec, rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.asarray(gradient((64, 48)).rotate(i * 40)), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return buf.getvalue()


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
    Case("greyscale-webp", lambda: with_image(encode(gradient(mode="L"), "WEBP"), "image/webp"), media=True),
    Case("vp9-webm", lambda: chat([video_part(video("webm", "libvpx-vp9", 6), "video/webm"), text("What happens?")]),
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
         ("image 1", "limit")),
    Case("body-too-large", lambda: with_image(noise_png(MAX_BODY_BYTES)), 413, "upload_too_large",
         ("request body", "MiB")),
    # broken videos
    Case("text-renamed-mp4", lambda: chat([video_part(b"just some text, not a video\n" * 20), text("?")]), 400,
         "invalid_video", ("video",)),
    Case("zero-frame-mp4", lambda: chat([video_part(video("mp4", "mpeg4", 0)), text("?")]), 400, "invalid_video",
         ("video",)),
    # request shape
    Case("invalid-json", lambda: b'{"model": "demo", "messages": [', 400, "invalid_json", ("json",)),
    Case("json-array-body", lambda: b"[1, 2, 3]", 400, "invalid_request", ("invalid request",)),
    Case("unknown-part-type", lambda: chat([{"type": "audio_url", "audio_url": {"url": "x"}}]), 400,
         "invalid_request", ("audio_url",)),
    Case("image-part-without-url", lambda: chat([{"type": "image_url"}]), 400, "invalid_request", ("image_url",)),
    Case("unknown-field", lambda: chat("hi", logit_bias_typo=1), 400, "invalid_request", ("logit_bias_typo",)),
    Case("empty-messages", lambda: {"model": "demo", "messages": []}, 400, "invalid_request", ("messages",)),
    Case("image-in-assistant-message", lambda: {"model": "demo", "messages": [
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
    Case("n-greater-than-one", lambda: chat("hi", n=2), 400, "invalid_request", ("n: ",)),
]


def send(http: httpx.Client, case: Case) -> httpx.Response:
    request = case.request()
    if isinstance(request, bytes):
        return http.post("/v1/chat/completions", content=request, headers={"content-type": "application/json"})
    return http.post("/v1/chat/completions", json=request)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
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
