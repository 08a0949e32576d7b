"""One settings object for a worker process; CLI flags and INTERNVL_WORKER_* environment variables come from it."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.bounded_http import HEAD_TIMEOUT_S
from workers.limits import DEFAULTS, MediaLimits


class TurbomindOptions(BaseModel):
    """TurboMind knobs a worker exposes; None means "derive from the checkpoint and the GPUs' memory"."""

    session_len: int | None = Field(None, ge=16, description="longest prompt + answer in tokens; "
                                    "default: the checkpoint's context length")
    # lt=1: TurboMind 0.18 checks 0 < share < 1 with a fatal TM_CHECK (it no longer takes a block count).
    cache_max_entry_count: float | None = Field(None, gt=0, lt=1, description="share of free GPU memory (after "
                                                "weights) for the KV cache, below 1; default: what max_batch_size "
                                                "full sessions need, at most 90%")
    max_batch_size: int | None = Field(None, ge=1, le=4096, description="sequences decoded together; "
                                       "default: the worker's max_concurrency")
    enable_prefix_caching: bool | None = Field(None, description="reuse KV blocks of shared prompt prefixes; "
                                               "default: on when TurboMind runs the vision tower itself, off "
                                               "(and refused) for ps_version v1 checkpoints")
    max_prefill_token_num: int | None = Field(None, ge=256, le=65536, description="prompt tokens TurboMind "
                                              "prefills per step; with TurboMind's own vision tower it also sizes "
                                              "a pinned host buffer (see docs/gpu.md); default: one full-size "
                                              "image per step, 2048 to 8192")
    quant_policy: int | None = Field(None, description="KV cache quantisation: 0 none, 8 int8, 4 int4; "
                                     "default: 0, or 8 when fewer than 4 full sessions fit")

    @field_validator("quant_policy")
    @classmethod
    def _known_policy(cls, v: int | None) -> int | None:
        if v not in (None, 0, 4, 8):
            raise ValueError("quant_policy is 0 (none), 8 (int8) or 4 (int4)")
        return v


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTERNVL_WORKER_", cli_parse_args=False, cli_kebab_case=True,
                                      cli_prog_name="python -m workers", cli_implicit_flags=True,
                                      env_nested_delimiter="__", protected_namespaces=())

    model_path: str = Field(description="checkpoint folder (transformers-native or remote-code InternVL)")
    model_name: str | None = Field(None, description="id served in /v1/models; default: the checkpoint's folder name")
    engine: str = Field("auto", description="auto | transformers | turbomind | module.path:ClassName")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the worker to the network")
    port: int = Field(21002, ge=0, le=65535)
    worker_url: str | None = Field(None, description="address the controller uses to reach this worker "
                                   "(default http://HOST:PORT; set it when binding 0.0.0.0)")
    worker_id: str = Field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:8]}")
    controller_url: str | None = Field("http://127.0.0.1:21001", description="controller to register with; "
                                       "empty to run standalone")
    heartbeat_interval_s: float = Field(5.0, gt=0, le=300)
    registration_secret: str | None = Field(None, description="shared secret the controller requires to register")
    api_keys: list[str] = Field(default_factory=list, description="bearer keys accepted for direct use of this "
                                "worker; requests relayed by the controller carry the token it issued at registration")
    allow_unauthenticated: bool = Field(False, description="let a worker bound to a non-loopback address run with "
                                        "neither --api-keys nor a controller (anyone who reaches it may use it)")
    stream_interval_ms: float = Field(5.0, ge=0, le=100, description="tokens generated within this time of the "
                                      "last write go out together in the next write (a fast stream costs one write "
                                      "per interval, not one per token); 0: one write per token")
    max_concurrency: int = Field(8, ge=1, le=4096, description="requests admitted at once; more get HTTP 429")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    load_in_8bit: bool = Field(False, description="transformers engine: bitsandbytes 8-bit weights (GPU)")
    tp: int = Field(1, ge=1, le=16, description="tensor-parallel GPUs for this worker")
    # Request limits (workers/limits.py declares their defaults and where each is checked; /v1/models shows them).
    max_body_bytes: int = Field(DEFAULTS.max_body_bytes, ge=1024, description="largest request body: the whole "
                                "conversation, every earlier image and video included")
    body_parsers: int = Field(2, ge=0, le=16, description="helper processes that validate request bodies over 2 MB "
                              "(the JSON parse holds the GIL); 0: in the worker's own process")
    max_media_bytes: int = Field(DEFAULTS.max_media_bytes, ge=1, description="largest image or video file")
    max_image_pixels: int = Field(DEFAULTS.max_image_pixels, ge=1, description="largest image or video frame")
    max_request_pixels: int = Field(DEFAULTS.max_request_pixels, ge=1, description="pixels one request may make "
                                    "the worker decode (images + video frames), read from the file headers before "
                                    "decoding; more: 413")
    preprocess_pixels: int = Field(100_000_000, ge=1, description="decoded pixels being prepared at once by the "
                                   "whole worker (~6 bytes each at the peak); requests past it wait their turn")
    max_video_seconds: float = Field(DEFAULTS.max_video_seconds, gt=0)
    max_video_frames: int = Field(DEFAULTS.max_video_frames, ge=1, le=256, description="most frames sampled "
                                  "from one video")
    max_images_per_request: int = Field(DEFAULTS.max_images_per_request, ge=1, le=256,
                                        description="most images and videos in one conversation")
    default_num_frames: int = Field(DEFAULTS.default_num_frames, ge=1, le=256)
    media_cache_mb: int = Field(1024, ge=0, description="preprocessed images and videos kept for the next turns "
                                "of a conversation, in MiB of float32 tiles (0: off)")
    allow_remote_media: bool = Field(False, description="fetch http(s) image/video URLs (private addresses refused)")
    turbomind: TurbomindOptions = Field(default_factory=TurbomindOptions,
                                        description="TurboMind engine knobs (--turbomind.session-len ...)")
    header_timeout_s: float = Field(HEAD_TIMEOUT_S, gt=0, le=600, description="longest a client may take to send a "
                                    "request's line and headers (then 408); they may total 64 KiB (then 431)")
    log_level: str = "info"
    log_format: Literal["kv", "json"] = Field("kv", description="log lines as key=value or JSON")

    @model_validator(mode="after")
    def _frames_within_limit(self) -> WorkerSettings:
        if self.default_num_frames > self.max_video_frames:
            raise ValueError(f"default_num_frames ({self.default_num_frames}) is above max_video_frames "
                             f"({self.max_video_frames})")
        return self

    def media_limits(self) -> MediaLimits:
        return MediaLimits(max_body_bytes=self.max_body_bytes, max_media_bytes=self.max_media_bytes,
                           max_image_pixels=self.max_image_pixels, max_request_pixels=self.max_request_pixels,
                           max_video_seconds=self.max_video_seconds,
                           max_video_frames=self.max_video_frames, max_images_per_request=self.max_images_per_request,
                           default_num_frames=self.default_num_frames, allow_remote_media=self.allow_remote_media)

    def advertised_url(self) -> str:
        if self.worker_url:
            return self.worker_url.rstrip("/")
        return f"http://{self.host}:{self.port}"
