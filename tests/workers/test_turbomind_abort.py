"""Stopping a TurboMind request on CPU: the real lmdeploy AsyncEngine (sessions, request-handle pool) with our engine
on top and tests/support/scripted_turbomind.py in place of TurboMind's CUDA part (it keeps TurboMind's contract: a
cancel is a request, confirmed later; a handle must not serve a new request before its old one is confirmed).

Stopping a request is closing its stream (workers/engines/base.py: here, cancelling the task that reads it, as the
worker does when the client leaves). It must take effect before the request's first output, whether the request is
queued for a TurboMind handle or prefilling, and a client that leaves (anyio cancels the response task at every
await, as sse-starlette does) must not make lmdeploy return a handle before TurboMind confirms the cancel.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from tests.support.scripted_turbomind import collect, load_engine
from tests.support.waiting import wait_until_async
from workers.engines.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from workers.prompts.templates import TEMPLATES

GUARD_S = 10  # only a guard against hanging: each awaited event here happens within milliseconds when all is well


@pytest.fixture
async def engine(v1_checkpoint, monkeypatch):
    """One TurboMind handle (max_batch_size 1), so a second request queues for it."""
    eng = await load_engine(v1_checkpoint, monkeypatch, " the cat sat on the mat and", turbomind={"max_batch_size": 1})
    yield eng
    eng.tm.prefill.set()
    await eng.stop()


def request(eng, rid: str, max_new: int = 400) -> GenerationRequest:
    prompt = TEMPLATES[eng.spec.template].render(eng.spec.system_message, [("user", "Say something.")])
    return GenerationRequest(request_id=rid, prompt=prompt, pixel_values=None,
                             sampling=SamplingParams(max_new_tokens=max_new, temperature=0))


async def stopped(task: asyncio.Task) -> None:
    """Close the stream `task` reads (cancel the task); fails when the task is still running after the guard time,
    that is, when stopping waited for TurboMind."""
    task.cancel()
    await asyncio.wait({task}, timeout=GUARD_S)
    assert task.cancelled(), "the request is still waiting"


async def test_closing_a_request_queued_for_a_handle_ends_it_without_reaching_turbomind(engine):
    engine.tm.prefill.clear()  # the first request holds the only handle and stays in its prefill
    first = asyncio.create_task(collect(engine.generate(request(engine, "first"))))
    await wait_until_async(lambda: len(engine.tm.calls) == 1, GUARD_S, "the first request in TurboMind", 0.001)
    first_session = engine._live["first"].session.session_id
    queued = asyncio.create_task(collect(engine.generate(request(engine, "queued"))))
    await wait_until_async(lambda: len(engine._pipe.session_mgr.sessions) == 2, GUARD_S,  # preprocessed
                           "both requests in a session", 0.001)

    await stopped(queued)
    assert len(engine.tm.calls) == 1 and not first.done()  # it never reached TurboMind; the first one runs on
    await engine.settle(GUARD_S)
    assert [s.session_id for s in engine._pipe.session_mgr.sessions.values()] == [first_session]

    await stopped(first)
    engine.tm.prefill.set()
    await engine.settle(GUARD_S)
    assert engine.tm.calls[0].status == "cancel" and not engine.tm.violations
    assert engine._pipe.session_mgr.sessions == {} and engine._pipe.session_mgr.request_handle_pool.num_dispatched == 0
    again = await collect(engine.generate(request(engine, "again", max_new=5)))  # the handle serves again
    assert again[-1] == FinishEvent("length", again[-1].prompt_tokens, 5)


async def test_closing_during_prefill_ends_the_request_before_its_first_token(engine):
    engine.tm.prefill.clear()
    task = asyncio.create_task(collect(engine.generate(request(engine, "slow"))))
    await wait_until_async(lambda: len(engine.tm.calls) == 1, GUARD_S, "the first request in TurboMind", 0.001)

    await stopped(task)  # no waiting for TurboMind's first output
    assert engine._live == {}
    call = engine.tm.calls[0]
    assert call.cancel_requested and not call.released.is_set()  # TurboMind has been asked; it confirms later
    engine.tm.prefill.set()
    await engine.settle(GUARD_S)
    assert call.status == "cancel" and call.tokens == [] and not engine.tm.violations


async def test_client_gone_under_anyio_cancellation_returns_the_handle_only_after_turbomind_confirms(engine):
    seen = asyncio.Event()

    async def client():
        async for event in engine.generate(request(engine, "leaver")):
            if isinstance(event, TokenEvent):
                seen.set()

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client)
            await seen.wait()
            tg.cancel_scope.cancel()  # what starlette does when the client disconnects
    assert engine._live == {}
    await engine.settle(GUARD_S)
    call = engine.tm.calls[0]
    assert call.cancel_requested and call.status == "cancel" and len(call.tokens) < 400
    assert not engine.tm.violations, engine.tm.violations
    assert engine._pipe.session_mgr.sessions == {} and engine._pipe.session_mgr.request_handle_pool.num_dispatched == 0
