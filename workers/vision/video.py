"""Video: sample N frames by InternVL's segment-midpoint rule and decode just those.

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
import itertools
import re
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFile, ImageSequence

from common.errors import ErrorCode, ServingError
from workers.limits import MediaLimits
from workers.vision.images import to_rgb
from workers.vision.tiling import frame_tile, square_tiles_of_frames, usable_cores

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
    return max(1, min(usable_cores(), 4))


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


# Decoders that are bit-exact by their specification, and 8-bit formats whose RGB conversion by PyAV's FFmpeg equals
# decord's (checked in tests/test_video_exact.py; 10-bit differs). Anything else is decoded with decord. AV1 is
# bit-exact too; its decoders go by their own names (libdav1d here), and decord's FFmpeg 4.1 has none.
EXACT_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1"})
# Decoders that apply `skip_frame` to the packet just sent. libdav1d applies it when a frame comes out, frames later
# with its delay, so it would drop sampled frames: it decodes every frame.
SKIPS_PER_PACKET = frozenset({"h264", "hevc", "vp8", "vp9"})
EXACT_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv444p"})


class _NotExact(Exception):
    """PyAV cannot promise decord's frames for this file: decode it with decord."""


class _DecordCannotOpen(Exception):
    """decord finds no video stream it can decode in the file."""


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
        frames = _decode_gif(data, limits, num_frames, start, end, label, check)
    else:
        parts = default_parts() if max_parts is None else max_parts
        args = (data, limits, num_frames, start, end, label, parts)
        try:
            return _decode_skipping(*args, tile_size, check)
        except _NotExact:
            pass
        try:
            frames = _decode_decord(*args, check)
        except _DecordCannotOpen:  # a codec decord's FFmpeg 4.1 lacks: PyAV's FFmpeg may have it
            try:
                return _decode_skipping(*args, tile_size, check, exact=False)
            except _NotExact as exc:
                raise ServingError(ErrorCode.INVALID_VIDEO, _why_unreadable(data, label)) from exc
    return frames if tile_size is None else square_tiles_of_frames(frames, tile_size)


def _decode_skipping(data: bytes, limits: MediaLimits, num_frames: int, start: float | None, end: float | None,
                     label: str, parts: int, tile_size: int | None, check: Callable[[], None],
                     exact: bool = True) -> np.ndarray:
    """PyAV: decode only reference frames and sampled frames, each GOP up to its last sampled frame. `exact`: only
    where the frames equal decord's (else: any codec and pixel format, for files decord cannot read at all)."""
    import av  # imported here, like decord: a text-only worker never loads FFmpeg

    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            stream = container.streams.best("video")
            name = getattr(stream.codec_context, "name", None) if stream is not None else None
            if name is None or (exact and name not in EXACT_CODECS) or not stream.average_rate:
                raise _NotExact
            # Index pass (demuxing only, ~10 ms a minute of 1080p): decord's frame i is the i-th packet by pts.
            index = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size]
            fps, width, height = float(stream.average_rate), stream.codec_context.width, stream.codec_context.height
            stream_index = stream.index  # (read while open: a closed container's streams are gone)
            skip_unneeded = name in SKIPS_PER_PACKET
    except av.FFmpegError as exc:
        raise _NotExact from exc
    pts = [p for p, _ in index]
    if not pts or None in pts or len(set(pts)) != len(pts):
        raise _NotExact  # no frames (decord says so), or no usable timestamps
    _check_length(len(pts) / fps, start, limits, label)
    _check_frame_size(width, height, limits, label)
    indices = sample_indices(len(pts), fps, num_frames, start, end)
    by_pts = sorted(pts)
    position = sorted(range(len(pts)), key=pts.__getitem__)  # frame index -> packet position in decode order
    # Clean key frames: every packet before shows before every packet from it on, so the frames from it on are
    # exactly frame indices >= its position, and a decoder can start there (packet 0 in any case).
    later_min = list(itertools.accumulate(reversed(pts), min))[::-1]
    earlier_max = list(itertools.accumulate(pts, max))
    cuts = [0] + [k for k, (_, key) in enumerate(index) if k and key and earlier_max[k - 1] < later_min[k]]
    runs = split_at_key_frames(indices, cuts, parts, min_cost=MIN_PIXELS_PER_PART // (width * height) + 1)
    slots: dict[int, list[int]] = {}
    for i, frame_index in enumerate(indices):
        slots.setdefault(by_pts[frame_index], []).append(i)
    shared: dict[str, object] = {}
    lock = threading.Lock()

    def store(frame) -> None:
        # The first frame fixes the shape (a 90/270-degree display rotation swaps it); all must agree.
        rotation = frame.rotation
        if (exact and frame.format.name not in EXACT_FORMATS) or (frame.width, frame.height) != (width, height) or \
                shared.setdefault("rotation", rotation) != rotation:
            raise _NotExact
        pixels = frame.to_ndarray(format="rgb24")
        if rotation % 90 == 0 and rotation % 360:  # decord turns 180; at 90/270 its frames are garbage (4 channels)
            pixels = np.rot90(pixels, rotation // 90)
        if tile_size is not None:
            pixels = frame_tile(pixels, tile_size)
        with lock:
            if "out" not in shared:  # allocated once, so that only the sampled frames are ever held, once
                shared["out"] = np.empty((len(indices), *pixels.shape), dtype=np.uint8)
        for i in slots.pop(frame.pts):
            shared["out"][i] = pixels

    def decode_run(run: list[int], threads: int) -> None:
        gop = np.searchsorted(cuts, run, side="right") - 1
        # Per GOP: decode from its first packet to the last sampled one (in decode order), then drain.
        spans = sorted({(cuts[g], max(position[i] for i, h in zip(run, gop, strict=True) if h == g)) for g in gop})
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            context = container.streams[stream_index].codec_context
            context.thread_type, context.thread_count = ("SLICE", 1) if threads == 1 else ("FRAME", threads)
            todo = iter(spans)
            first, last = next(todo)
            k = -1
            for packet in container.demux(container.streams[stream_index]):
                if not packet.size:
                    continue
                check()
                k += 1
                if k < first:
                    continue  # demuxed, not decoded: reading a packet costs microseconds
                # Frames nobody asked for and nothing references are dropped undecoded.
                if skip_unneeded:
                    context.skip_frame = "DEFAULT" if packet.pts in slots else "NONREF"
                frames = context.decode(packet)
                if k == last:  # drained: this GOP's sampled frames are all out; the decoder restarts at a key
                    frames += context.decode(None)
                    context.flush_buffers()
                for frame in frames:
                    if frame.pts in slots:
                        store(frame)
                if k == last:
                    if (span := next(todo, None)) is None:
                        return
                    first, last = span

    try:
        if len(runs) == 1:
            decode_run(runs[0], 0)  # one decoder, FFmpeg's frame threads (0 = as many as cores)
        else:
            with ThreadPoolExecutor(len(runs), thread_name_prefix="video-decode") as pool:
                for future in [pool.submit(decode_run, run, 1) for run in runs]:
                    future.result()
    except av.FFmpegError as exc:
        raise _NotExact from exc  # decord decides: the same frames or the same error as before
    if slots:
        raise _NotExact  # a sampled frame never came out
    return shared["out"]


def _decode_decord(data: bytes, limits: MediaLimits, num_frames: int, start: float | None, end: float | None,
                   label: str, parts: int, check: Callable[[], None]) -> np.ndarray:
    """decord readers, one per run of GOPs (the reference's library: its pixels by definition)."""
    import decord  # imported here: loading its native library costs time a text-only worker never needs

    try:
        # One decoding thread per reader when runs go in parallel (they use the cores; FFmpeg's frame threads on
        # top only add overhead), else FFmpeg's own threading (0 = as many as cores).
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1 if parts > 1 else 0)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        raise _DecordCannotOpen from exc
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


def _why_unreadable(data: bytes, label: str) -> str:
    """What neither decoder could read: no video at all, or a codec this server's FFmpeg has no decoder for (named
    as FFmpeg describes the stream, e.g. 'evc')."""
    import av

    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            stream = container.streams.best("video")
            if stream is not None and stream.codec_context is None:
                level = av.logging.get_level()
                av.logging.set_level(av.logging.INFO)  # FFmpeg describes the streams through its log
                try:
                    described = re.search(r"Video: ([\w-]+)", container.dumps_format())
                finally:
                    av.logging.set_level(level)
                codec = described.group(1) if described and described.group(1) != "none" else "an unknown codec"
                return (f"{label} is video in {codec}, which this server cannot decode: convert it to H.264, "
                        "HEVC, VP9 or AV1")
            if stream is not None:
                return f"{label}: its {stream.codec_context.name} video has no frames that could be decoded"
    except av.FFmpegError:
        pass
    return f"{label} could not be read as a video (no video stream, or no frames)"


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
                label: str, check: Callable[[], None]) -> np.ndarray:
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
                check()
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
                check()
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
