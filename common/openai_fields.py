"""The chat-request fields beyond the core ones (common/protocol.py), in two groups, and the logprob wire models.

- `OpenAIOptions`: every other parameter OpenAI's chat-completions API documents. Each is accepted here; whether this
  server honours a value is decided by the worker (workers/openai_support.py), which answers 400 `unsupported_value`
  ("this server does not support <param>=<value>") where it cannot.
- `FieldExtensions`: what the field's clients and routers add (vLLM's and SGLang's request models; vllm-router and
  sglang-router put `logprobs`, `no_stop_trim`, `ignore_eos`, `continue_final_message`, `skip_special_tokens` on every
  request they forward). A few are honoured; the rest are accepted at their default value (and refused otherwise:
  `DEFAULT_ONLY`) or ignored whatever their value (`IGNORED`). docs/operations.md has the table.

A key in neither group, nor in protocol.py, is still refused as an unknown field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOP_LOGPROBS = 20  # OpenAI's bound


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class JSONSchemaFormat(_Wire):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(_Wire):
    """`type` is a plain string so that a type we do not serve is refused by name (unsupported_value), not as a
    shape error."""

    type: str
    json_schema: JSONSchemaFormat | None = None


class ToolFunction(_Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: str = "function"
    function: ToolFunction | None = None
    custom: dict[str, Any] | None = None


class OpenAIOptions(BaseModel):
    """OpenAI's documented chat-completions parameters not in the core request."""

    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None  # deprecated by OpenAI in favour of tools
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    moderation: dict[str, Any] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return None
        if len(v) > 300:  # OpenAI's bound
            raise ValueError("logit_bias takes at most 300 tokens")
        for key, bias in v.items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids; {key[:32]!r} is not one")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values lie in [-100, 100]; token {key} has {bias}")
        return v

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class FieldExtensions(BaseModel):
    """Fields that vLLM's and SGLang's clients and routers send (their protocol files: vllm entrypoints/openai
    ChatCompletionRequest, sglang srt/entrypoints/openai/protocol.py)."""

    # honoured
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    min_tokens: int | None = Field(None, ge=0, le=65536)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop_token_ids: list[int] | None = Field(None, max_length=64)
    # accepted at their default value only (DEFAULT_ONLY)
    no_stop_trim: bool | None = None
    continue_final_message: bool | None = None
    add_generation_prompt: bool | None = None
    echo: bool | None = None
    include_stop_str_in_output: bool | None = None
    use_beam_search: bool | None = None
    best_of: int | None = None
    length_penalty: float | None = None
    prompt_logprobs: int | None = None
    return_hidden_states: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    add_special_tokens: bool | None = None
    include_reasoning: bool | None = None
    truncate_prompt_tokens: int | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    regex: str | None = None
    ebnf: str | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structural_tag: Any = None
    structured_outputs: Any = None
    lora_path: Any = None
    documents: Any = None
    chat_template: str | None = None
    logits_processors: Any = None
    # ignored whatever their value (IGNORED)
    priority: int | None = None
    request_id: str | None = Field(None, max_length=256)
    rid: Any = None
    spaces_between_special_tokens: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, Any] | None = None
    session_params: dict[str, Any] | None = None
    separate_reasoning: bool | None = None
    stream_reasoning: bool | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    bootstrap_host: Any = None
    bootstrap_port: Any = None
    bootstrap_room: Any = None
    data_parallel_rank: int | None = None


# What each default-only field means at its default; any other value changes the answer in a way this server does
# not implement, so it is refused rather than silently ignored. (None, "not sent", is always accepted.)
DEFAULT_ONLY: dict[str, object] = {
    "no_stop_trim": False, "continue_final_message": False, "add_generation_prompt": True, "echo": False,
    "include_stop_str_in_output": False, "use_beam_search": False, "best_of": 1, "length_penalty": 1.0,
    "prompt_logprobs": 0, "return_hidden_states": False, "return_tokens_as_token_ids": False,
    "return_token_ids": False, "add_special_tokens": False, "include_reasoning": True, "truncate_prompt_tokens": -1,
    "allowed_token_ids": [], "bad_words": [], "regex": "", "ebnf": "", "guided_json": {}, "guided_regex": "",
    "guided_choice": [], "guided_grammar": "", "structural_tag": {}, "structured_outputs": {}, "lora_path": "",
    "documents": [], "chat_template": "", "logits_processors": [],
}

# Advisory or deployment fields that do not change the answer: accepted and ignored.
IGNORED = ("priority", "request_id", "rid", "spaces_between_special_tokens", "chat_template_kwargs",
           "mm_processor_kwargs", "cache_salt", "kv_transfer_params", "vllm_xargs", "session_params",
           "separate_reasoning", "stream_reasoning", "guided_decoding_backend", "guided_whitespace_pattern",
           "bootstrap_host", "bootstrap_port", "bootstrap_room", "data_parallel_rank", "parallel_tool_calls",
           "service_tier", "store", "metadata", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
           "safety_identifier", "prediction", "verbosity", "user")


# ---------------------------------------------------------------------------------------------- response side


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None

