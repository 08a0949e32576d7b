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
    # OpenAI's further parameters and the field's extensions (workers/openai_support.py checks each engine honours
    # what a request asks before it gets here; the defaults ask for nothing).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: dict | None = None  # lmdeploy's form: {"type": "json_object"} or {"type": "json_schema", ...}
    min_p: float = 0.0
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True


@dataclass
class GenerationRequest:
    request_id: str
    prompt: str  # templated, each image already expanded to <img><IMG_CONTEXT>*n</img>
    pixel_values: torch.Tensor | None  # [sum(num_tiles), 3, S, S] float32, images in prompt order
    num_tiles: list[int] = field(default_factory=list)  # tiles per image, prompt order
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # (start, end) of the messages' text in `prompt`: tokenized as plain text (workers.prompts.escaping)
    user_spans: tuple[tuple[int, int], ...] = ()
    # The prompt's token ids (`Engine.tokenize`), checked against the context by the serving layer: engines use them
    # as they are. None only when an engine is driven directly (its tests); it then tokenizes the prompt itself.
    input_ids: list[int] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability (of the model's distribution before sampling settings) and, when asked,
    the most likely alternatives at that position: (token text, logprob) pairs."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    text: str
    tokens: int = 1  # generated tokens this text completes (text held back, e.g. a split character, comes later)
    # With SamplingParams.logprobs: the tokens this text came from (a token whose text is held back, a split UTF-8
    # character, comes with the next event).
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class FinishEvent:
    reason: Literal["stop", "length", "abort"]
    prompt_tokens: int
    completion_tokens: int


EngineEvent = TokenEvent | FinishEvent


class Engine(ABC):
    """Lifecycle: `await start()` once (loads weights), then concurrent `generate` calls, then `await stop()`.

    `generate` yields TokenEvents then exactly one FinishEvent, or raises ServingError. Stopping a generation has one
    mechanism: closing its iterator (`aclose()`, or cancelling the task that awaits it), which the worker does when
    the request's client leaves, at any point, the first token included. The engine must then stop the work and
    free its resources (queue place, KV cache, GPU memory); `running` drops when it is really out.
    """

    name: str = "base"
    spec: ModelSpec
    model_id: str
    running: int = 0  # generations the engine is computing now (for /health: "has the work stopped?")
    # The SamplingParams features beyond the core ones this engine honours (names: workers/openai_support.py).
    features: frozenset[str] = frozenset()
    queued: int = 0  # generations waiting inside the engine

    @abstractmethod
    async def start(self) -> None: ...

    async def stop(self) -> None:
        return None

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]: ...

    @abstractmethod
    async def check_health(self) -> None:
        """Raise ServingError when the engine cannot serve."""

    @property
    def context_length(self) -> int:
        """Tokens of prompt + answer this engine really holds: the one context check's limit, advertised on the model
        card."""
        return self.spec.context_length

    @abstractmethod
    def tokenize(self, prompt: str, user_spans: tuple[tuple[int, int], ...] = ()) -> list[int]:
        """The prompt's token ids as the engine will consume them (image tokens included; the text in `user_spans`
        as plain text, workers/prompts/escaping.py). Called in a thread."""

    @property
    def max_token_chars(self) -> int | None:
        """The most characters one token can stand for (None: unknown), for refusing text far too long for the
        context before tokenizing it (workers/context_check.py)."""
        return None


def longest_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token covers: its longest vocabulary entry as written (a byte-level
    entry has one character per byte, a SentencePiece one its text, a byte-fallback one more)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)
