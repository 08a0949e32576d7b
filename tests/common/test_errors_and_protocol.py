"""The one error model and the wire models' validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.errors import HTTP_STATUS, ErrorCode, ServingError, error_body
from common.http import describe_validation
from common.protocol import ChatCompletionRequest


def test_every_code_has_a_status_and_renders_openai_shape():
    for code in ErrorCode:
        body = error_body(code, "what happened")
        assert HTTP_STATUS[code] >= 400
        assert body["error"]["code"] == code.value and body["error"]["message"] == "what happened"
        assert isinstance(body["error"]["type"], str)


def test_error_round_trips_through_its_body():
    err = ServingError(ErrorCode.CONTEXT_TOO_LONG, "too long", param="messages")
    back = ServingError.from_body(err.body(), 400)
    assert (back.code, back.message, back.param, back.status) == (err.code, "too long", "messages", 400)


def test_unknown_body_falls_back_on_status():
    assert ServingError.from_body("<html>", 429).code == ErrorCode.WORKER_BUSY
    assert ServingError.from_body({"error": {"code": "??", "message": "x"}}, 418).code == ErrorCode.INVALID_REQUEST
    assert ServingError.from_body(None, 500).status == 500


def test_retryable_codes_are_the_worker_side_failures():
    assert ServingError(ErrorCode.WORKER_BUSY, "").retryable
    assert not ServingError(ErrorCode.INVALID_IMAGE, "").retryable
    assert not ServingError(ErrorCode.CONTEXT_TOO_LONG, "").retryable


def _messages(raw: dict) -> str:
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate(raw)
    return describe_validation(exc.value.errors())[1]


def test_validation_messages_name_the_problem():
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert "unknown field 'frobnicate'" in _messages({**base, "frobnicate": 1})
    assert "temperature" in _messages({**base, "temperature": -1})
    assert "max_tokens" in _messages({**base, "max_tokens": 10**9})
    part = {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "x"}}]}
    assert "unsupported content part type 'audio_url'" in _messages({**base, "messages": [part]})
    assert "messages" in _messages({**base, "messages": []})


def test_request_accepts_openai_multimodal_shapes():
    req = ChatCompletionRequest.model_validate({"model": "m", "stop": "###", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": {"url": "data:,", "max_dynamic_patch": 6}},
                                     {"type": "video_url", "video_url": {"url": "data:,", "num_frames": 8}}]}]})
    parts = req.messages[0].content
    assert req.stop == ["###"] and [p.type for p in parts] == ["text", "image_url", "video_url"]
    assert parts[0].text == "a" and parts[1].image_url.max_dynamic_patch == 6 and parts[2].video_url.num_frames == 8
