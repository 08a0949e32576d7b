"""Collect a relayed stream into one non-streaming chat.completion (the controller always streams from workers,
so failover and in-flight counting work the same for both kinds of client request)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from common.errors import ErrorCode, ServingError
from common.http import DONE
from common.protocol import ChatCompletion, Choice, ResponseMessage, Usage
from controller.relay import error_in_event, sse_payloads


async def payloads(blocks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each event in the relay's blocks of complete events."""
    async for block in blocks:
        for data in sse_payloads(block):
            yield data


async def collect(events: AsyncIterator[str], model: str) -> ChatCompletion:
    """`events`: event data, as `payloads` gives it."""
    completion_id, parts, finish, usage = None, [], None, Usage()
    reasoning: list[str] = []  # the answer's reasoning_content deltas (none: the message has no reasoning)
    async for data in events:
        if data == DONE:
            break
        err = error_in_event(data)
        if err is not None:
            raise err
        chunk = json.loads(data)
        completion_id = completion_id or chunk.get("id")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            parts.append(delta.get("content") or "")
            if delta.get("reasoning_content"):
                reasoning.append(delta["reasoning_content"])
            finish = choice.get("finish_reason") or finish
        if chunk.get("usage"):
            usage = Usage.model_validate(chunk["usage"])
    if finish is None:
        raise ServingError(ErrorCode.WORKER_LOST, "the worker ended the answer without finishing it; please retry")
    return ChatCompletion(id=completion_id or "chatcmpl-unknown", model=model,
                          choices=[Choice(message=ResponseMessage(content="".join(parts),
                                                           reasoning_content="".join(reasoning) or None),
                                 finish_reason=finish)],
                          usage=usage)
