"""What the worker's media cache saves on the next turn of a chat, through the real preparation path (not a test).

    .venv/bin/python bench/media_cache_bench.py [--repeat 3]

`prepare_generation` (data: URL -> decoded, tiled, normalised pixels + prompt) with an InternVL3-shaped spec (448
tiles, 12-tile budget, thumbnail), each case timed from a cold cache (turn 1) and then on the chat's next request
(turn 2, which carries the same file again), with and without the cache:
1. a 60 s 1080p H.264 clip (x264 defaults; bench/preprocess_bench.py makes it), 32 frames;
2. a 4000x3000 JPEG: turn 2 carries it in an earlier turn (1 tile: the cache serves turn 1's thumbnail), and
   "again": the same photo sent again as the newest message (13 tiles).
Target (issue 11): turn 2 at most 5% of turn 1's preprocessing time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from preprocess_bench import CLIPS, make_clip  # noqa: E402

from common.protocol import ChatCompletionRequest  # noqa: E402
from workers.limits import MediaLimits  # noqa: E402
from workers.media_cache import MediaCache  # noqa: E402
from workers.model_spec import ModelSpec  # noqa: E402

SPEC = ModelSpec(family="internvl3", checkpoint_format="native", template="internvl2_5", llm_arch="Qwen2ForCausalLM",
                 image_size=448, dynamic=True, use_thumbnail=True, min_tiles=1, max_tiles=12, tokens_per_tile=256,
                 ps_version="v2", context_length=32768, stop_words=("<|im_end|>",))
LIMITS = MediaLimits()


def chat(part: dict, second: bool) -> ChatCompletionRequest:
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}]
    if second:
        messages += [{"role": "assistant", "content": "A test picture."}, {"role": "user", "content": "And now?"}]
    return ChatCompletionRequest(model="m", messages=messages, max_tiles=12, num_frames=32)


def again(part: dict) -> ChatCompletionRequest:
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A test picture."},
                {"role": "user", "content": [part, {"type": "text", "text": "And this one?"}]}]
    return ChatCompletionRequest(model="m", messages=messages, max_tiles=12)


async def timed(req: ChatCompletionRequest, cache: MediaCache | None) -> float:
    from workers.pipeline import prepare_generation

    start = time.perf_counter()
    await prepare_generation(req, SPEC, LIMITS, "bench", cache)
    return time.perf_counter() - start


async def case(name: str, part: dict, repeat: int, follow=None) -> None:
    """Turn 1 from a cold cache, then turn 2 with that cache, and turn 2 without any cache (as before it existed)."""
    follow = follow or (lambda p: chat(p, second=True))
    first, cached, uncached = [], [], []
    for _ in range(repeat):
        cache = MediaCache(2**30)
        first.append(await timed(chat(part, second=False), cache))
        cached.append(await timed(follow(part), cache))
        uncached.append(await timed(follow(part), None))
    t1, t2, t0 = (statistics.median(x) * 1000 for x in (first, cached, uncached))
    print(f"{name}: turn 1 {t1:.0f} ms; next turn without cache {t0:.0f} ms, with cache {t2:.1f} ms = "
          f"{t2 / t1 * 100:.1f}% of turn 1 (target <= 5%)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in bench/preprocess_bench.py

    clip_dir = Path(tempfile.gettempdir()) / "internvl-bench"
    clip_dir.mkdir(exist_ok=True)
    options = CLIPS["x264 defaults (B-frames)"]
    clip = clip_dir / f"clip_60s_1080p_0_{'_'.join(map(''.join, sorted(options.items())))}.mp4"
    if not clip.exists():
        make_clip(clip.with_suffix(".part.mp4"), options)
        clip.with_suffix(".part.mp4").rename(clip)
    data = clip.read_bytes()
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(data).decode()}}

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000]
    pixels = (np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(0, 32, (3000, 4000, 3))) % 256
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
    photo = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," +
                                                base64.b64encode(buf.getvalue()).decode()}}

    print(f"(clip {len(data) / 2**20:.1f} MB, photo {len(buf.getvalue()) / 2**20:.1f} MB; machine: shared, busy)")
    if not args.skip_video:
        await case("video 60 s 1080p H.264, 32 frames", video, args.repeat)
    await case("image 4000x3000 JPEG, next turn (1 tile, from turn 1's thumbnail)", photo, args.repeat)
    await case("image 4000x3000 JPEG sent again (13 tiles)", photo, args.repeat, follow=again)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
