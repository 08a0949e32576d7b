"""Video: sample N frames by InternVL's segment-midpoint rule and decode just those. `decode_video` picks the
decoder; one module each: pyav_decoder.py (the fast path), decord_decoder.py (the reference), gif_decoder.py, and
sampling.py (the frame rule, the runs, the limits) which they share.

Decoding dominates: to reach a frame, H.264 decodes everything from the key frame before it. Two ways to do less:
- Skip what nobody needs (PyAV): a frame that is neither sampled nor a reference for other frames (x264's default
  B-frames, about half of common H.264) is dropped by the decoder (`skip_frame` NONREF, set per packet), and each
  GOP stops after its last sampled frame. Skipped frames feed no other frame, so the pixels are unchanged.
- Split the sampled frames at key frames into up to `max_parts` runs, each decoded in its own thread (the
  decoders release the GIL). A run starts at a clean key frame, as a single sequential reader would.

The reference is the InternVL model card's decord (frame i = the i-th frame in presentation order, i.e. by sorted
packet pts; decord's own FFmpeg 4.1 scaler for RGB). PyAV (FFmpeg 8) gives the very same pixels for the decoders
that are bit-exact by specification and the 8-bit formats checked below (tests/test_video_exact.py compares them with
decord); everything else (other codecs, 10-bit: its RGB conversion differs by a few levels; packets without pts,
size changes, anything PyAV fails on) goes the previous way, decord readers, which also gives the errors for
unreadable files.

Frame rule (InternVL model card `get_index`): clamp the optional [start, end] seconds to frame indices
[round(start*fps) (at least 0), round(end*fps) (at most the last frame)], split that span into N equal segments
and take, for segment i, int(first + seg/2 + round(seg*i)). Python's round is round-half-even, like numpy's.

Animated GIFs (the UI sends .gif as video; decord cannot read GIF) are decoded with PIL by the same rule, their
fps taken from the frames' own display durations.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from common.errors import ErrorCode, ServingError
from workers.limits import MediaLimits
from workers.vision.tiling import square_tiles_of_frames
from workers.vision.video.decord_decoder import DecordCannotOpen, decode_decord
from workers.vision.video.gif_decoder import GIF_MAGIC, decode_gif
from workers.vision.video.pyav_decoder import NotExact, decode_skipping, why_unreadable
from workers.vision.video.sampling import default_parts, sample_indices, split_at_key_frames

__all__ = ["decode_video", "frame_pixels", "sample_indices", "split_at_key_frames"]


def _never() -> None:
    return None


def frame_pixels(data: bytes) -> int:
    """width x height of a video's (or animated GIF's) frames from its headers, without decoding a frame (0 when
    unreadable: decoding then says why)."""
    try:
        if data[:6] in GIF_MAGIC:
            with Image.open(io.BytesIO(data), formats=["GIF"]) as gif:
                return gif.width * gif.height
        import av

        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            stream = container.streams.best("video")
            return 0 if stream is None else stream.codec_context.width * stream.codec_context.height
    except Exception:  # noqa: BLE001 - the decoders report unreadable files with their real cause
        return 0


def decode_video(data: bytes, limits: MediaLimits, num_frames: int, start: float | None = None,
                 end: float | None = None, label: str = "video", max_parts: int | None = None,
                 tile_size: int | None = None, check: Callable[[], None] = _never) -> np.ndarray:
    """Bytes of a video file (or animated GIF) -> uint8 frames [num_frames, H, W, 3] (RGB), or a ServingError that
    says why. With `tile_size`, one tile_size x tile_size tile per frame instead (as `square_tiles_of_frames`
    makes them); the usual path resizes each frame as soon as it is decoded, in its decoding thread, so the resizes
    overlap the decoding and the full-size frames (200 MB for 32 of 1080p) are never all held at once. The file's
    byte size was checked when its bytes arrived (workers/media.py). `check` is called between packets / frames
    and raises to stop the decoding (the request was cancelled)."""
    if start is not None and end is not None and end <= start:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: end ({end}s) must be after start ({start}s)")
    if data[:6] in GIF_MAGIC:
        frames = decode_gif(data, limits, num_frames, start, end, label, check)
    else:
        parts = default_parts() if max_parts is None else max_parts
        args = (data, limits, num_frames, start, end, label, parts)
        try:
            return decode_skipping(*args, tile_size, check)
        except NotExact:
            pass
        try:
            frames = decode_decord(*args, check)
        except DecordCannotOpen:  # a codec decord's FFmpeg 4.1 lacks: PyAV's FFmpeg may have it
            try:
                return decode_skipping(*args, tile_size, check, exact=False)
            except NotExact as exc:
                raise ServingError(ErrorCode.INVALID_VIDEO, why_unreadable(data, label)) from exc
    return frames if tile_size is None else square_tiles_of_frames(frames, tile_size)
