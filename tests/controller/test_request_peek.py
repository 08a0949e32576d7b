"""The controller reads only `model` and `stream` of a chat request, whatever the JSON around them looks like."""

from __future__ import annotations

import json

import pytest

from common.errors import ErrorCode, ServingError
from controller import request_peek
from controller.request_peek import MAX_VALUES, peek_request


@pytest.mark.parametrize("body, model, stream", [
    (b'{"model": "m", "messages": []}', "m", False),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": true, "model": "m"}', "m", True),
    (b'  {\n"stream" :false ,"model":"a\\"b"}  ', 'a"b', False),
    (b'{"mod\\u0065l": "escaped key", "stream": null}', "escaped key", False),
    (b'{"messages": [{"content": "{\\"model\\": \\"inner\\"}", "model": "nested"}], "model": "outer"}', "outer",
     False),
    (b'{"model": "first", "model": "last"}', "last", False),  # as JSON parsers read a repeated key
    (b'{"stream_options": {"include_usage": true}, "model": "m", "stream": true}', "m", True),
    (json.dumps({"model": "caf\u00e9", "messages": [{"content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + "A" * 3_000_000}}]}]}).encode(), "caf\u00e9", False),
])
async def test_routing_fields_are_read_whatever_the_layout(body, model, stream):
    peeked = await peek_request(bytearray(body))
    assert (peeked.model, peeked.stream) == (model, stream)


@pytest.mark.parametrize("body, code, words", [
    (b'{"model": "m", "messages": [', ErrorCode.INVALID_JSON, "not valid json"),
    (b'{"model": "m', ErrorCode.INVALID_JSON, "not valid json"),
    (b"", ErrorCode.INVALID_JSON, "not valid json"),
    (b"[1, 2, 3]", ErrorCode.INVALID_REQUEST, "json object"),
    (b'{"messages": []}', ErrorCode.INVALID_REQUEST, "model: field required"),
    (b'{"model": 3}', ErrorCode.INVALID_REQUEST, "model: input should be a valid string"),
    (b'{"model": ["m"]}', ErrorCode.INVALID_REQUEST, "model: input should be a valid string"),
    (b'{"model": "m", "stream": "yes"}', ErrorCode.INVALID_REQUEST, "stream: input should be a valid boolean"),
    (b'{"model": "m", "x": [' + b"[]," * (MAX_VALUES // 2 + 1) + b"[]]}", ErrorCode.INVALID_REQUEST,
     "more than 200,000"),
])
async def test_what_routing_needs_is_refused_clearly(body, code, words):
    with pytest.raises(ServingError) as err:
        await peek_request(body)
    assert err.value.code == code and err.value.status == 400
    assert words in err.value.message.lower(), err.value.message


def _chat(*messages: dict, **extra) -> bytes:
    return json.dumps({"model": "m", "messages": list(messages), **extra}).encode()


SYSTEM = {"role": "system", "content": "Answer the questions."}
PHOTO = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                                         "QUJD" * 500_000}},
                                     {"type": "text", "text": "what is this?"}]}
ANSWER = {"role": "assistant", "content": "a cat"}
AGAIN = {"role": "user", "content": "what colour is it? {\"role\": \"user\"}"}


async def test_conversation_key_is_the_same_for_every_turn_and_differs_between_chats():
    turn1 = await peek_request(_chat(SYSTEM, PHOTO))
    turn2 = await peek_request(_chat(SYSTEM, PHOTO, ANSWER, AGAIN))
    assert turn1.conversation and turn1.conversation == turn2.conversation
    assert turn1.first_turn and not turn2.first_turn
    other_photo = {**PHOTO, "content": [PHOTO["content"][0], {"type": "text", "text": "and this?"}]}
    other_system = {**SYSTEM, "content": "Be brief."}
    keys = {(await peek_request(_chat(*ms))).conversation for ms in
            [(SYSTEM, PHOTO), (SYSTEM, AGAIN), (other_system, PHOTO), (SYSTEM, other_photo), (PHOTO,)]}
    assert len(keys) == 5  # the system prompt alone, or the photo alone, does not make two chats one


@pytest.mark.parametrize("body", [_chat(SYSTEM), _chat(), b'{"model": "m", "messages": "x"}',
                                  b'{"model": "m", "messages": [{"content": [{"role": "user"}]}]}'])
async def test_no_conversation_key_without_a_user_message(body):
    assert (await peek_request(body)).conversation is None


async def test_user_field_is_read_when_it_is_a_string():
    assert (await peek_request(_chat(AGAIN, user="alice"))).user == "alice"
    assert (await peek_request(_chat(AGAIN, user=7))).user is None


LAYOUTS = [
    b'{"model": "m", "messages": []}',
    b'  {\n"stream" :false ,"model":"a\\"b", "user": "u"}  ',
    b'{"mod\\u0065l": "escaped key", "stream": null, "user": 7}',
    b'{"model": "first", "model": "last", "stream": true}',
    b'{"model": "m", "messages": [ {"role": "system", "content": "s"} ,\n {"role" : "us\\u0065r", "content": "x"} ]}',
    b'{"model": "m", "messages": [1, "x", [{"role": "user"}], {"role": "user", "content": "after"}, {"role": "user"}]}',
    b'{"model": "m", "messages": [{"role": "assistant"}, {"content": [{"role": "user"}]}]}',
    b'{"model": "m", "messages": "x"}',
    b'{"model": ["m"], "stream": {"a": 1}}',
    b'{"model": "m"} trailing',
    b'{"model": "m", "x": tru}',
    b'[1, 2]',
    _chat(SYSTEM, AGAIN), _chat(AGAIN, ANSWER), _chat(ANSWER, SYSTEM), _chat(AGAIN, user="alice", stream=True),
]


@pytest.mark.parametrize("body", LAYOUTS)
async def test_a_small_body_decoded_reads_as_the_walk_reads_it(body, monkeypatch):
    """Bodies up to 16 KiB are decoded by msgspec (a body it refuses is walked): the same answer or the same error."""
    async def both() -> list:
        out = []
        for limit in (request_peek._DECODE_MAX, 0):  # decoded, then walked
            monkeypatch.setattr(request_peek, "_DECODE_MAX", limit)
            try:
                out.append(await peek_request(body))
            except ServingError as err:
                out.append((err.code, err.message))
        return out

    decoded, walked = await both()
    assert decoded == walked


async def test_a_conversation_keeps_its_key_when_its_body_outgrows_the_decoder():
    first = _chat(SYSTEM, AGAIN)  # a text chat: decoded
    later = _chat(SYSTEM, AGAIN, ANSWER, PHOTO)  # a photo in a later turn: 2 MB, walked
    assert len(first) <= request_peek._DECODE_MAX < len(later)
    turn1, turn3 = await peek_request(first), await peek_request(later)
    assert turn1.conversation and turn1.conversation == turn3.conversation
    assert turn1.first_turn and not turn3.first_turn
