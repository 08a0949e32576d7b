"""PyAV decoding with unreferenced frames skipped (workers/vision/video.py): its frames and pixels must be the ones
the model card's decord gives, on clips generated here whose every frame is distinct."""

from __future__ import annotations

import io

import numpy as np
import pytest

# before anything loads decord (see the module): the clips are made with PyAV
from tests.support.video_samples import colour_gif, distinct_video, gray_video
from workers.settings import MediaLimits
from workers.vision.video import decode_video, sample_indices


X264_BFRAMES = {"bf": "3", "b-pyramid": "normal", "g": "12", "keyint_min": "12", "sc_threshold": "0"}


def h264_reference_flags(data: bytes) -> list[bool]:
    """Per frame in presentation order: is it a reference frame (nal_ref_idc of its first slice != 0)?"""
    import av

    flags = {}
    with av.open(io.BytesIO(data)) as container:
        for packet in container.demux(video=0):
            if not packet.size:
                continue
            raw, i = bytes(packet), 0
            while raw[i + 4] & 0x1F not in (1, 5):  # length-prefixed NAL units; skip SEI and parameter sets
                i += 4 + int.from_bytes(raw[i:i + 4], "big")
            flags[packet.pts] = raw[i + 4] >> 5 != 0
    return [flags[pts] for pts in sorted(flags)]


def decord_frames(data: bytes, num_frames: int, start=None, end=None) -> tuple[np.ndarray, list[int]]:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    indices = sample_indices(len(reader), float(reader.get_avg_fps()), num_frames, start, end)
    return reader.get_batch(indices).asnumpy(), indices


@pytest.fixture
def pyav_only(monkeypatch):
    """Small clips split into runs like long ones, and no silent fallback to decord."""
    import workers.vision.video as video

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to decord")

    monkeypatch.setattr(video.sampling, "MIN_PIXELS_PER_PART", 1)
    monkeypatch.setattr(video, "decode_decord", refuse)


@pytest.mark.parametrize("fmt,first_pts", [("mp4", 0), ("mp4", 7), ("matroska", 13)])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_skipping_decodes_decords_frames_with_b_frames(pyav_only, fmt, first_pts, parts):
    data = distinct_video(fmt=fmt, options=X264_BFRAMES, first_pts=first_pts)
    refs = h264_reference_flags(data)
    for num_frames, bounds in [(8, (None, None)), (13, (None, None)), (5, (1.1, 3.3)), (40, (None, None))]:
        expected, indices = decord_frames(data, num_frames, *bounds)
        got = decode_video(data, MediaLimits(), num_frames, *bounds, max_parts=parts)
        assert got.shape == expected.shape and np.array_equal(got, expected), (num_frames, bounds)
    # The cases above sample unreferenced B-frames (decoded on request) and leave others out (skipped).
    sampled = {i for n in (8, 13) for i in sample_indices(len(refs), 10.0, n)}
    assert any(not refs[i] for i in sampled) and any(not r for i, r in enumerate(refs) if i not in sampled)


@pytest.mark.parametrize("codec,pix_fmt,options,size", [
    ("libx264", "yuv420p", {"x264-params": "colorprim=bt709:transfer=bt709:colormatrix=bt709"}, (66, 50)),
    ("libx264", "yuvj420p", {"x264-params": "fullrange=on", **X264_BFRAMES}, (64, 48)),
    ("libx264", "yuv444p", X264_BFRAMES, (64, 48)),
    ("libx265", "yuv420p", {"x265-params": "log-level=error:keyint=12:bframes=3"}, (64, 48)),
])
def test_skipping_matches_decords_rgb_conversion(pyav_only, codec, pix_fmt, options, size):
    data = distinct_video(codec, pix_fmt=pix_fmt, options=options, size=size)
    expected, _ = decord_frames(data, 10)
    got = decode_video(data, MediaLimits(), 10, max_parts=2)
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_unchecked_formats_are_decoded_with_decord(monkeypatch):
    import workers.vision.video as video

    calls = []
    decord_path = video.decode_decord
    monkeypatch.setattr(video, "decode_decord", lambda *a: calls.append(1) or decord_path(*a))
    # 10-bit: PyAV's FFmpeg converts it to RGB a few levels away from decord's.
    data = distinct_video("libx265", pix_fmt="yuv420p10le", options={"x265-params": "log-level=error"}, frames=10)
    expected, _ = decord_frames(data, 4)
    assert np.array_equal(decode_video(data, MediaLimits(), 4), expected) and calls == [1]
    assert np.array_equal(decode_video(gray_video("mp4", frames=10), MediaLimits(), 4), decord_frames(
        gray_video("mp4", frames=10), 4)[0]) and calls == [1]  # plain H.264: PyAV


def test_display_rotation(pyav_only):
    upright, _ = decord_frames(distinct_video(options=X264_BFRAMES), 6)
    # 180 degrees: as decord turns it.
    data = distinct_video(options=X264_BFRAMES, rotation=180)
    assert np.array_equal(decode_video(data, MediaLimits(), 6), decord_frames(data, 6)[0])
    assert np.array_equal(decode_video(data, MediaLimits(), 6), upright[:, ::-1, ::-1])
    # 90 degrees counterclockwise (a phone held upright): decord returns 4-channel garbage there; we turn the frames.
    got = decode_video(distinct_video(options=X264_BFRAMES, rotation=90), MediaLimits(), 6)
    assert got.shape == (6, 64, 48, 3) and np.array_equal(got, np.rot90(upright, 1, axes=(1, 2)))


def test_tiles_made_while_decoding_equal_tiles_of_the_decoded_frames(pyav_only):
    from workers.vision.tiling import square_tiles_of_frames

    for data in (distinct_video(options=X264_BFRAMES), distinct_video(options=X264_BFRAMES, rotation=90)):
        for parts in (1, 2):
            frames = decode_video(data, MediaLimits(), 9, max_parts=parts)
            tiles = decode_video(data, MediaLimits(), 9, max_parts=parts, tile_size=28)
            assert tiles.shape == (9, 28, 28, 3) and np.array_equal(tiles, square_tiles_of_frames(frames, 28))


def test_tiles_of_the_decord_and_gif_paths_too():
    from workers.vision.tiling import square_tiles_of_frames

    ten_bit = distinct_video("libx265", pix_fmt="yuv420p10le", options={"x265-params": "log-level=error"}, frames=10)
    for data in (ten_bit, colour_gif(12)):
        tiles = decode_video(data, MediaLimits(), 4, tile_size=20)
        assert tiles.shape == (4, 20, 20, 3)
        assert np.array_equal(tiles, square_tiles_of_frames(decode_video(data, MediaLimits(), 4), 20))
