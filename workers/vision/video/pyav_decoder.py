"""PyAV (FFmpeg 8): decode only the sampled frames and the frames they reference, in runs of GOPs in parallel threads,
where the pixels equal decord's (the codecs and formats below); `NotExact` hands a file to decord.

Skipping: a frame that is neither sampled nor a reference for other frames (x264's default B-frames, about half of
common H.264) is dropped by the decoder (`skip_frame` NONREF, set per packet), and each GOP stops after its last
sampled frame. Skipped frames feed no other frame, so the pixels are unchanged.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from workers.limits import MediaLimits
from workers.vision.tiling import frame_tile
from workers.vision.video import sampling
from workers.vision.video.sampling import check_frame_size, check_length, sample_indices, split_at_key_frames


# Decoders that are bit-exact by their specification, and 8-bit formats whose RGB conversion by PyAV's FFmpeg equals
# decord's (checked in tests/test_video_exact.py; 10-bit differs). Anything else is decoded with decord. AV1 is
# bit-exact too; its decoders go by their own names (libdav1d here), and decord's FFmpeg 4.1 has none.
EXACT_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1"})
# Decoders that apply `skip_frame` to the packet just sent. libdav1d applies it when a frame comes out, frames later
# with its delay, so it would drop sampled frames: it decodes every frame.
SKIPS_PER_PACKET = frozenset({"h264", "hevc", "vp8", "vp9"})
EXACT_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv444p"})


class NotExact(Exception):
    """PyAV cannot promise decord's frames for this file: decode it with decord."""


def decode_skipping(data: bytes, limits: MediaLimits, num_frames: int, start: float | None, end: float | None,
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
                raise NotExact
            # Index pass (demuxing only, ~10 ms a minute of 1080p): decord's frame i is the i-th packet by pts.
            index = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size]
            fps, width, height = float(stream.average_rate), stream.codec_context.width, stream.codec_context.height
            stream_index = stream.index  # (read while open: a closed container's streams are gone)
            skip_unneeded = name in SKIPS_PER_PACKET
    except av.FFmpegError as exc:
        raise NotExact from exc
    pts = [p for p, _ in index]
    if not pts or None in pts or len(set(pts)) != len(pts):
        raise NotExact  # no frames (decord says so), or no usable timestamps
    check_length(len(pts) / fps, start, limits, label)
    check_frame_size(width, height, limits, label)
    indices = sample_indices(len(pts), fps, num_frames, start, end)
    by_pts = sorted(pts)
    position = sorted(range(len(pts)), key=pts.__getitem__)  # frame index -> packet position in decode order
    # Clean key frames: every packet before shows before every packet from it on, so the frames from it on are
    # exactly frame indices >= its position, and a decoder can start there (packet 0 in any case).
    later_min = list(itertools.accumulate(reversed(pts), min))[::-1]
    earlier_max = list(itertools.accumulate(pts, max))
    cuts = [0] + [k for k, (_, key) in enumerate(index) if k and key and earlier_max[k - 1] < later_min[k]]
    runs = split_at_key_frames(indices, cuts, parts, min_cost=sampling.MIN_PIXELS_PER_PART // (width * height) + 1)
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
            raise NotExact
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
        raise NotExact from exc  # decord decides: the same frames or the same error as before
    if slots:
        raise NotExact  # a sampled frame never came out
    return shared["out"]


def why_unreadable(data: bytes, label: str) -> str:
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
