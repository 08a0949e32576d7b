"""Wire models for every HTTP surface: the OpenAI-compatible chat API (controller and workers speak the same one)
and the controller's worker-registry API. One module, so the controller, workers and UI never disagree.

Requests reject unknown fields with a message that names them (nothing a user sent is dropped silently); the
OpenAI fields we accept but do not act on are listed explicitly.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class WireModel(BaseModel):
    """Base for what clients send us: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class OutModel(BaseModel):
    """Base for what we send: tolerant when read back by another of our processes of a newer version."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


# ---------------------------------------------------------------------------------------------- content parts

SEED_MAX = 2**63 - 1  # engines take a signed 64-bit seed
_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def check_http_url(url: str, what: str = "URL") -> str:
    """An http(s) URL must parse: a host, a port in range, no control characters (those become 400s here, before any
    connection, rather than errors deep in an HTTP client)."""
    if any(c in _CONTROL for c in url):
        raise ValueError(f"the {what} contains a control character")
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"malformed {what}: {exc}") from None
    if not parsed.hostname:
        raise ValueError(f"the {what} has no host")
    return url


def _media_url(url: str) -> str:
    if url[:8].lower().startswith(("http://", "https://")):
        check_http_url(url, "media URL")
    return url


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImageURL(WireModel):
    url: str = Field(description="data: URL (base64), or http(s) URL when the server allows remote media")
    _url = field_validator("url")(_media_url)
    detail: Literal["auto", "low", "high"] | None = None
    max_dynamic_patch: int | None = Field(None, ge=1, le=40, description="tile budget for this image")


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(WireModel):
    url: str
    _url = field_validator("url")(_media_url)
    num_frames: int | None = Field(None, ge=1, description="frames sampled from the clip (at most the model "
                                   "card's limits.max_video_frames)")
    start: float | None = Field(None, ge=0, description="seconds; optional segment start")
    end: float | None = Field(None, gt=0, description="seconds; optional segment end")


class VideoPart(WireModel):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class ChatMessage(WireModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class StreamOptions(WireModel):
    include_usage: bool = False


class ChatCompletionRequest(WireModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1000)
    max_tokens: int | None = Field(None, ge=1, le=65536)
    max_completion_tokens: int | None = Field(None, ge=1, le=65536)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n: Literal[1] = 1
    user: str | None = None
    # InternVL extensions (send with the OpenAI client's `extra_body`).
    max_tiles: int | None = Field(None, ge=1, le=40, description="tile budget for the newest turn's images")
    num_frames: int | None = Field(None, ge=1, description="frames sampled from each video (at most the "
                                   "model card's limits.max_video_frames)")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("stop takes at most 8 non-empty strings")
        return stops

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---------------------------------------------------------------------------------------------- responses


class Usage(OutModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ResponseMessage(OutModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(OutModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None


class ChatCompletion(OutModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(OutModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(OutModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(OutModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------------- models


class ModelLimits(OutModel):
    """What one request to this model may carry (workers/limits.py declares and enforces them). Bytes are the
    files' own bytes; on the wire base64 makes them 4/3 as large, and the body holds the whole conversation."""

    max_body_bytes: int = Field(description="one request body: the conversation, every earlier file included")
    max_media_bytes: int = Field(description="one image or video file")
    max_image_pixels: int = Field(description="one image, or one video frame")
    max_request_pixels: int | None = Field(None, description="all the images and video frames of one request "
                                           "(their decoded pixels)")
    max_images_per_request: int = Field(description="images and videos in the whole conversation")
    max_video_seconds: float
    max_video_frames: int = Field(description="frames sampled from one video")
    default_num_frames: int
    context_length: int = Field(description="tokens of prompt (images included) + answer")


class ModelCard(OutModel):
    """One served model. Extra fields beyond OpenAI's say what a person needs to know about it."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "internvl-serve"
    family: str | None = None
    engine: str | None = None
    context_length: int | None = None
    random_weights: bool = Field(False, description="True for the demo checkpoint: its answers are noise")
    limits: ModelLimits | None = Field(None, description="what one request may carry (None: not advertised)")
    workers: list[str] | None = None


class ModelList(OutModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------------------------- worker registry


MAX_WORKER_CONCURRENCY = 4096  # the worker's own --max-concurrency bound


class WorkerRegistration(WireModel):
    worker_id: str = Field(min_length=1, max_length=128)
    url: str = Field(max_length=2048, description="base URL the controller uses to reach the worker")
    models: list[ModelCard] = Field(min_length=1, max_length=16)
    max_concurrency: int = Field(ge=1, le=MAX_WORKER_CONCURRENCY)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")):
            raise ValueError("the worker URL must be http:// or https://")
        return check_http_url(v, "worker URL")


class WorkerHeartbeat(WireModel):
    worker_id: str = Field(min_length=1, max_length=128)
    in_flight: int = Field(0, ge=0)
    queued: int = Field(0, ge=0)


class WorkerStatus(OutModel):
    worker_id: str
    url: str
    models: list[str]
    healthy: bool
    in_flight: int
    max_concurrency: int
    queued: int
    last_heartbeat_age_s: float
    served: int
    failures: int
    benched: bool = False  # its circuit breaker is open: no requests until a trial after the cool-down
    benched_for_s: float | None = None  # cool-down left (0: the next request is its trial)


class WorkerList(OutModel):
    workers: list[WorkerStatus]

