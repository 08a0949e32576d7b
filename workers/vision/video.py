"""Video: sample N frames by InternVL's segment-midpoint rule and decode just those, in one decord batch.

Frame rule (InternVL model card `get_index`): clamp the optional [start, end] seconds to frame indices
[round(start*fps) (at least 0), round(end*fps) (at most the last frame)], split that span into N equal segments
and take, for segment i, int(first + seg/2 + round(seg*i)). Python's round is round-half-even, like numpy's.
"""

from __future__ import annotations

import io

import numpy as np

from common.errors import ErrorCode, ServingError
from workers.settings import MediaLimits


def sample_indices(frame_count: int, fps: float, num_segments: int, start: float | None = None,
                   end: float | None = None) -> list[int]:
    if frame_count < 1 or num_segments < 1:
        raise ValueError("need at least one frame and one segment")
    first = 0 if start is None else max(0, round(start * fps))
    last = frame_count - 1 if end is None else min(round(end * fps), frame_count - 1)
    seg = (last - first) / num_segments
    return [int(first + seg / 2 + round(seg * i)) for i in range(num_segments)]


def decode_video(data: bytes, limits: MediaLimits, num_frames: int, start: float | None = None,
                 end: float | None = None, label: str = "video") -> np.ndarray:
    """Bytes of a video file -> uint8 frames [num_frames, H, W, 3] (RGB), or a ServingError that says why."""
    import decord  # imported here: loading its native library costs time a text-only worker never needs

    if len(data) > limits.max_media_bytes:
        raise ServingError(ErrorCode.UPLOAD_TOO_LARGE, f"{label} is {len(data) / 1048576:.1f} MB; the limit is "
                           f"{limits.max_media_bytes / 1048576:.1f} MB")
    if start is not None and end is not None and end <= start:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: end ({end}s) must be after start ({start}s)")
    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=0)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} could not be read as a video (no decodable video "
                           "stream, or no frames)") from exc
    count = len(reader)
    fps = float(reader.get_avg_fps())
    if count < 1 or not fps > 0:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} has no frames")
    seconds = count / fps
    if seconds > limits.max_video_seconds:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} is {seconds:.0f} s long; the limit is "
                           f"{limits.max_video_seconds:.0f} s")
    if start is not None and start >= seconds:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: start ({start}s) is past its end ({seconds:.1f}s)")
    height, width = _frame_shape(reader)
    if width * height > limits.max_image_pixels:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} frames are {width}x{height}; the limit is "
                           f"{limits.max_image_pixels:,} pixels per frame")
    indices = sample_indices(count, fps, num_frames, start, end)
    try:
        return reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: frames could not be decoded ({exc})") from exc


def _frame_shape(reader) -> tuple[int, int]:
    """(height, width) from the stream header, without decoding a frame."""
    # decord has no header API: decode the first frame (a key frame, cheap) before committing to N of them.
    shape = reader.next().shape
    reader.seek(0)
    return shape[0], shape[1]
