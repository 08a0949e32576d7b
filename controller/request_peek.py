"""What the controller reads of a chat request: `model` (to route it), `stream` (to answer in kind), `user` and where
the conversation starts (to keep a conversation on the worker that has its media and prefix cached). Nothing else.

The body travels to the worker byte for byte, and the worker validates all of it; the controller must not pay for a
parse of a body that is mostly base64 media (a 40 MiB body cost ~300 ms of pydantic on the one event loop that
relays every stream). So this walks only the JSON's structure: brackets and strings, each string skipped with one
byte search, and reads the values of the two top-level keys it needs; a large body is walked in a thread (its
searches are short, so the event loop gets the GIL between them). The conversation's key is a hash of the messages up
to the end of the first user message (they stay the same for every turn of a chat): of at most 16 KiB of their bytes,
their start and their end, with their length, not of the media in them (a routing hint: two chats that collide only
share a worker). Malformed JSON that the walk meets (an
unterminated string or bracket) is refused here; anything subtler is the worker's to refuse.

A small body (a text chat, up to 16 KiB) is decoded by msgspec's C decoder instead, into only those fields and the
raw bytes of the messages: the walk's Python loop was the largest part of the controller's own CPU per request
(issue 26; ~40 us against ~5). It finds the same fields and the same span, so a conversation keeps its key when its
body outgrows the limit; a body msgspec refuses (not strict JSON, or not an object) is walked, so what is refused and
how stays the walk's. On large bodies msgspec is 10-18x slower than the walk (BENCHMARKS.md, the peek beside
msgspec): it reads every byte of the media.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any, NamedTuple

import msgspec

from common.errors import ErrorCode, ServingError

_STRUCTURE = re.compile(rb'["{}\[\]]')
_STRING_TAIL = re.compile(rb'(?:[^"\\]++|\\.)*+"', re.S)  # the rest of a string that holds escapes
_SPACE = re.compile(rb"[ \t\r\n]*")
_LITERAL = re.compile(rb"true|false|null|-?[0-9][0-9.eE+-]*")
MAX_VALUES = 200_000  # brackets and strings walked at most: a real chat has far fewer
_WALK_OFF_LOOP = 64 * 1024  # bodies larger than this are walked in a thread
_KEY_SAMPLE = 8 * 1024  # bytes hashed from each end of the conversation's start
_DECODE_MAX = 16 * 1024  # bodies up to this size are decoded by msgspec, not walked


class Peeked(NamedTuple):  # (a tuple: made per request, a frozen dataclass cost several times more)
    model: str
    stream: bool
    user: str | None = None  # the OpenAI `user` field, when it is a string
    conversation: str | None = None  # hash of the messages up to the first user message's end; None without one
    first_turn: bool = False  # that user message is the last message: nothing of the conversation is cached yet


class _Invalid(Exception):
    pass


async def peek_request(body: bytes | bytearray) -> Peeked:
    """The routing fields of a chat request body; ServingError (400) when they are missing, of the wrong type, or
    the body is not a JSON object."""
    if len(body) > _WALK_OFF_LOOP:
        try:
            return _peeked(await asyncio.to_thread(_top_level, body, _WANTED))
        except _Invalid:
            raise ServingError(ErrorCode.INVALID_JSON, "the request body is not valid JSON") from None
    return peek_small(body)


def peek_small(body: bytes | bytearray) -> Peeked:
    """`peek_request` of a body of at most 64 KiB, read in the caller's step (controller/fast_chat.py)."""
    if len(body) > _WALK_OFF_LOOP:
        raise ValueError("a large body is peeked off the event loop: peek_request")
    try:
        return _peeked((len(body) <= _DECODE_MAX and _decoded(body)) or _top_level(body, _WANTED))
    except _Invalid:
        raise ServingError(ErrorCode.INVALID_JSON, "the request body is not valid JSON") from None


def _peeked(found: tuple) -> Peeked:
    fields, start = found
    span, first_turn = start or (None, False)
    if fields is None:
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: the body must be a JSON object")
    model, stream = fields.get("model"), fields.get("stream", False)
    if "model" not in fields:
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: model: Field required", param="model")
    if not isinstance(model, str):
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: model: Input should be a valid string",
                           param="model")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: stream: Input should be a valid boolean",
                           param="stream")
    user = fields.get("user")
    return Peeked(model, stream, user if isinstance(user, str) else None,
                  _conversation_key(span) if span else None, first_turn)


_WANTED = frozenset({b'"model"', b'"stream"', b'"user"'})


def _conversation_key(span: bytes | memoryview) -> str:
    size = len(span)
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=12)
    if size <= 2 * _KEY_SAMPLE:
        h.update(span)
    else:
        h.update(span[:_KEY_SAMPLE])
        h.update(span[size - _KEY_SAMPLE:])
    return h.hexdigest()


class _Top(msgspec.Struct):
    model: Any = msgspec.UNSET
    stream: Any = False
    user: Any = None
    messages: msgspec.Raw = msgspec.UNSET  # type: ignore[assignment]


class _Message(msgspec.Struct):
    role: Any = None


_TOP = msgspec.json.Decoder(_Top)
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
_MESSAGE = msgspec.json.Decoder(_Message)


def _decoded(body: bytes | bytearray) -> tuple[dict[str, object], tuple[bytes, bool] | None] | None:
    """What `_top_level` finds, by msgspec; None when msgspec refuses the body (then the walk decides)."""
    try:
        top = _TOP.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    found: dict[str, object] = {"stream": top.stream, "user": top.user}
    if top.model is not msgspec.UNSET:
        found["model"] = top.model
    raw = bytes(top.messages) if top.messages is not msgspec.UNSET else b""
    if not raw.startswith(b"["):
        return found, None
    elements = _ELEMENTS.decode(raw)
    end = 1
    for i, element in enumerate(elements):
        text = bytes(element)
        end = raw.find(text, end) + len(text)  # in order, with only commas and spaces between
        try:
            role = _MESSAGE.decode(text).role
        except msgspec.ValidationError:
            continue  # not an object: no role
        if role == "user":  # the span: from the `[` to the end of the first user message, as the walk takes it
            return found, (raw[:end], i == len(elements) - 1)
    return found, None


def _top_level(body: bytes | bytearray, wanted: frozenset[bytes]
               ) -> tuple[dict[str, object] | None, tuple[memoryview, bool] | None]:
    """The values of the `wanted` keys (JSON-quoted) of the top-level object (the last one of a repeated key, as
    JSON parsers do), None when the body is not an object; and the span of `messages` from its `[` to the end of its
    first message with role "user" (its bytes), with whether that message is the last one (None without one). A
    value that is an object or array reads as a list."""
    start = _SPACE.match(body).end()
    if body[start:start + 1] != b"{":
        if not body[start:].strip():
            raise _Invalid
        return None, None
    found: dict[str, object] = {}
    depth, pos, walked = 0, start, 0
    messages_at, user_seen, span = -1, False, None  # messages_at >= 0: inside `messages`, before the span's end
    only = False  # no message after the first user message: the conversation's first turn
    while True:
        m = _STRUCTURE.search(body, pos)
        if m is None:
            raise _Invalid  # the object never closes
        at, char = m.start(), body[m.start()]
        walked += 1
        if walked > MAX_VALUES:
            raise ServingError(ErrorCode.INVALID_REQUEST, f"invalid request: the body holds more than {MAX_VALUES:,} "
                               "JSON objects, arrays and strings")
        if char == 0x22:  # '"'
            end = _string_end(body, at)
            if depth == 1 or (depth == 3 and messages_at >= 0):  # a top-level key, or a key of a message
                colon = _SPACE.match(body, end).end()
                if body[colon:colon + 1] == b":":
                    key = bytes(body[at:end])
                    value_at = _SPACE.match(body, colon + 1).end()
                    if depth == 3:
                        if key == b'"role"':
                            value, end = _value(body, value_at)
                            user_seen = user_seen or value == "user"
                    elif key in wanted or (b"\\" in key and json.dumps(json.loads(key)).encode() in wanted):
                        value, end = _value(body, value_at)
                        found[_string(key)] = value
                    elif key == b'"messages"' and span is None and body[value_at:value_at + 1] == b"[":
                        messages_at = value_at
            pos = end
        elif char in b"{[":
            depth += 1
            pos = at + 1
        else:
            depth -= 1
            pos = at + 1
            if messages_at >= 0 and depth <= 2:
                if user_seen and depth == 2:  # the first user message ends here; is it the last message?
                    after = _SPACE.match(body, at + 1).end()
                    span, messages_at, only = (messages_at, at + 1), -1, body[after:after + 1] == b"]"
                elif depth == 1:  # `messages` ended without one
                    messages_at = -1
            if depth == 0:
                return found, (memoryview(body)[span[0]:span[1]], only) if span else None
            if depth < 0:
                raise _Invalid


def _string_end(body: bytes | bytearray, at: int) -> int:
    """Index just past the string that opens at `at`: one search, unless the quote found is preceded by a backslash
    (then it may be escaped, and the string is matched escape by escape)."""
    close = body.find(b'"', at + 1)
    if close < 0:
        raise _Invalid
    if body[close - 1] != 0x5C:  # not a backslash: nothing escapes this quote
        return close + 1
    m = _STRING_TAIL.match(body, at + 1)
    if m is None:
        raise _Invalid
    return m.end()


def _value(body: bytes | bytearray, at: int) -> tuple[object, int]:
    """A scalar value and the index past it; for an object or array, a list marker and `at` (the walk goes on
    through it)."""
    head = body[at:at + 1]
    if head == b'"':
        end = _string_end(body, at)
        return _string(body[at:end]), end
    if head in (b"{", b"["):
        return [], at
    m = _LITERAL.match(body, at)
    if m is None:
        raise _Invalid
    try:
        return json.loads(m.group()), m.end()
    except ValueError:
        raise _Invalid from None


def _string(quoted: bytes | bytearray) -> str:
    """A JSON string's value (`quoted` with its quotes). Plain printable ASCII, as model names and keys are, needs
    no JSON decoder (json.loads was a third of the peek's time on a small chat); anything else goes through it."""
    if b"\\" not in quoted and quoted.isascii():
        text = quoted[1:-1].decode("ascii")
        if text.isprintable():
            return text
    return json.loads(quoted)
