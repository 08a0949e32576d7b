"""Video clips for the decoding tests, made on the spot with PyAV (one encoder, `encode_video`) and PIL (GIFs). Each
maker draws frames that identify themselves once decoded (a gray level, a colour, noise rolled sideways).

Import this module before anything loads decord: decord bundles its own older FFmpeg, and once it is loaded first,
PyAV's libvpx encoder fails to open (EINVAL).
"""

from __future__ import annotations

import fractions
import io
from collections.abc import Iterable

import av
import numpy as np
from PIL import Image

from tests.support.media_samples import gradient

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255),
           (0, 0, 0), (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 0)]
CONTAINER = {"libx264": "mp4", "mpeg4": "mp4", "libvpx-vp9": "webm", "libvpx": "webm"}


def encode_video(frames: Iterable[np.ndarray], size: tuple[int, int], codec: str = "libx264", fmt: str | None = None,
                 fps: int = 10, pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                 gop: int | None = None, first_pts: int | None = None, rotation: int = 0) -> bytes:
    """`frames`: RGB arrays of `size` (width, height). `options`: the encoder's own (x264: qp, bf, preset...); none
    are set when None (options on libvpx fail to open once decord's FFmpeg is loaded). `first_pts`: explicit
    timestamps from there, one per frame at `fps`."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt or CONTAINER[codec]) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        if options is not None:
            stream.options = options
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        container.start_encoding()  # the header: a clip of no frames is still a real container
        for k, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if first_pts is not None:
                frame.pts, frame.time_base = first_pts + k, fractions.Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def gray_video(fmt: str = "mp4", frames: int = 30, fps: int = 10, size: tuple[int, int] = (64, 48),
               codec: str | None = None) -> bytes:
    """Frame k is filled with gray level (k * 8) % 256. H.264 is lossless (qp 0), so levels decode exactly."""
    codec = codec or {"mp4": "libx264", "webm": "libvpx-vp9"}[fmt]
    levels = (np.full((size[1], size[0], 3), (k * 8) % 256, dtype=np.uint8) for k in range(frames))
    return encode_video(levels, size, codec, fmt, fps,
                        options={"qp": "0", "preset": "ultrafast"} if codec == "libx264" else None)


def gradient_video(fmt: str, codec: str, frames: int) -> bytes:
    """A 64x48 gradient turning 40 degrees a frame at 8 fps; `frames=0` makes a valid container with no frame."""
    turning = (np.asarray(gradient((64, 48)).rotate(i * 40)) for i in range(frames))
    return encode_video(turning, (64, 48), codec, fmt, fps=8)


def empty_video() -> bytes:
    """A valid mp4 container with a video stream but no frames."""
    return encode_video((), (64, 48))


def _rolled_noise(seed: int, high: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (size[1], size[0], 3), dtype=np.uint8)


def gop_video(frames: int = 60, gop: int = 10, codec: str = "libx264", bframes: bool = True) -> bytes:
    """A key frame every `gop` frames, noisy content (so a wrong reference frame shows) and, for H.264, B-frames
    (decode order differs from display order)."""
    base = _rolled_noise(1, 256, (64, 48))
    content = (np.roll(base, 3 * k, axis=1) // 2 + np.uint8(k * 4 % 128) for k in range(frames))
    options = ({"keyint_min": str(gop), "sc_threshold": "0", "bf": "2" if bframes else "0", "preset": "medium"}
               if codec == "libx264" else None)
    return encode_video(content, (64, 48), codec, "mp4" if codec == "libx264" else "webm", options=options, gop=gop)


def distinct_video(codec: str = "libx264", fmt: str = "mp4", pix_fmt: str = "yuv420p", options: dict | None = None,
                   frames: int = 40, size: tuple[int, int] = (64, 48), first_pts: int = 0, rotation: int = 0) -> bytes:
    """Every frame distinct (noise rolled sideways, brightness ramp); pts from `first_pts` at 10 fps."""
    base = _rolled_noise(2, 200, size)
    content = (np.roll(base, 3 * k, axis=1) + np.uint8(k) for k in range(frames))
    return encode_video(content, size, codec, fmt, pix_fmt=pix_fmt, options=options or {}, first_pts=first_pts,
                        rotation=rotation)


def slow_video() -> bytes:
    """A 720p H.264 clip with one key frame: reaching its sampled frames means decoding nearly all 400 frames."""
    base = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    content = (np.roll(base, 7 * i, axis=1) for i in range(400))
    return encode_video(content, (1280, 720), fps=25, options={"g": "1000", "keyint_min": "1000", "preset": "ultrafast",
                                                               "crf": "35", "sc_threshold": "0"})


def make_gif(frames: list[Image.Image], duration: int | list[int] = 100) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return buf.getvalue()


def colour_gif(count: int, duration: int | list[int] = 100, size: tuple[int, int] = (40, 30)) -> bytes:
    """Frame k is filled with COLOURS[k], so decoded frames identify themselves."""
    return make_gif([Image.new("RGB", size, COLOURS[k]) for k in range(count)], duration)
