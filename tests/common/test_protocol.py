"""common/protocol.py: the wire models accept OpenAI's shapes and their validation messages name the problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.http import describe_validation
from common.protocol import ChatCompletionRequest


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
