"""The controller reads only `model` and `stream` of a chat request, whatever the JSON around them looks like."""

from __future__ import annotations

import json

import pytest

from common.errors import ErrorCode, ServingError
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
