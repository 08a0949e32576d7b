"""Collect a relayed stream into one non-streaming chat.completion (the controller always streams from workers,
so failover and in-flight counting work the same for both kinds of client request)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from common.errors import ErrorCode, ServingError
from common.openai_fields import ChoiceLogprobs
from common.protocol import ChatCompletion, Choice, ResponseMessage, Usage
from common.sse import DONE, error_in_event


async def collect(events: AsyncIterator[str], model: str) -> ChatCompletion:
    """`events`: event data (common/sse.py `payloads`). One choice per index the chunks name (OpenAI's `n`)."""
    completion_id, usage = None, Usage()
    parts: dict[int, list[str]] = {}
    reasoning: dict[int, list[str]] = {}  # a choice's reasoning_content deltas (none: the message has no reasoning)
    tokens: dict[int, list | None] = {}  # None: the chunks carried no logprobs
    finish: dict[int, str] = {}
    async for data in events:
        if data == DONE:
            break
        err = error_in_event(data)
        if err is not None:
            raise err
        chunk = json.loads(data)
        completion_id = completion_id or chunk.get("id")
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index") or 0)
            delta = choice.get("delta") or {}
            parts.setdefault(index, []).append(delta.get("content") or "")
            if delta.get("reasoning_content"):
                reasoning.setdefault(index, []).append(delta["reasoning_content"])
            content = (choice.get("logprobs") or {}).get("content")
            if content is not None:
                tokens[index] = (tokens.get(index) or []) + content
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
        if chunk.get("usage"):
            usage = Usage.model_validate(chunk["usage"])
    if not finish or set(finish) != set(parts):
        raise ServingError(ErrorCode.WORKER_LOST, "the worker ended the answer without finishing it; please retry")
    return ChatCompletion(id=completion_id or "chatcmpl-unknown", model=model, usage=usage, choices=[
        Choice(index=i, message=ResponseMessage(content="".join(parts[i]),
                                                reasoning_content="".join(reasoning[i]) if i in reasoning else None),
               finish_reason=finish[i], logprobs=None if tokens.get(i) is None else ChoiceLogprobs(content=tokens[i]))
        for i in sorted(parts)])
