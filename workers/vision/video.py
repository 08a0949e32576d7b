"""Video: sample N frames by InternVL's segment-midpoint rule and decode just those.

Decoding dominates: to reach a frame, H.264 decodes everything from the key frame before it, so 32 frames spread
over a clip cost about as much as decoding the clip. The sampled frames are therefore split at key frames into up
to `max_parts` runs, each decoded by its own decord reader in a thread (decord releases the GIL). A run starts at
a key frame exactly where one sequential reader would seek too, so the pixels are the same as one `get_batch`.

Frame rule (InternVL model card `get_index`): clamp the optional [start, end] seconds to frame indices
[round(start*fps) (at least 0), round(end*fps) (at most the last frame)], split that span into N equal segments
and take, for segment i, int(first + seg/2 + round(seg*i)). Python's round is round-half-even, like numpy's.

Animated GIFs (the UI sends .gif as video; decord cannot read GIF) are decoded with PIL by the same rule, their
fps taken from the frames' own display durations.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFile, ImageSequence

from common.errors import ErrorCode, ServingError
from workers.settings import MediaLimits
from workers.vision.images import to_rgb

GIF_MAGIC = (b"GIF87a", b"GIF89a")
# A frame without a display time (or with 0, which browsers also show at about this pace) counts as 100 ms.
GIF_DEFAULT_FRAME_MS = 100


def sample_indices(frame_count: int, fps: float, num_segments: int, start: float | None = None,
                   end: float | None = None) -> list[int]:
    if frame_count < 1 or num_segments < 1:
        raise ValueError("need at least one frame and one segment")
    first = 0 if start is None else max(0, round(start * fps))
    last = frame_count - 1 if end is None else min(round(end * fps), frame_count - 1)
    seg = (last - first) / num_segments
    return [int(first + seg / 2 + round(seg * i)) for i in range(num_segments)]


# Below this much decoding (in pixels: frames to decode x frame area, ~25 1080p frames) a second reader and thread
# cost more than they save.
MIN_PIXELS_PER_PART = 50_000_000


def default_parts() -> int:
    """Runs decoded at once: one per usable core, at most 4 (past that, reader start-up and GOP granularity win)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 4))


def split_at_key_frames(indices: list[int], key_frames: list[int], parts: int, min_cost: int = 1) -> list[list[int]]:
    """Split sorted frame indices into at most `parts` contiguous runs, cutting only between key-frame groups (GOPs),
    balanced by the frames each run must decode (from each GOP's key frame to its last index there); no more runs
    than total cost // `min_cost`. Indices before the first known key frame count as GOP 0."""
    groups: list[tuple[int, list[int]]] = []  # (key frame, indices in its GOP)
    keys = sorted(set(key_frames))
    for index in indices:
        pos = np.searchsorted(keys, index, side="right") - 1
        key = keys[pos] if pos >= 0 else 0
        if groups and groups[-1][0] == key:
            groups[-1][1].append(index)
        else:
            groups.append((key, [index]))
    costs = [members[-1] - key + 1 for key, members in groups]
    total = sum(costs)
    parts = max(1, min(parts, len(groups), total // max(1, min_cost)))
    runs: list[list[int]] = [[]]
    done = 0
    for (_, members), cost in zip(groups, costs, strict=True):
        # Cut before this GOP once the run so far has its share of the work (judged at the GOP's midpoint).
        if runs[-1] and len(runs) < parts and done + cost / 2 > total * len(runs) / parts:
            runs.append([])
        runs[-1].extend(members)
        done += cost
    return runs


def decode_video(data: bytes, limits: MediaLimits, num_frames: int, start: float | None = None,
                 end: float | None = None, label: str = "video", max_parts: int | None = None) -> np.ndarray:
    """Bytes of a video file (or animated GIF) -> uint8 frames [num_frames, H, W, 3] (RGB), or a ServingError that
    says why."""
    if len(data) > limits.max_media_bytes:
        raise ServingError(ErrorCode.UPLOAD_TOO_LARGE, f"{label} is {len(data) / 1048576:.1f} MB; the limit is "
                           f"{limits.max_media_bytes / 1048576:.1f} MB")
    if start is not None and end is not None and end <= start:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: end ({end}s) must be after start ({start}s)")
    if data[:6] in GIF_MAGIC:
        return _decode_gif(data, limits, num_frames, start, end, label)
    import decord  # imported here: loading its native library costs time a text-only worker never needs

    parts = default_parts() if max_parts is None else max_parts
    try:
        # One decoding thread per reader when runs go in parallel (they use the cores; FFmpeg's frame threads on
        # top only add overhead), else FFmpeg's own threading (0 = as many as cores).
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1 if parts > 1 else 0)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} could not be read as a video (no decodable video "
                           "stream, or no frames)") from exc
    count = len(reader)
    fps = float(reader.get_avg_fps())
    if count < 1 or not fps > 0:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} has no frames")
    _check_length(count / fps, start, limits, label)
    height, width = _frame_shape(reader)
    _check_frame_size(width, height, limits, label)
    indices = sample_indices(count, fps, num_frames, start, end)
    try:
        runs = [indices]
        if parts > 1:
            runs = split_at_key_frames(indices, reader.get_key_indices(), parts,
                                       min_cost=MIN_PIXELS_PER_PART // (width * height) + 1)
        if len(runs) == 1:
            return reader.get_batch(indices).asnumpy()
        # Preallocated so that only the sampled frames are ever held, once.
        out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        offsets = np.cumsum([0] + [len(run) for run in runs]).tolist()

        def decode_run(i: int) -> None:
            # The first run reuses the open reader; the others open their own.
            own = reader if i == 0 else decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            out[offsets[i]:offsets[i + 1]] = own.get_batch(runs[i]).asnumpy()

        with ThreadPoolExecutor(len(runs), thread_name_prefix="video-decode") as pool:
            for future in [pool.submit(decode_run, i) for i in range(len(runs))]:
                future.result()
        return out
    except (decord.DECORDError, RuntimeError) as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: frames could not be decoded ({exc})") from exc


def _frame_shape(reader) -> tuple[int, int]:
    """(height, width) from the stream header, without decoding a frame."""
    # decord has no header API: decode the first frame (a key frame, cheap) before committing to N of them.
    shape = reader.next().shape
    reader.seek(0)
    return shape[0], shape[1]


def _check_length(seconds: float, start: float | None, limits: MediaLimits, label: str) -> None:
    if seconds > limits.max_video_seconds:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} is {seconds:.0f} s long; the limit is "
                           f"{limits.max_video_seconds:.0f} s")
    if start is not None and start >= seconds:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: start ({start}s) is past its end ({seconds:.1f}s)")


def _check_frame_size(width: int, height: int, limits: MediaLimits, label: str) -> None:
    if width * height > limits.max_image_pixels:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} frames are {width}x{height}; the limit is "
                           f"{limits.max_image_pixels:,} pixels per frame")


def _decode_gif(data: bytes, limits: MediaLimits, num_frames: int, start: float | None, end: float | None,
                label: str) -> np.ndarray:
    """An animated (or still) GIF as a clip: fps = frames / total display time. Two passes over the file: one reads
    the frame durations (PIL composites each frame onto the previous as it goes, so this decodes them), one stops at
    the sampled frames; frames are converted as PIL composites them (disposal, local palettes), alpha over white."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # lmdeploy sets it globally; a truncated GIF must still be refused
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            gif = Image.open(io.BytesIO(data), formats=["GIF"])
            total_ms = 0
            count = 0
            for frame in ImageSequence.Iterator(gif):
                # A frame reaching past the logical screen grows the canvas (PIL, like browsers, keeps it): check
                # before the next step decodes into it.
                _check_frame_size(frame.width, frame.height, limits, label)
                total_ms += frame.info.get("duration") or GIF_DEFAULT_FRAME_MS
                count += 1
                if total_ms > limits.max_video_seconds * 1000:  # stop reading: it is too long whatever follows
                    raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} is over {limits.max_video_seconds:.0f} s "
                                       "long (the limit)")
            if count < 1:
                raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} has no frames")
            seconds = total_ms / 1000
            _check_length(seconds, start, limits, label)
            indices = sample_indices(count, count / seconds, num_frames, start, end)
            # Rewound once, then forward only (indices ascend); the canvas has its final size from the first pass.
            out = np.empty((len(indices), gif.height, gif.width, 3), dtype=np.uint8)
            for i, index in enumerate(indices):
                if i and index == indices[i - 1]:
                    out[i] = out[i - 1]
                    continue
                gif.seek(index)
                out[i] = np.asarray(to_rgb(gif))
            return out
    except ServingError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} could not be read as an animated GIF (truncated or "
                           f"corrupt: {exc})") from exc
