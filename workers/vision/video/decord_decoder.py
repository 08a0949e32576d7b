"""decord readers, one per run of GOPs: the InternVL model card's reference library, so its pixels by definition. Used
for what PyAV cannot promise decord's pixels for (pyav_decoder.py), and it gives the errors for unreadable files."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.errors import ErrorCode, ServingError
from workers.limits import MediaLimits
from workers.vision.video import sampling
from workers.vision.video.sampling import check_frame_size, check_length, sample_indices, split_at_key_frames


class DecordCannotOpen(Exception):
    """decord finds no video stream it can decode in the file."""


def decode_decord(data: bytes, limits: MediaLimits, num_frames: int, start: float | None, end: float | None,
                   label: str, parts: int, check: Callable[[], None]) -> np.ndarray:
    """decord readers, one per run of GOPs (the reference's library: its pixels by definition)."""
    import decord  # imported here: loading its native library costs time a text-only worker never needs

    try:
        # One decoding thread per reader when runs go in parallel (they use the cores; FFmpeg's frame threads on
        # top only add overhead), else FFmpeg's own threading (0 = as many as cores).
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1 if parts > 1 else 0)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        raise DecordCannotOpen from exc
    count = len(reader)
    fps = float(reader.get_avg_fps())
    if count < 1 or not fps > 0:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} has no frames")
    check_length(count / fps, start, limits, label)
    height, width = _frame_shape(reader)
    check_frame_size(width, height, limits, label)
    indices = sample_indices(count, fps, num_frames, start, end)
    try:
        runs = [indices]
        if parts > 1:
            runs = split_at_key_frames(indices, reader.get_key_indices(), parts,
                                       min_cost=sampling.MIN_PIXELS_PER_PART // (width * height) + 1)
        # Preallocated so that only the sampled frames are ever held, once.
        out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        offsets = np.cumsum([0] + [len(run) for run in runs]).tolist()

        def decode_run(i: int) -> None:
            # The first run reuses the open reader; the others open their own.
            own = reader if i == 0 else decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            run = runs[i]
            for at in range(0, len(run), _DECORD_STEP):  # ascending: each step continues where the last stopped
                check()
                chunk = run[at:at + _DECORD_STEP]
                out[offsets[i] + at:offsets[i] + at + len(chunk)] = own.get_batch(chunk).asnumpy()

        if len(runs) == 1:
            decode_run(0)
            return out
        with ThreadPoolExecutor(len(runs), thread_name_prefix="video-decode") as pool:
            for future in [pool.submit(decode_run, i) for i in range(len(runs))]:
                future.result()
        return out
    except (decord.DECORDError, RuntimeError) as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: frames could not be decoded ({exc})") from exc


_DECORD_STEP = 4  # frames per decord call between two cancellation checks


def _frame_shape(reader) -> tuple[int, int]:
    """(height, width) from the stream header, without decoding a frame."""
    # decord has no header API: decode the first frame (a key frame, cheap) before committing to N of them.
    shape = reader.next().shape
    reader.seek(0)
    return shape[0], shape[1]
