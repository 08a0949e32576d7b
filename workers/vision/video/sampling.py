"""Which frames a clip gives, shared by every decoder: InternVL's segment-midpoint rule, the split of the sampled
frames into runs decoded in parallel, and the limits on a clip's length and frame size."""

from __future__ import annotations

import numpy as np

from common.errors import ErrorCode, ServingError
from workers.limits import MediaLimits
from workers.vision.tiling import usable_cores


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


def check_length(seconds: float, start: float | None, limits: MediaLimits, label: str) -> None:
    if seconds > limits.max_video_seconds:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} is {seconds:.0f} s long; the limit is "
                           f"{limits.max_video_seconds:.0f} s")
    if start is not None and start >= seconds:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label}: start ({start}s) is past its end ({seconds:.1f}s)")


def check_frame_size(width: int, height: int, limits: MediaLimits, label: str) -> None:
    if width * height > limits.max_image_pixels:
        raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} frames are {width}x{height}; the limit is "
                           f"{limits.max_image_pixels:,} pixels per frame")
