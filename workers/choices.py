"""OpenAI's `n`: one request, n choices. Each choice is a generation of its own (the engine batches them, or runs
them in turn), with its own seed when the request has one, so that the choices differ yet the answer is repeatable.
Their events are merged into one stream of (choice index, event); closing it stops every generation.

Also the wire form of the engines' token logprobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from common.openai_fields import ChoiceLogprobs, TokenLogprob as WireLogprob, TopLogprob
from workers.engines.base import EngineEvent, GenerationRequest, TokenLogprob

SEED_MODULUS = 2**64  # engines take an unsigned 64-bit seed; OpenAI's may be negative

IndexedEvent = tuple[int, EngineEvent]
_END = object()


def choice_requests(gen: GenerationRequest, n: int) -> list[GenerationRequest]:
    if n == 1:
        return [gen]
    seed = gen.sampling.seed
    return [replace(gen, request_id=f"{gen.request_id}-{i}",
                    sampling=replace(gen.sampling, seed=None if seed is None else (seed + i) % SEED_MODULUS))
            for i in range(n)]


async def merged(streams: list[AsyncIterator[EngineEvent]]) -> AsyncIterator[IndexedEvent]:
    """The streams' events as they come, tagged with their index. An error in one stream ends the whole; closing
    this closes every stream (which is how an engine stops a generation)."""
    if len(streams) == 1:  # the usual case: no task, no queue
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[EngineEvent]) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((index, exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            queue.put_nowait((index, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        ended = 0
        while ended < len(tasks):
            index, item = await queue.get()
            if item is _END:
                ended += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()  # each pump closes its stream on its way out


def wire_logprobs(tokens: tuple[TokenLogprob, ...] | None) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        WireLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                    top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=list(s.encode())) for s, lp in t.top])
        for t in tokens or ()])
