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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from common.limits import ModelLimits
from common.openai_fields import ChoiceLogprobs, FieldExtensions, OpenAIOptions


class WireModel(BaseModel):
    """Base for what clients send us: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class OutModel(BaseModel):
    """Base for what we send: tolerant when read back by another of our processes of a newer version."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


# ---------------------------------------------------------------------------------------------- content parts

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # OpenAI takes any 64-bit integer; engines reduce it (workers/pipeline.py)
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


class _PartKeys(WireModel):
    """Keys the field's clients put on content parts, which change nothing here: SGLang's `modalities`, vLLM's
    `uuid` (a cache key for the media), OpenAI's `prompt_cache_breakpoint`."""

    modalities: str | list[str] | None = None
    uuid: str | None = None
    prompt_cache_breakpoint: dict | None = None


class TextPart(_PartKeys):
    type: Literal["text"]
    text: str


class ImageURL(WireModel):
    url: str = Field(description="data: URL (base64), or http(s) URL when the server allows remote media")
    _url = field_validator("url")(_media_url)
    detail: Literal["auto", "low", "high", "original"] | None = None
    max_dynamic_patch: int | None = Field(None, ge=1, le=40, description="tile budget for this image")


class ImagePart(_PartKeys):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(WireModel):
    url: str
    _url = field_validator("url")(_media_url)
    num_frames: int | None = Field(None, ge=1, description="frames sampled from the clip (at most the model "
                                   "card's limits.max_video_frames)")
    start: float | None = Field(None, ge=0, description="seconds; optional segment start")
    end: float | None = Field(None, gt=0, description="seconds; optional segment end")


class VideoPart(_PartKeys):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class ChatMessage(WireModel):
    # `developer` is OpenAI's newer name for a system message and becomes one here; `tool`/`function` messages are
    # accepted by shape and refused by the worker (workers/openai_support.py: no served family calls tools).
    role: Literal["system", "user", "assistant", "developer", "tool", "function"]
    content: str | list[ContentPart]
    name: str | None = None
    # OpenAI's other message keys: refused when they carry something (openai_support.py), else ignored.
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    function_call: dict | None = None
    refusal: str | None = None
    audio: dict | None = None
    # An earlier answer's reasoning, as this server returned it (assistant messages; workers/reasoning.py)
    reasoning_content: str | None = None

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, v: str) -> str:
        return "system" if v == "developer" else v


class StreamOptions(WireModel):
    include_usage: bool = False


class ChatCompletionRequest(WireModel, OpenAIOptions, FieldExtensions):
    """The core fields; the rest of OpenAI's parameters and the field's extensions come from common/openai_fields.py
    (validated here by shape; what the worker honours: workers/openai_support.py)."""

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
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = Field(1, ge=1, le=128)
    user: str | None = None
    # InternVL extensions (send with the OpenAI client's `extra_body`).
    max_tiles: int | None = Field(None, ge=1, le=40, description="tile budget for the newest turn's images")
    num_frames: int | None = Field(None, ge=1, description="frames sampled from each video (at most the "
                                   "model card's limits.max_video_frames)")
    thinking: bool | None = Field(None, description="thinking mode (models whose card lists the 'thinking' "
                                  "capability): reasoning comes back as reasoning_content")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("stop takes at most 8 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---------------------------------------------------------------------------------------------- responses


class CompletionTokensDetails(OutModel):
    reasoning_tokens: int = 0


class Usage(OutModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: CompletionTokensDetails | None = None


class ResponseMessage(OutModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None


def _with_keys(data: dict, keys: tuple[str, ...]) -> dict:
    """OpenAI's responses always carry these keys, null included (strict typed decoders expect them), even where
    the rest is dumped with exclude_none."""
    for key in keys:
        data.setdefault(key, None)
    return data


class Choice(OutModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None

    @model_serializer(mode="wrap")
    def _keys(self, handler):
        return _with_keys(handler(self), ("finish_reason", "logprobs"))


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
    reasoning_content: str | None = None


class ChunkChoice(OutModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None

    @model_serializer(mode="wrap")
    def _keys(self, handler):
        return _with_keys(handler(self), ("finish_reason", "logprobs"))


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
    capabilities: list[str] | None = Field(None, description="e.g. ['vision', 'video', 'thinking']")
    limits: ModelLimits | None = Field(None, description="what one request may carry (None: not advertised)")
    workers: list[str] | None = None


class ModelList(OutModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------------------------- worker registry


MAX_WORKER_CONCURRENCY = 4096  # the worker's own --max-concurrency bound
# How long the controller keeps a registered worker's connection open between its requests (controller/admission.py),
# and how long the worker's client keeps it idle (workers/registration.py): heartbeats (every 5 s by default) reuse
# one connection; a new one per heartbeat was 0.7 of the ~1 ms of CPU each cost the controller (issue 26). The
# worker lets go well before the controller does, so a heartbeat never goes out on a connection being closed.
REGISTRANT_KEEP_ALIVE_S = 60.0
REGISTRANT_IDLE_S = 30.0


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

