"""Every bound on what one chat request may carry, declared once (name, default, range, meaning).

`RequestLimits` is the declaration: the worker's settings inherit it (so `--max-media-bytes` and
INTERNVL_WORKER_MAX_MEDIA_BYTES come from it), the worker enforces it (workers/limits.py adds its own media
policy), and `ModelLimits`, the same fields plus the engine's context length, is what a model card advertises on
/v1/models (the controller's card: field by field the tightest of its workers') and what the UI reads. Where each
is enforced, once:

| limit                  | checked in                                                            |
|------------------------|-----------------------------------------------------------------------|
| max_body_bytes         | reading the request body (common/http.py `read_body`)                 |
| max_media_bytes        | when a file's bytes arrive: data: URL decoding or download (media.py) |
| max_images_per_request | parsing the conversation (workers/pipeline.py)                        |
| max_video_frames       | parsing the conversation (workers/pipeline.py)                        |
| max_image_pixels       | decoding: image header, video frame size (workers/vision/)            |
| max_request_pixels     | before decoding: headers of the request's uncached media (pipeline.py)|
| max_video_seconds      | decoding: video length (workers/vision/video.py)                      |
| context length         | the engine's own limit (Engine.context_length), checked in serving.py |

The body carries the whole conversation: every earlier image and video travels again on each turn (OpenAI's chat
API is stateless), so a chat can outgrow `max_body_bytes` while each of its files is well under `max_media_bytes`;
the errors say which of the two it is. Bytes are the files' own bytes: on the wire base64 makes them 4/3 as large.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MiB = 1024 * 1024


class RequestLimits(BaseModel):
    """Bounds on one request; breaking one is a clear 4xx that names the file or the conversation, never a crash.
    The ranges here hold for any card; the worker's settings may narrow one (an operator's floor)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    max_body_bytes: int = Field(64 * MiB, ge=1, description="largest request body: the whole conversation, every "
                                "earlier image and video included")
    max_media_bytes: int = Field(20 * MiB, ge=1, description="largest image or video file (its bytes, not its "
                                 "base64 text)")
    max_image_pixels: int = Field(64_000_000, ge=1, description="largest image or video frame "
                                  "(decompression-bomb guard, e.g. 8000x8000)")
    # 32 frames of 4K, or 30 photos of 12 MP: bounds one request's memory.
    max_request_pixels: int = Field(400_000_000, ge=1, description="pixels one request may make the worker decode "
                                    "(images + video frames), read from the file headers before decoding; more: 413")
    max_images_per_request: int = Field(16, ge=1, le=256, description="most images and videos in one "
                                        "conversation")
    max_video_seconds: float = Field(600.0, gt=0, description="longest video")
    max_video_frames: int = Field(64, ge=1, le=256, description="most frames sampled from one video (each becomes "
                                  "one tile)")
    default_num_frames: int = Field(8, ge=1, le=256, description="frames sampled from a video whose request does "
                                    "not say")

    @model_validator(mode="after")
    def _frames_within_limit(self):
        if self.default_num_frames > self.max_video_frames:
            raise ValueError(f"default_num_frames ({self.default_num_frames}) is above max_video_frames "
                             f"({self.max_video_frames})")
        return self


class ModelLimits(RequestLimits):
    """What a model card advertises: the request limits and the context the engine really holds. Tolerant of
    fields a newer worker adds; a card that is silent on a limit means that limit's default."""

    model_config = ConfigDict(extra="allow")

    context_length: int | None = Field(None, description="tokens of prompt (images included) + answer; None "
                                       "where the card does not say")
