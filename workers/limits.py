"""Every bound on what one request may make a worker do, declared once.

The worker's settings (`--max-media-bytes` ...) take their defaults from here, the checks read them from here, and
the worker advertises them on its model card (`limits` in `/v1/models`, on the worker and through the controller),
so the UI and API clients can refuse a file before uploading it. Where each is enforced, once:

| limit                  | checked in                                                            |
|------------------------|-----------------------------------------------------------------------|
| max_body_bytes         | reading the request body (common/http.py `read_body`)                 |
| max_media_bytes        | when a file's bytes arrive: data: URL decoding or download (media.py) |
| max_images_per_request | parsing the conversation (pipeline.py)                                |
| max_video_frames       | parsing the conversation (pipeline.py)                                |
| max_image_pixels       | decoding: image header, video frame size (vision/)                    |
| max_request_pixels     | before decoding: headers of the request's uncached media (pipeline.py)|
| max_video_seconds      | decoding: video length (vision/video.py)                              |
| context length         | the engine's own limit (Engine.context_length), checked in serving.py |

The body carries the whole conversation: every earlier image and video travels again on each turn (OpenAI's chat
API is stateless), so a chat can outgrow `max_body_bytes` while each of its files is well under `max_media_bytes`;
the errors say which of the two it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.protocol import ModelLimits

MiB = 1024 * 1024


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on one request; breaking one is a clear 4xx that names the file or the conversation, never a crash."""

    max_body_bytes: int = 64 * MiB  # the whole request: the conversation, every earlier file included
    max_media_bytes: int = 20 * MiB  # one image or video file (its bytes, not its base64 text)
    max_image_pixels: int = 64_000_000  # one image or video frame (decompression-bomb guard, e.g. 8000x8000)
    # All the pixels one request makes the worker decode (images + sampled video frames: 32 frames of 4K, or 30
    # photos of 12 MP), read from the file headers before decoding: bounds one request's memory.
    max_request_pixels: int = 400_000_000
    max_images_per_request: int = 16  # images and videos in the whole conversation
    max_video_seconds: float = 600.0
    max_video_frames: int = 64  # frames sampled from one video (each becomes one tile)
    default_num_frames: int = 8
    allow_remote_media: bool = False  # http(s) URLs; private/loopback/link-local targets are refused even when on
    remote_timeout_s: float = 10.0

    def advertised(self, context_length: int) -> ModelLimits:
        """What the model card tells clients."""
        return ModelLimits(max_body_bytes=self.max_body_bytes, max_media_bytes=self.max_media_bytes,
                           max_image_pixels=self.max_image_pixels, max_request_pixels=self.max_request_pixels,
                           max_images_per_request=self.max_images_per_request,
                           max_video_seconds=self.max_video_seconds, max_video_frames=self.max_video_frames,
                           default_num_frames=self.default_num_frames, context_length=context_length)


DEFAULTS = MediaLimits()


def mb(n: int | float) -> str:
    """Bytes as people read file sizes in errors (MiB, labelled MB as file managers do)."""
    return f"{n / MiB:.1f} MB"
