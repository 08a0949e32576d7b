"""The one Engine protocol. Everything above it (HTTP, preprocessing, prompts) is engine-agnostic; each engine is a
subclass in its own module. Engines receive fully prepared inputs: the templated prompt with image tokens already
expanded, and the pixel tiles in prompt order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from workers.model_spec import ModelSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationRequest:
    request_id: str
    prompt: str  # templated, each image already expanded to <img><IMG_CONTEXT>*n</img>
    pixel_values: torch.Tensor | None  # [sum(num_tiles), 3, S, S] float32, images in prompt order
    num_tiles: list[int] = field(default_factory=list)  # tiles per image, prompt order
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # (start, end) of the messages' text in `prompt`: tokenized as plain text (workers.prompts.escaping)
    user_spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class FinishEvent:
    reason: Literal["stop", "length", "abort"]
    prompt_tokens: int
    completion_tokens: int


EngineEvent = TokenEvent | FinishEvent


class Engine(ABC):
    """Lifecycle: `await start()` once (loads weights), then concurrent `generate` calls, then `await stop()`.

    `generate` yields TokenEvents then exactly one FinishEvent, or raises ServingError. Closing the iterator early
    (client gone) or `abort(request_id)` must stop the work and free its resources.
    """

    name: str = "base"
    spec: ModelSpec
    model_id: str

    @abstractmethod
    async def start(self) -> None: ...

    async def stop(self) -> None:
        return None

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]: ...

    @abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abstractmethod
    async def check_health(self) -> None:
        """Raise ServingError when the engine cannot serve."""

    @property
    def context_length(self) -> int:
        """Tokens of prompt + answer this engine really holds (advertised on the model card)."""
        return self.spec.context_length

    @abstractmethod
    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens the prompt occupies in the context (image tokens included), for the context-length check."""
