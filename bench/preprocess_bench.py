"""Preprocessing speed, ours vs the InternVL model card's way, side by side in one run (not a test).

    .venv/bin/python bench/preprocess_bench.py [--repeat 5] [--tile 448]

1. Tiling a 4000x3000 image into 12 tiles + thumbnail. Reference: the model card's `load_image`:
   dynamic_preprocess (lmdeploy ships the model card's function verbatim) + a torchvision T.Compose run per tile.
2. Sampling 32 frames from a 60 s 1080p H.264 clip, three kinds (generated once with PyAV into a temp dir):
   x264's defaults (preset medium, keyint 250, 3 B-frames with b-pyramid: the common case for encoded files, about
   half the frames are never referenced), preset ultrafast (no B-frames, every frame a reference: the worst case,
   where exact decoding cannot skip anything inside a GOP) and camera-like (no B-frames, a key frame every second,
   as phones record). Reference: the model card's `load_video`: decord per-frame reads `vr[i]`, then
   dynamic_preprocess(max_num=1) + T.Compose per frame. Ours: `decode_video(..., tile_size=448)` (PyAV, unreferenced
   frames skipped, GOP runs in parallel, each frame resized in its decoding thread), one batched normalisation.
Targets (issue 3): tiling <= 0.7x, video <= 0.5x of the reference time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.limits import MediaLimits  # noqa: E402
from workers.vision.tiling import IMAGENET_MEAN, IMAGENET_STD, cut_tiles, normalize  # noqa: E402
from workers.vision.video import decode_video, sample_indices  # noqa: E402


def model_card_transform(size: int):
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode

    return T.Compose([T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
                      T.Resize((size, size), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def reference_tiles(image: Image.Image, size: int, transform) -> torch.Tensor:
    from lmdeploy.vl.model.internvl import dynamic_preprocess

    return torch.stack([transform(t) for t in dynamic_preprocess(image, 1, 12, size, use_thumbnail=True)])


def our_tiles(image: Image.Image, size: int) -> torch.Tensor:
    return normalize(cut_tiles(image, tile_size=size, min_tiles=1, max_tiles=12, use_thumbnail=True))


def reference_video(path: str, size: int, transform, frames: int) -> torch.Tensor:
    from decord import VideoReader, cpu
    from lmdeploy.vl.model.internvl import dynamic_preprocess

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    indices = sample_indices(len(vr), float(vr.get_avg_fps()), frames)
    out = []
    for i in indices:
        img = Image.fromarray(vr[i].asnumpy()).convert("RGB")
        out.extend(transform(t) for t in dynamic_preprocess(img, 1, 1, size, use_thumbnail=True))
    return torch.stack(out)


def our_video(path: str, size: int, frames: int) -> torch.Tensor:
    data = Path(path).read_bytes()
    return normalize(decode_video(data, MediaLimits(max_media_bytes=1 << 30), frames, tile_size=size))


CLIPS = {  # name -> libx264 options
    "x264 defaults (B-frames)": {"crf": "30"},
    "ultrafast (all P)": {"preset": "ultrafast", "crf": "30", "g": "250"},
    # Like a phone camera's hardware encoder: no B-frames, a key frame every second.
    "camera-like (no B-frames, 1 s GOP)": {"preset": "veryfast", "crf": "30", "bf": "0", "g": "30"},
}


def make_clip(path: Path, options: dict[str, str], seconds: int = 60, fps: int = 30) -> None:
    """1080p H.264, a moving gradient (cheap to encode: a few distinct frames cycled)."""
    import av

    w, h = 1920, 1080
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    palette = [np.clip((x + y * 0.5 + k * 16) % 256 * np.array([1.0, 0.7, 0.4]), 0, 255).astype(np.uint8)
               for k in range(16)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = options
        for k in range(seconds * fps):
            for packet in stream.encode(av.VideoFrame.from_ndarray(palette[k % 16], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def timed(fn, repeat: int) -> tuple[float, object]:
    result, times = None, []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # like a worker thread in the server; also makes the comparison fair
    transform = model_card_transform(args.tile)

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000]
    pixels = (np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(0, 32, (3000, 4000, 3))) % 256
    image = Image.fromarray(pixels.astype(np.uint8))
    ref_t, ref = timed(lambda: reference_tiles(image, args.tile, transform), args.repeat)
    our_t, ours = timed(lambda: our_tiles(image, args.tile), args.repeat)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6), "tiling pixels differ"
    print(f"tiling 4000x3000 -> {ours.shape[0]} tiles of {args.tile}: reference {ref_t * 1000:.1f} ms, "
          f"ours {our_t * 1000:.1f} ms, ratio {our_t / ref_t:.2f}x (target <= 0.70x)")

    if args.skip_video:
        return 0
    clip_dir = Path(tempfile.gettempdir()) / "internvl-bench"
    clip_dir.mkdir(exist_ok=True)
    clips = {}
    for n, (name, options) in enumerate(CLIPS.items()):
        clips[name] = clip = clip_dir / f"clip_60s_1080p_{n}_{'_'.join(map(''.join, sorted(options.items())))}.mp4"
        if not clip.exists():
            start = time.perf_counter()
            make_clip(clip.with_suffix(".part.mp4"), options)
            clip.with_suffix(".part.mp4").rename(clip)
            print(f"(generated {clip} in {time.perf_counter() - start:.1f} s)")
    # Reference and ours alternate, one pair per clip per repeat: seconds-long runs on a shared machine see the load
    # change, and a pair run back to back sees about the same load.
    ratios = {name: [] for name in clips}
    ref_times = {name: [] for name in clips}
    our_times = {name: [] for name in clips}
    for _ in range(args.repeat):
        for name, clip in clips.items():
            ref_t, ref = timed(lambda: reference_video(str(clip), args.tile, transform, args.frames), 1)
            our_t, ours = timed(lambda: our_video(str(clip), args.tile, args.frames), 1)
            assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6), f"video pixels differ ({name})"
            ratios[name].append(our_t / ref_t)
            ref_times[name].append(ref_t)
            our_times[name].append(our_t)
    for name in clips:
        r = ratios[name]
        print(f"video 60 s 1080p H.264 {name}, {args.frames} frames: reference "
              f"{statistics.median(ref_times[name]) * 1000:.0f} ms, ours {statistics.median(our_times[name]) * 1000:.0f}"
              f" ms, ratio {statistics.median(r):.2f}x (pairs {min(r):.2f}-{max(r):.2f}x; target <= 0.50x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
