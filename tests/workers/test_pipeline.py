"""prepare_generation end to end on the demo checkpoint's spec (and a V1-2 spec): prompt, tiles, errors."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import ErrorCode, ServingError
from common.protocol import ChatCompletionRequest
from tests.support.video_samples import gray_video
from workers.media import fetch_media
from workers.pipeline import prepare_generation
from workers.model_spec import detect_model_spec
from workers.settings import MediaLimits
from workers.vision.tiling import cut_tiles, normalize


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from workers.demo_checkpoint import build_demo_checkpoint

    return detect_model_spec(build_demo_checkpoint(tmp_path_factory.mktemp("demo"), seed=0))


def _png(w, h, seed=0) -> tuple[str, Image.Image]:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), img


def _image_part(url, **kw):
    return {"type": "image_url", "image_url": {"url": url, **kw}}


def _req(messages, **kw):
    return ChatCompletionRequest(model="m", messages=messages, **kw)


async def test_single_image_prompt_pixels_and_sampling(spec):
    url, img = _png(300, 100)
    req = _req([{"role": "user", "content": [{"type": "text", "text": "What is it?"}, _image_part(url)]}],
               max_tokens=7, stop="END")
    gen = await prepare_generation(req, spec, MediaLimits(), "req-1")
    tiles = cut_tiles(img, tile_size=56, min_tiles=1, max_tiles=12, use_thumbnail=True)
    block = "<img>" + "<IMG_CONTEXT>" * (4 * len(tiles)) + "</img>\n"
    assert gen.prompt == f"<|im_start|>user\n{block}What is it?<|im_end|>\n<|im_start|>assistant\n"
    assert gen.num_tiles == [len(tiles)] and gen.pixel_values.dtype == torch.float32
    torch.testing.assert_close(gen.pixel_values, normalize(tiles))
    assert gen.sampling.max_new_tokens == 7 and gen.sampling.stop == ("END", "<|im_end|>", "<|endoftext|>")
    assert gen.request_id == "req-1"


async def test_budget_split_labels_and_earlier_turns(spec):
    u1, _ = _png(400, 100, 1)
    u2, _ = _png(400, 100, 2)
    u3, _ = _png(400, 100, 3)
    req = _req([{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [_image_part(u1), {"type": "text", "text": "first"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [_image_part(u2), _image_part(u3, max_dynamic_patch=2),
                                             {"type": "text", "text": "and these?"}]}], max_tiles=4)
    gen = await prepare_generation(req, spec, MediaLimits(), "r")
    # image 1: earlier turn -> 1 tile; image 2: budget 4 shared by the one image without its own limit -> 4x1 + thumb;
    # image 3: own max_dynamic_patch=2 -> 2x1 + thumb
    assert gen.num_tiles == [1, 5, 3]
    assert gen.pixel_values.shape == (9, 3, 56, 56)
    assert gen.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nImage-1: <img>")
    assert gen.prompt.count("Image-") == 3 and "Image-3: <img>" in gen.prompt
    assert gen.prompt.endswith("and these?<|im_end|>\n<|im_start|>assistant\n")


async def test_video_frames_labels(spec):
    url = "data:video/mp4;base64," + base64.b64encode(gray_video("mp4", frames=30, fps=10)).decode()
    req = _req([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url, "num_frames": 3}},
                                             {"type": "text", "text": "What happens?"}]}])
    gen = await prepare_generation(req, spec, MediaLimits(), "r")
    frame = "<img>" + "<IMG_CONTEXT>" * 4 + "</img>"
    assert f"Frame1: {frame}\nFrame2: {frame}\nFrame3: {frame}\nWhat happens?" in gen.prompt
    assert gen.num_tiles == [1, 1, 1] and gen.pixel_values.shape == (3, 3, 56, 56)


async def test_num_frames_defaults(spec):
    url = "data:video/webm;base64," + base64.b64encode(gray_video("webm", frames=20, fps=10)).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}]
    gen = await prepare_generation(_req([{"role": "user", "content": content}], num_frames=5), spec,
                                   MediaLimits(), "r")
    assert gen.prompt.count("Frame") == 5
    gen = await prepare_generation(_req([{"role": "user", "content": content}]), spec,
                                   MediaLimits(default_num_frames=2), "r")
    assert gen.prompt.count("Frame") == 2


async def test_v1_2_fixed_size_and_system(tmp_path):
    cfg = {"architectures": ["InternVLChatModel"], "template": "Hermes-2", "force_image_size": 448,
           "downsample_ratio": 0.5, "vision_config": {"image_size": 448, "patch_size": 14},
           "llm_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    v12 = detect_model_spec(tmp_path)
    url, _ = _png(900, 300)
    gen = await prepare_generation(_req([{"role": "user", "content": [_image_part(url), {"type": "text",
                                                                                          "text": "Hi"}]}]),
                                   v12, MediaLimits(), "r")
    assert gen.num_tiles == [1] and gen.pixel_values.shape == (1, 3, 448, 448)
    assert gen.prompt.startswith("<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<img>")
    assert gen.prompt.count("<IMG_CONTEXT>") == 256


@pytest.mark.parametrize("messages,code,match", [
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]},
      {"role": "user", "content": "hi"}], ErrorCode.INVALID_REQUEST, "message 1 \\(assistant\\) contains an image"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], ErrorCode.INVALID_REQUEST,
     "last message must be a user"),
    ([{"role": "user", "content": "look <IMG_CONTEXT>"}], ErrorCode.INVALID_REQUEST, "reserved image marker"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
     ErrorCode.INVALID_IMAGE, "image 1 \\(message 1\\)"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
     ErrorCode.REMOTE_URL_FORBIDDEN, "disabled on this server"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,"
                                                                        + base64.b64encode(b"not video").decode()}}]}],
     ErrorCode.INVALID_VIDEO, "video in message 1"),
])
async def test_errors_name_the_problem(spec, messages, code, match):
    with pytest.raises(ServingError, match=match) as info:
        await prepare_generation(_req(messages), spec, MediaLimits(), "r")
    assert info.value.code == code


async def test_an_error_about_one_file_carries_its_place_in_the_request_as_param(spec):
    """Positions travel as data (issue 23): clients read `param`, never the message text, to say which file."""
    good, _ = _png(8, 8)
    video = "data:video/mp4;base64," + base64.b64encode(b"not video").decode()
    earlier = [{"role": "system", "content": "s"},
               {"role": "user", "content": [{"type": "text", "text": "a"}, _image_part(good)]},
               {"role": "assistant", "content": "b"}]
    cases = [(_image_part("data:image/png;base64,AAAA"), "messages[3].content[1]", ErrorCode.INVALID_IMAGE),
             (_image_part("data:image/png;base64," + "A" * 4000), "messages[3].content[1]",
              ErrorCode.UPLOAD_TOO_LARGE),
             (_image_part("https://example.com/a.png"), "messages[3].content[1]", ErrorCode.REMOTE_URL_FORBIDDEN),
             ({"type": "video_url", "video_url": {"url": video}}, "messages[3].content[1]", ErrorCode.INVALID_VIDEO),
             ({"type": "video_url", "video_url": {"url": video, "num_frames": 9}}, "messages[3].content[1]",
              ErrorCode.INVALID_REQUEST)]
    for part, param, code in cases:
        messages = earlier + [{"role": "user", "content": [{"type": "text", "text": "c"}, part]}]
        with pytest.raises(ServingError) as info:
            await prepare_generation(_req(messages), spec, MediaLimits(max_media_bytes=2000, max_video_frames=8), "r")
        assert (info.value.code, info.value.param) == (code, param), info.value.message
    with pytest.raises(ServingError) as info:  # about one message, not a file
        await prepare_generation(_req(earlier[:2] + [{"role": "user", "content": "look <IMG_CONTEXT>"}]), spec,
                                 MediaLimits(), "r")
    assert info.value.param == "messages[2]"


async def test_too_many_images_and_context(spec):
    url, _ = _png(8, 8)
    many = [{"role": "user", "content": [_image_part(url)] * 3}]
    with pytest.raises(ServingError, match="at most 2") as info:
        await prepare_generation(_req(many), spec, MediaLimits(max_images_per_request=2), "r")
    assert info.value.code == ErrorCode.INVALID_REQUEST
    from dataclasses import replace

    tiny = replace(spec, context_length=4)
    with pytest.raises(ServingError, match="tokens, but the model's context is 4") as info:
        await prepare_generation(_req([{"role": "user", "content": [_image_part(url)]}]), tiny, MediaLimits(), "r")
    assert info.value.code == ErrorCode.CONTEXT_TOO_LONG


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/x.png", "http://localhost/x.png", "http://10.1.2.3/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://224.0.0.1/x"])
async def test_remote_private_targets_refused_even_when_allowed(url):
    with pytest.raises(ServingError, match="only public addresses") as info:
        await fetch_media(url, MediaLimits(allow_remote_media=True), "image 1")
    assert info.value.code == ErrorCode.REMOTE_URL_FORBIDDEN


async def test_data_url_limits_and_schemes():
    with pytest.raises(ServingError) as info:
        await fetch_media("data:image/png;base64," + "A" * 4000, MediaLimits(max_media_bytes=1000), "image 1")
    assert info.value.code == ErrorCode.UPLOAD_TOO_LARGE
    with pytest.raises(ServingError, match="not valid base64"):
        await fetch_media("data:image/png;base64,@@@", MediaLimits(), "image 1")
    with pytest.raises(ServingError, match="unsupported URL scheme 'file'"):
        await fetch_media("file:///etc/passwd", MediaLimits(allow_remote_media=True), "image 1")
    assert await fetch_media("data:text/plain,hi%21", MediaLimits(), "x") == b"hi!"
