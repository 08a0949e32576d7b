"""The one error model: every failure has a code, an HTTP status and a message a person understands.

Bodies follow the OpenAI shape (`{"error": {"message", "type", "code", "param"}}`) so OpenAI clients raise
the right exception class. Mid-stream errors reuse the same body as a single SSE event.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_VALUE = "unsupported_value"  # a documented parameter whose value this server cannot honour (OpenAI's)
    NOT_FOUND = "not_found"  # no such path
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    MODEL_NOT_FOUND = "model_not_found"
    UNKNOWN_WORKER = "unknown_worker"
    CONTEXT_TOO_LONG = "context_length_exceeded"
    INVALID_IMAGE = "invalid_image"
    INVALID_VIDEO = "invalid_video"
    UPLOAD_TOO_LARGE = "upload_too_large"  # one file over the per-file limit
    REQUEST_TOO_LARGE = "request_too_large"  # the whole request (a conversation carries every earlier file) too big
    HEADERS_TOO_LARGE = "request_headers_too_large"  # the request line and headers (common/bounded_http.py)
    REQUEST_TIMEOUT = "request_timeout"  # the request line and headers took too long to arrive
    REMOTE_URL_FORBIDDEN = "remote_url_forbidden"
    THINKING_UNSUPPORTED = "thinking_not_supported"  # "thinking": true for a model without thinking mode
    WORKER_BUSY = "worker_busy"
    QUEUE_FULL = "queue_full"  # every worker at capacity and the controller's waiting line full
    QUEUE_TIMEOUT = "queue_timeout"  # waited --queue-timeout-s in the controller's line and no worker got free
    NO_WORKER = "no_worker_available"
    WORKER_LOST = "worker_lost"
    WORKER_TIMEOUT = "worker_timeout"
    RELAY_LOOP = "relay_loop"
    ENGINE_ERROR = "engine_error"
    INTERNAL = "internal_error"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.UNSUPPORTED_VALUE: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.UNKNOWN_WORKER: 404,
    ErrorCode.CONTEXT_TOO_LONG: 400,
    ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.INVALID_VIDEO: 400,
    ErrorCode.UPLOAD_TOO_LARGE: 413,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.REMOTE_URL_FORBIDDEN: 400,
    ErrorCode.THINKING_UNSUPPORTED: 400,
    ErrorCode.WORKER_BUSY: 429,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.QUEUE_TIMEOUT: 429,
    ErrorCode.NO_WORKER: 503,
    ErrorCode.WORKER_LOST: 502,
    ErrorCode.WORKER_TIMEOUT: 504,
    ErrorCode.RELAY_LOOP: 508,
    ErrorCode.ENGINE_ERROR: 500,
    ErrorCode.INTERNAL: 500,
}

# OpenAI's `type` field; clients branch on it.
_ERROR_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
}


class ServingError(Exception):
    """Raise this anywhere below a route; the route layer renders it. `retryable` marks failures another worker
    may not have (busy, lost, timeout), which the controller fails over on before the first token. `retry_after_s`
    becomes a Retry-After header."""

    def __init__(self, code: ErrorCode, message: str, *, param: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.param)

    @classmethod
    def from_body(cls, body: Any, fallback_status: int = 500) -> ServingError:
        """Rebuild an error relayed from another of our processes (or any OpenAI-shaped server)."""
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            try:
                code = ErrorCode(err.get("code"))
            except ValueError:
                code = _code_for_status(fallback_status)
            return cls(code, str(err.get("message") or code.value), param=err.get("param"))
        return cls(_code_for_status(fallback_status), f"upstream answered HTTP {fallback_status}")

    def __repr__(self) -> str:
        return f"ServingError({self.code.value!r}, {self.message!r})"


RETRYABLE = frozenset({ErrorCode.WORKER_BUSY, ErrorCode.WORKER_LOST, ErrorCode.WORKER_TIMEOUT, ErrorCode.ENGINE_ERROR,
                       ErrorCode.INTERNAL, ErrorCode.UNKNOWN_WORKER, ErrorCode.RELAY_LOOP})


def excerpt(value: object, limit: int = 64) -> str:
    """A client's value as error messages show it: quoted, control characters escaped, cut to `limit` characters
    (a megabyte-long model name must not come back whole)."""
    text = str(value)
    shown = repr(text[:limit])
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def _code_for_status(status: int) -> ErrorCode:
    for code, code_status in HTTP_STATUS.items():
        if code_status == status:
            return code
    return ErrorCode.INVALID_REQUEST if 400 <= status < 500 else ErrorCode.INTERNAL


def error_body(code: ErrorCode, message: str, param: str | None = None) -> dict[str, Any]:
    status = HTTP_STATUS[ErrorCode(code)]
    return {"error": {"message": message, "type": _ERROR_TYPE.get(status, "server_error"),
                      "code": ErrorCode(code).value, "param": param}}
