"""common/errors.py: the one error table, the OpenAI-shaped body, and reading a body back."""

from __future__ import annotations

from common.errors import HTTP_STATUS, ErrorCode, ServingError, error_body


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
