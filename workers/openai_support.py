"""What this worker honours of a chat request, decided before any work: a value it cannot honour is a 400
`unsupported_value` saying "this server does not support <param>=<value>" (OpenAI's own code for this), never a
silent approximation. The table in docs/operations.md is this module, per engine.

Feature names an engine lists in `Engine.features`:
  logprobs, penalties (presence/frequency), logit_bias, response_format (json_object/json_schema), min_p,
  min_tokens, stop_token_ids, ignore_eos, skip_special_tokens.
"""

from __future__ import annotations

import json
from typing import Any

from common.errors import ErrorCode, ServingError
from common.openai_fields import DEFAULT_ONLY
from common.protocol import ChatCompletionRequest
from workers.engines.base import Engine

MAX_CHOICES = 8  # n: each choice is a generation of its own, inside one request's slot
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
ALL_FEATURES = frozenset({"logprobs", "penalties", "logit_bias", "response_format", "min_p", "min_tokens",
                          "stop_token_ids", "ignore_eos", "skip_special_tokens"})

_NO_TOOLS = ("the served InternVL chat templates have no tool-calling format (docs/operations.md, "
             "'Tool calling')")


def unsupported(param: str, value: Any, why: str) -> ServingError:
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 80 else f"{shown[:80]}..."  # the client's value, not echoed whole
    return ServingError(ErrorCode.UNSUPPORTED_VALUE, f"this server does not support {param}={shown}: {why}",
                        param=param)


def refuse_unsupported(req: ChatCompletionRequest, engine: Engine) -> None:
    """Raise ServingError (400 unsupported_value) for the first value this worker cannot honour."""
    _refuse_openai_values(req)
    _refuse_messages(req)
    for name, default in DEFAULT_ONLY.items():
        value = getattr(req, name)
        if value is not None and value != default:
            raise unsupported(name, value, f"only its default ({json.dumps(default)}) is accepted, and ignored")
    _refuse_engine_features(req, engine)


def _refuse_openai_values(req: ChatCompletionRequest) -> None:
    if req.n > MAX_CHOICES:
        raise unsupported("n", req.n, f"at most {MAX_CHOICES} choices per request")
    if req.tools:
        raise unsupported("tools", [t.function.name if t.function else t.type for t in req.tools], _NO_TOOLS)
    if req.functions:
        raise unsupported("functions", [f.get("name") for f in req.functions], _NO_TOOLS)
    for name in ("tool_choice", "function_call"):
        choice = getattr(req, name)
        if choice is not None and choice not in ("none", "auto"):
            raise unsupported(name, choice, _NO_TOOLS)
    if req.modalities is not None and any(m != "text" for m in req.modalities):
        raise unsupported("modalities", req.modalities, "answers are text only")
    if req.audio is not None:
        raise unsupported("audio", req.audio, "answers are text only")
    if req.web_search_options is not None:
        raise unsupported("web_search_options", req.web_search_options, "this server has no web search")
    if req.moderation is not None:
        raise unsupported("moderation", req.moderation, "this server runs no moderation")
    if req.reasoning_effort is not None:
        raise unsupported("reasoning_effort", req.reasoning_effort, "the served model has no reasoning-effort setting")
    fmt = req.response_format
    if fmt is not None and fmt.type not in RESPONSE_FORMATS:
        raise unsupported("response_format.type", fmt.type, f"served types: {', '.join(RESPONSE_FORMATS)}")
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise ServingError(ErrorCode.INVALID_REQUEST, "response_format of type json_schema needs "
                               "json_schema.schema", param="response_format")
        check_json_schema(fmt.json_schema.schema_)


def check_json_schema(schema: dict | bool) -> None:
    """A schema the grammar library cannot compile is the client's error, said now (lmdeploy would only log it and
    answer unconstrained)."""
    import xgrammar

    try:
        xgrammar.Grammar.from_json_schema(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with its reason
        raise ServingError(ErrorCode.INVALID_REQUEST, f"response_format.json_schema.schema cannot be used: "
                           f"{str(exc)[:300]}", param="response_format") from None


def _refuse_messages(req: ChatCompletionRequest) -> None:
    for i, msg in enumerate(req.messages):
        if msg.role in ("tool", "function"):
            raise unsupported(f"messages[{i}].role", msg.role, _NO_TOOLS)
        if msg.tool_calls or msg.function_call:
            raise unsupported(f"messages[{i}].tool_calls", msg.tool_calls or msg.function_call, _NO_TOOLS)
        if msg.audio is not None:
            raise unsupported(f"messages[{i}].audio", msg.audio, "this server takes no audio")


def _asked_features(req: ChatCompletionRequest) -> dict[str, tuple[str, Any]]:
    """feature -> (param, value) for what the request asks beyond the defaults."""
    asked: dict[str, tuple[str, Any]] = {}
    if req.logprobs:
        asked["logprobs"] = ("logprobs", True)
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            asked["penalties"] = (name, getattr(req, name))
    if req.logit_bias:
        asked["logit_bias"] = ("logit_bias", req.logit_bias)
    if req.response_format is not None and req.response_format.type != "text":
        asked["response_format"] = ("response_format.type", req.response_format.type)
    if req.min_p:
        asked["min_p"] = ("min_p", req.min_p)
    if req.min_tokens:
        asked["min_tokens"] = ("min_tokens", req.min_tokens)
    if req.stop_token_ids:
        asked["stop_token_ids"] = ("stop_token_ids", req.stop_token_ids)
    if req.ignore_eos:
        asked["ignore_eos"] = ("ignore_eos", True)
    if req.skip_special_tokens is False:
        asked["skip_special_tokens"] = ("skip_special_tokens", False)
    return asked


def _refuse_engine_features(req: ChatCompletionRequest, engine: Engine) -> None:
    for feature, (param, value) in _asked_features(req).items():
        if feature not in engine.features:
            raise unsupported(param, value, f"the {engine.name} engine cannot honour it")
