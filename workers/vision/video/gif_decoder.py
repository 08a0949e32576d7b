"""Animated GIFs as clips (the UI sends .gif as video; decord cannot read GIF): decoded with PIL by the same frame
rule, their fps taken from the frames' own display durations."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFile, ImageSequence

from common.errors import ErrorCode, ServingError
from workers.limits import MediaLimits
from workers.vision.images import to_rgb
from workers.vision.video.sampling import check_frame_size, check_length, sample_indices

GIF_MAGIC = (b"GIF87a", b"GIF89a")
# A frame without a display time (or with 0, which browsers also show at about this pace) counts as 100 ms.
GIF_DEFAULT_FRAME_MS = 100


def decode_gif(data: bytes, limits: MediaLimits, num_frames: int, start: float | None, end: float | None,
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
                check_frame_size(frame.width, frame.height, limits, label)
                total_ms += frame.info.get("duration") or GIF_DEFAULT_FRAME_MS
                count += 1
                if total_ms > limits.max_video_seconds * 1000:  # stop reading: it is too long whatever follows
                    raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} is over {limits.max_video_seconds:.0f} s "
                                       "long (the limit)")
            if count < 1:
                raise ServingError(ErrorCode.INVALID_VIDEO, f"{label} has no frames")
            seconds = total_ms / 1000
            check_length(seconds, start, limits, label)
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
