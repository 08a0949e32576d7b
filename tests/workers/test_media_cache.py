"""The worker's media cache (workers/media_cache.py): the same content preprocessed the same way is decoded once,
a hit gives exactly the tensors a fresh decode gives, the cache stays within its bound, and /metrics counts hits and
misses; a real worker answering two turns about one video decodes it once."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from common.protocol import ChatCompletionRequest
from tests.support.media_samples import data_url
from tests.support.stack import start_worker
from tests.support.video_samples import gradient_video
from workers.limits import MediaLimits
from workers.media_cache import MediaCache
from workers.model_spec import detect_model_spec
from workers.pipeline import prepare_generation

MODEL = "cache-demo"


@pytest.fixture(scope="module")
def spec(demo_checkpoint):
    return detect_model_spec(demo_checkpoint)


def png_url(w: int, h: int, seed: int = 0) -> str:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def video_url(frames: int = 16) -> str:
    return data_url(gradient_video("mp4", "mpeg4", frames), "video/mp4")


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def clip(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url, "num_frames": 4}}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def two_turns(part: dict) -> tuple[list[dict], list[dict]]:
    first = [{"role": "user", "content": [part, text("What is it?")]}]
    return first, first + [{"role": "assistant", "content": "Noise."}, {"role": "user", "content": "And now?"}]


async def prepare(messages, spec, cache=None, **kw):
    req = ChatCompletionRequest(model="m", messages=messages, **kw)
    return await prepare_generation(req, spec, MediaLimits(), "r", cache)


@pytest.mark.parametrize("kind", ["image", "video"])
async def test_second_turn_hits_and_gives_exactly_the_fresh_tensors(spec, kind):
    part = image(png_url(300, 130)) if kind == "image" else clip(video_url())
    first, second = two_turns(part)
    cache = MediaCache(64 * 2**20)
    turn1 = await prepare(first, spec, cache, max_tiles=6)
    assert (cache.hits, cache.misses) == (0, 1)
    turn2 = await prepare(second, spec, cache, max_tiles=6)
    # The image is in an earlier turn now (1 tile): its thumbnail from turn 1, stored then; the video is the same.
    assert (cache.hits, cache.misses) == (1, 1)
    fresh = await prepare(second, spec, None, max_tiles=6)
    assert turn2.prompt == fresh.prompt and turn2.num_tiles == fresh.num_tiles
    assert torch.equal(turn2.pixel_values, fresh.pixel_values)
    assert torch.equal(turn1.pixel_values, (await prepare(first, spec, None, max_tiles=6)).pixel_values)
    if kind == "image":
        assert turn1.num_tiles[0] > 1 and turn2.num_tiles == [1]


async def test_other_parameters_are_other_entries_and_engines_never_hold_a_cached_tensor(spec):
    cache = MediaCache(64 * 2**20)
    url = video_url()
    a = await prepare([{"role": "user", "content": [clip(url), text("?")]}], spec, cache)
    other = {"type": "video_url", "video_url": {"url": url, "num_frames": 3}}
    b = await prepare([{"role": "user", "content": [other, text("?")]}], spec, cache)
    assert (cache.hits, cache.misses) == (0, 2) and a.pixel_values.shape[0] == 4 and b.pixel_values.shape[0] == 3
    c = await prepare([{"role": "user", "content": [clip(url), text("?")]}], spec, cache)
    assert cache.hits == 1 and torch.equal(c.pixel_values, a.pixel_values)
    c.pixel_values.zero_()  # an engine writing into its input cannot change what the cache holds
    d = await prepare([{"role": "user", "content": [clip(url), text("?")]}], spec, cache)
    assert torch.equal(d.pixel_values, a.pixel_values)


async def test_the_cache_stays_within_its_bound_least_recently_used_out_first(spec):
    urls = [png_url(60, 60, seed) for seed in range(4)]  # one 56-px tile each: 3*56*56*4 bytes
    one_tile = 3 * 56 * 56 * 4
    cache = MediaCache(2 * one_tile)
    for url in urls:
        await prepare([{"role": "user", "content": [image(url), text("?")]}], spec, cache, max_tiles=1)
    assert len(cache) == 2 and cache.held_bytes == 2 * one_tile
    await prepare([{"role": "user", "content": [image(urls[-1]), text("?")]}], spec, cache, max_tiles=1)
    await prepare([{"role": "user", "content": [image(urls[0]), text("?")]}], spec, cache, max_tiles=1)
    assert (cache.hits, cache.misses) == (1, 5)
    off = MediaCache(0)
    await prepare([{"role": "user", "content": [image(urls[0]), text("?")]}], spec, off)
    assert len(off) == 0 and (off.hits, off.misses) == (0, 0)


def cache_metrics(worker_url: str) -> dict[str, float]:
    text_ = httpx.get(worker_url + "/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text_) for s in f.samples
            if s.name.startswith("internvl_media_cache")}


def test_a_real_worker_decodes_a_video_once_over_two_turns(demo_checkpoint, log_dir):
    worker = start_worker(log_dir, demo_checkpoint, None, engine="transformers", model_name=MODEL)
    try:
        assert cache_metrics(worker.url) == {"internvl_media_cache_hits_total": 0,
                                             "internvl_media_cache_misses_total": 0, "internvl_media_cache_bytes": 0}
        first, second = two_turns(clip(video_url()))
        for messages in (first, second):
            r = httpx.post(worker.url + "/v1/chat/completions", timeout=60,
                           json={"model": MODEL, "messages": messages, "max_tokens": 3})
            assert r.status_code == 200, r.text
        counts = cache_metrics(worker.url)
        assert counts["internvl_media_cache_misses_total"] == 1  # decoded once
        assert counts["internvl_media_cache_hits_total"] == 1
        assert counts["internvl_media_cache_bytes"] == 4 * 3 * 56 * 56 * 4
    finally:
        worker.stop()
