"""HTTP glue shared by the controller and workers: body reading, error rendering, API-key checks. (Server-sent
events: common/sse.py; clients that leave: common/disconnect.py.)"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from common.auth import bearer_token, one_of, raw_header
from common.disconnect import ClientGone
from common.errors import ErrorCode, ServingError, error_body, excerpt

log = logging.getLogger(__name__)

# The controller forwards a client's request body to the worker unchanged; what it needs on top travels in headers.
RELAY_STREAM = "X-Relay-Stream"  # "1": answer as an SSE stream whatever the body's `stream` says
RELAY_INCLUDE_USAGE = "X-Relay-Include-Usage"  # "1": end the stream with the usage event
M = TypeVar("M", bound=BaseModel)


def error_response(err: ServingError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def describe_validation(errors: Any) -> tuple[ErrorCode, str, str | None]:
    errors = _drop_other_branches(list(errors))
    invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid is not None:
        where = str(invalid.get("ctx", {}).get("error", ""))[:200]  # a position, never the client's bytes
        if "invalid unicode code point" in where:
            return ErrorCode.INVALID_JSON, f"the request body is not valid UTF-8 ({where}): send JSON in UTF-8", None
        return ErrorCode.INVALID_JSON, f"the request body is not valid JSON ({where})", None
    parts = []
    for e in errors[:5]:
        loc = _field_path(e)[:_SHOWN_FIELD]  # field names are the client's too: a megabyte key is not echoed
        value = e.get("input")
        if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN, Infinity, 1e309 (read as inf)
            parts.append(f"{loc or 'body'}: must be a finite number, not {value}")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        elif e.get("type") == "union_tag_invalid":
            parts.append(f"{loc}: unsupported content part type {excerpt(e.get('ctx', {}).get('tag'))} "
                         "(expected 'text', 'image_url' or 'video_url')")
        elif e.get("type") == "union_tag_not_found":
            parts.append(f"{loc}: content part without a 'type' (expected 'text', 'image_url' or 'video_url')")
        else:
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
    first = _field_path(errors[0])[:_SHOWN_FIELD] if errors else None
    return ErrorCode.INVALID_REQUEST, "invalid request: " + "; ".join(parts), first or None


def _field_path(error: dict) -> str:
    """The field as the client wrote it: pydantic's union branch names ('str', 'list[tagged-union[...]]') and the
    discriminator tag it repeats after a list index are its own bookkeeping, not the client's field names."""
    out: list[str] = []
    tag_next = in_union = False
    for x in error.get("loc", ()):
        if x == "body" or (isinstance(x, str) and ("[" in x or x in _BRANCHES)):
            in_union = in_union or "tagged-union[" in str(x)
            continue
        if tag_next and isinstance(x, str):  # the tag tagged-union inserts after the index
            tag_next = False
            continue
        tag_next = in_union and isinstance(x, int)
        in_union = False
        out.append(str(x))
    return ".".join(out)


_SHOWN_FIELD = 120
_BRANCHES = {"str", "int", "float", "list", "dict", "bool", "none"}


def _drop_other_branches(errors: list[dict]) -> list[dict]:
    """`content: str | list[...]` sent as a list with a bad part fails both branches; the 'should be a valid string'
    half is noise next to the list branch's real complaint, so it goes when a deeper error names the same field."""
    deep = {tuple(e.get("loc", ())[:-1]) for e in errors if len(e.get("loc", ())) > 1}

    def noise(e: dict) -> bool:
        loc = tuple(e.get("loc", ()))
        return (e.get("type") == "string_type" and bool(loc) and loc[-1] == "str"
                and any(len(d) >= len(loc) and d[:len(loc) - 1] == loc[:-1] and d != loc[:-1] for d in deep))

    return [e for e in errors if not noise(e)] or errors


_JOIN_OFF_LOOP = 1024 * 1024


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body (JSON text: see json_text), refused with 413 as soon as it passes `max_bytes` (whatever
    Content-Length claims). A large body is joined in a thread (bytes.join lets go of the GIL for big copies):
    joining 40 MiB on the event loop stalled every other request on it for ~100 ms."""
    declared = raw_header(request, b"content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, int(declared))
    chunks, size = [], 0
    while True:  # the ASGI messages themselves (Starlette's `stream()` adds an async generator per request)
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone  # the client left while sending: a 499, not a server error
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = await asyncio.to_thread(b"".join, chunks) if size > _JOIN_OFF_LOOP else b"".join(chunks)
    return json_text(raw)


_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
              b"\xfe\xff": "UTF-16"}  # the longer marks first


def json_text(raw: bytes) -> bytes:
    """A JSON body as UTF-8 text: a UTF-8 byte-order mark is dropped (most JSON APIs accept one); UTF-16 and UTF-32
    (which JSON once allowed; RFC 8259 says UTF-8) are refused by name, not as 'not a JSON object'."""
    if raw[:1] == b"{" and b"\x00" not in raw[:4]:
        return raw  # the usual body: an object in UTF-8 (or ASCII), no mark
    if raw.startswith(_UTF8_BOM):
        return raw[len(_UTF8_BOM):]
    wide = next((name for bom, name in _WIDE_BOMS.items() if raw.startswith(bom)), None)
    if wide is None and b"\x00" in raw[:4]:  # without a mark: ASCII's first characters with NULs between them
        wide = "UTF-32" if raw[:4].count(b"\x00") == 3 else "UTF-16"
    if wide is not None:
        raise ServingError(ErrorCode.INVALID_JSON, f"the request body is {wide} text; send JSON encoded as UTF-8")
    return raw


def _too_large(limit: int, size: int | None = None) -> ServingError:
    # Each chat request carries the whole conversation, so this is the conversation's size, not one file's.
    what = f"the request is {size / 2**20:.1f} MB," if size is not None else "the request is"
    return ServingError(ErrorCode.REQUEST_TOO_LARGE, f"{what} over the {limit / 2**20:.1f} MB this server takes "
                        "per request; a chat request carries the whole conversation, every earlier image and video "
                        "included: start a new conversation, or send fewer or smaller files")


async def parse_json_body(request: Request, model: type[M], max_bytes: int) -> M:
    raw = await read_body(request, max_bytes)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        code, message, param = describe_validation(exc.errors())
        raise ServingError(code, message, param=param) from None


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as the one JSON body; nothing becomes a bare 500 page or a 200 with an error inside."""

    @app.exception_handler(ServingError)
    async def _serving(_: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)  # a body read by FastAPI itself or any other reader
    async def _gone(_: Request, __: Exception) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": only the access log sees it

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = routing_error(request.method, request.url.path, exc.status_code, exc.detail)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, param = describe_validation(exc.errors())
        return JSONResponse(error_body(code, message, param), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"),
                            status_code=500)


# Paths OpenAI clients try that this server does not serve, with the reason.
NOT_SERVED = {
    "/v1/completions": "this server does not serve /v1/completions (prompt-only text completion): a vision-language "
                       "model is served through /v1/chat/completions",
}


def routing_error(method: str, path: str, status: int, detail: Any) -> ServingError:
    """Starlette's routing answers (no such path, wrong method) in the one error format."""
    shown = excerpt(path, 120)
    if status == 404:
        return ServingError(ErrorCode.NOT_FOUND, NOT_SERVED.get(path, f"no such path: {method} {shown[1:-1]}"))
    if status == 405:
        return ServingError(ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed on {shown[1:-1]}")
    return ServingError(ErrorCode.INVALID_REQUEST if 400 <= status < 500 else ErrorCode.INTERNAL, str(detail))


def check_api_key(request: Request, keys: list[str]) -> None:
    """Bearer-token check used by routes when keys are configured; no keys means open (loopback default)."""
    if not keys:
        return
    if not one_of(bearer_token(request), keys):
        raise ServingError(ErrorCode.UNAUTHORIZED, "missing or wrong API key: send 'Authorization: Bearer <key>'")
