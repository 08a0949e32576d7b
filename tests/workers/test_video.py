"""Video frame sampling and decoding, on clips generated here with PyAV."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.errors import ErrorCode, ServingError
# before anything loads decord (see the module): the clips are made with PyAV
from tests.support.video_samples import COLOURS, colour_gif, empty_video, gop_video, gray_video, make_gif
from workers.settings import MediaLimits
from workers.vision.video import decode_video, sample_indices, split_at_key_frames


def model_card_get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    """InternVL model card's `get_index`, restated here from its documented formula because no installed package
    ships it: segment midpoints of [round(start*fps), round(end*fps)] clamped to [first_idx, max_frame]."""
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)])


@pytest.mark.parametrize("frames", [1, 2, 7, 30, 31, 300, 1799, 9000])
@pytest.mark.parametrize("fps", [10.0, 23.976, 25.0, 29.97, 60.0])
@pytest.mark.parametrize("n", [1, 4, 8, 16, 32])
def test_indices_equal_model_card(frames, fps, n):
    assert sample_indices(frames, fps, n) == model_card_get_index(None, fps, frames - 1, num_segments=n).tolist()


@pytest.mark.parametrize("bound", [(0.0, 1.0), (0.5, 2.25), (1.0, 1000.0), (2.05, 2.95), (0.0, 0.1)])
def test_indices_with_bounds_equal_model_card(bound):
    for n in (1, 3, 8, 32):
        ours = sample_indices(300, 29.97, n, *bound)
        assert ours == model_card_get_index(bound, 29.97, 299, num_segments=n).tolist()


@pytest.mark.parametrize(("fmt", "codec"), [("mp4", None), ("webm", None), ("webm", "libsvtav1"),
                                            ("mp4", "libsvtav1"), ("mp4", "libx265")],
                         ids=["h264", "vp9", "av1-webm", "av1-mp4", "hevc"])
def test_decodes_exactly_the_sampled_frames(fmt, codec):
    data = gray_video(fmt, frames=30, fps=10, codec=codec)
    frames = decode_video(data, MediaLimits(), num_frames=4)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    expected = [(k * 8) % 256 for k in sample_indices(30, 10.0, 4)]
    got = [int(round(float(f.mean()))) for f in frames]
    assert all(abs(g - e) <= 3 for g, e in zip(got, expected, strict=True)), (got, expected)


def test_bounds_select_the_segment():
    frames = decode_video(gray_video("mp4", frames=30, fps=10), MediaLimits(), num_frames=2, start=1.0, end=2.0)
    expected = [(k * 8) % 256 for k in sample_indices(30, 10.0, 2, 1.0, 2.0)]
    assert [int(round(float(f.mean()))) for f in frames] == pytest.approx(expected, abs=3)


@pytest.mark.parametrize("data,code,match", [
    (b"this is a text file renamed to clip.mp4\n" * 10, ErrorCode.INVALID_VIDEO, "could not be read"),
    (None, ErrorCode.INVALID_VIDEO, "could not be read|no frames"),
])
def test_unreadable_and_empty_videos_are_refused(data, code, match):  # None: a container with no frames
    with pytest.raises(ServingError, match=match) as info:
        decode_video(data if data is not None else empty_video(), MediaLimits(), num_frames=4, label="video 1")
    assert info.value.code == code and "video 1" in info.value.message


def test_a_codec_this_server_cannot_decode_is_named():
    """FFmpeg knows MPEG-5 EVC but has no decoder for it here: the error says which codec, not 'no video stream'."""
    data = gray_video("mp4", frames=10, fps=10).replace(b"avc1", b"evc1")  # the same stream, labelled EVC
    with pytest.raises(ServingError, match="evc") as info:
        decode_video(data, MediaLimits(), num_frames=4, label="video 1")
    assert info.value.code == ErrorCode.INVALID_VIDEO and "video 1" in info.value.message
    assert "cannot decode" in info.value.message, info.value.message


def test_too_long_and_reversed_segments_are_refused():
    data = gray_video("mp4", frames=30, fps=10)
    with pytest.raises(ServingError, match="3 s long; the limit is 2 s") as info:
        decode_video(data, MediaLimits(max_video_seconds=2), num_frames=4)
    assert info.value.code == ErrorCode.INVALID_VIDEO
    with pytest.raises(ServingError, match="after start"):
        decode_video(data, MediaLimits(), num_frames=4, start=2.0, end=1.0)


def test_split_cuts_only_between_gops_and_balances_work():
    keys = list(range(0, 1800, 250))  # the bench clip: 60 s at 30 fps, a key frame every 250 frames
    indices = sample_indices(1800, 30.0, 32)
    for parts in (1, 2, 3, 4, 8, 100):
        runs = split_at_key_frames(indices, keys, parts)
        assert [i for run in runs for i in run] == indices and 1 <= len(runs) <= min(parts, len(keys))
        gop_of = [{max(k for k in keys if k <= i) for i in run} for run in runs]
        assert all(not (a & b) for a, b in zip(gop_of, gop_of[1:])), "a GOP was split between two runs"
    assert [len({max(k for k in keys if k <= i) for i in run}) for run in split_at_key_frames(indices, keys, 2)] \
        == [4, 4]


@pytest.mark.parametrize("indices,keys,parts,min_cost,expected_runs", [
    ([1, 2, 3], [], 4, 1, 1),                    # no key-frame index: nothing to cut at
    ([0, 0, 5, 5, 12, 12], [0, 10], 4, 1, 2),    # duplicates stay together; two GOPs at most two runs
    ([1, 11, 21, 31], [0, 10, 20, 30], 4, 1, 4),
    ([1, 11, 21, 31], [0, 10, 20, 30], 4, 4, 2),  # 8 frames of work, at least 4 each: two runs
    ([5, 15], [10], 2, 1, 2),                     # before the first key frame counts as its own group
])
def test_split_edge_cases(indices, keys, parts, min_cost, expected_runs):
    runs = split_at_key_frames(indices, keys, parts, min_cost)
    assert [i for run in runs for i in run] == indices and len(runs) == expected_runs


@pytest.mark.parametrize("codec,bframes", [("libx264", True), ("libx264", False), ("libvpx-vp9", False)])
@pytest.mark.parametrize("parts", [2, 3, 4])
def test_parallel_runs_give_the_same_pixels_as_one_reader(monkeypatch, codec, bframes, parts):
    import decord

    import workers.vision.video as video

    data = gop_video(codec=codec, bframes=bframes)
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    assert len(reader.get_key_indices()) >= 4, "the clip must have several GOPs for this test to mean anything"
    for num_frames, bounds in [(8, (None, None)), (16, (None, None)), (5, (1.2, 4.9))]:
        expected = reader.get_batch(sample_indices(len(reader), float(reader.get_avg_fps()), num_frames,
                                                   *bounds)).asnumpy()
        monkeypatch.setattr(video.sampling, "MIN_PIXELS_PER_PART", 1)
        got = decode_video(data, MediaLimits(), num_frames, *bounds, max_parts=parts)
        assert got.shape == expected.shape and np.array_equal(got, expected)
        monkeypatch.setattr(video.sampling, "MIN_PIXELS_PER_PART", 10**12)  # too little work: one reader, same pixels
        assert np.array_equal(decode_video(data, MediaLimits(), num_frames, *bounds, max_parts=parts), expected)


def test_parallel_decoding_reports_undecodable_frames(monkeypatch):
    import workers.vision.video as video

    monkeypatch.setattr(video.sampling, "MIN_PIXELS_PER_PART", 1)
    data = bytearray(gop_video(codec="libx264", bframes=False))
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # second half of the file zeroed
    with pytest.raises(ServingError) as info:
        decode_video(bytes(data), MediaLimits(), 16, max_parts=2)
    assert info.value.code == ErrorCode.INVALID_VIDEO


# Animated GIFs as video (the UI sends .gif as a video part; decord cannot read GIF, PIL decodes them).

def frame_colours(frames: np.ndarray) -> list[tuple[int, ...]]:
    assert (frames == frames[:, :1, :1]).all(), "each frame should be one solid colour"
    return [tuple(int(c) for c in f[0, 0]) for f in frames]


@pytest.mark.parametrize("count,n", [(12, 5), (12, 12), (3, 8), (1, 4)])
def test_gif_decodes_exactly_the_sampled_frames(count, n):
    frames = decode_video(colour_gif(count), MediaLimits(), num_frames=n)
    assert frames.shape == (n, 30, 40, 3) and frames.dtype == np.uint8
    expected = model_card_get_index(None, 10.0, count - 1, num_segments=n)  # 100 ms a frame: 10 fps
    assert frame_colours(frames) == [COLOURS[k] for k in expected]


def test_gif_bounds_use_the_frame_durations():
    # 12 frames of 50 ms: 20 fps, 0.6 s; [0.1 s, 0.4 s] is frames 2..8.
    frames = decode_video(colour_gif(12, duration=50), MediaLimits(), num_frames=3, start=0.1, end=0.4)
    expected = model_card_get_index((0.1, 0.4), 20.0, 11, num_segments=3)
    assert frame_colours(frames) == [COLOURS[k] for k in expected]
    # Uneven durations: fps is frames / total time (6 frames in 1.2 s: 5 fps), as for a variable-rate video.
    frames = decode_video(colour_gif(6, duration=[100, 300, 100, 300, 100, 300]), MediaLimits(), num_frames=2,
                          start=0.0, end=0.6)
    assert frame_colours(frames) == [COLOURS[k] for k in model_card_get_index((0.0, 0.6), 5.0, 5, num_segments=2)]


def test_gif_frames_are_composited_as_shown():
    # Frames differ only in a moving square, so PIL's writer stores small delta rectangles (and transparency);
    # each decoded frame must be the whole picture a viewer shows.
    def picture(k: int) -> Image.Image:
        img = Image.new("RGB", (32, 32), (255, 0, 0))
        img.paste((0, 0, 255), (k * 8, k * 8, k * 8 + 8, k * 8 + 8))
        return img

    pictures = [picture(k) for k in range(4)]
    frames = decode_video(make_gif(pictures), MediaLimits(), num_frames=5)
    expected = model_card_get_index(None, 10.0, 3, num_segments=5)
    assert {1, 2} <= set(expected)  # frames stored as delta rectangles are among those checked
    assert np.array_equal(frames, np.stack([np.asarray(pictures[k]) for k in expected]))


def test_gif_limits_and_broken_gifs_are_refused():
    data = colour_gif(12, duration=500)  # 6 s
    with pytest.raises(ServingError, match="over 5 s long") as info:
        decode_video(data, MediaLimits(max_video_seconds=5), num_frames=4, label="video 1")
    assert info.value.code == ErrorCode.INVALID_VIDEO and "video 1" in info.value.message
    with pytest.raises(ServingError, match="start .* is past its end") as info:
        decode_video(data, MediaLimits(), num_frames=4, start=7.0)
    with pytest.raises(ServingError, match="40x30; the limit is 1,000 pixels") as info:
        decode_video(data, MediaLimits(max_image_pixels=1000), num_frames=4)
    assert info.value.code == ErrorCode.INVALID_VIDEO
    for broken in (data[: len(data) // 2], b"GIF89a" + b"\x00" * 5, b"GIF89a not really a gif at all"):
        with pytest.raises(ServingError, match="could not be read as an animated GIF") as info:
            decode_video(broken, MediaLimits(), num_frames=4, label="video 2")
        assert info.value.code == ErrorCode.INVALID_VIDEO and "video 2" in info.value.message
