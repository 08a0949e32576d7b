"""Write coalescing (`stream_interval_ms`, common/coalesce.py) in the worker's stream and in the controller's relay,
through a real controller and real scripted workers.

Each write the controller makes is one HTTP chunk of its chunked response, so the client counts the controller's
writes exactly, whatever its own read timing: a fast stream must arrive in far fewer writes than events, every
event intact and in order; a paced stream (events further apart than the interval) must get one write per event,
none held back."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.support.stack import SCRIPTED, start_controller, start_worker


KEY = "direct-use-key"  # a worker takes direct requests only with one of its own keys


@pytest.fixture(scope="module")
def stack(demo_checkpoint, log_dir):
    controller = start_controller(log_dir, stream_interval_ms=5)
    procs = [controller]
    try:
        urls = {"controller": controller.url}
        for name, env in (("fast", {"SCRIPTED_TOKENS": "3000", "SCRIPTED_RATE": "0"}),
                          ("paced", {"SCRIPTED_TOKENS": "8", "SCRIPTED_RATE": "20"})):
            procs.append(start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name=name,
                                      env=env, api_keys=[KEY]))
            urls[name] = procs[-1].url
        yield urls
    finally:
        for proc in reversed(procs):
            proc.stop()


async def http_chunks(url: str, model: str, tokens: int) -> list[tuple[float, bytes]]:
    """(arrival time, bytes) of each HTTP chunk of one streamed answer."""
    body = {"model": model, "stream": True, "max_tokens": tokens, "messages": [{"role": "user", "content": "go"}]}
    chunks: list[tuple[float, bytes]] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        current = b""
        async for data, end_of_chunk in r.content.iter_chunks():
            current += data
            if end_of_chunk and current:  # (the body's zero-length last chunk is no write)
                chunks.append((time.perf_counter(), current))
                current = b""
    return chunks


def events(chunks: list[tuple[float, bytes]]) -> list[str]:
    text = b"".join(c for _, c in chunks).decode()
    return [e[len("data: "):] for e in text.replace("\r\n", "\n").split("\n\n") if e.startswith("data: ")]


@pytest.mark.parametrize("via", ["controller", "worker"])
async def test_a_fast_stream_goes_out_in_few_writes_every_event_intact(stack, via):
    chunks = await http_chunks(stack["controller" if via == "controller" else "fast"], "fast", 3000)
    sent = events(chunks)
    assert sent[-1] == "[DONE]"
    words = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in sent[:-1]
                    if json.loads(e)["choices"])
    assert words.split()[-1] == "word2999" and words.count(" word") == 2999  # nothing lost, nothing doubled
    assert all(c.endswith((b"\n\n", b"\r\n\r\n")) for _, c in chunks)  # each write ends on an event boundary
    assert len(chunks) <= len(sent) / 3, (len(chunks), len(sent))


@pytest.mark.parametrize("via", ["controller", "worker"])
async def test_a_paced_stream_is_written_event_by_event_without_delay(stack, via):
    chunks = await http_chunks(stack["controller" if via == "controller" else "paced"], "paced", 8)
    sent = events(chunks)
    token_chunks = [c for c in chunks if b'"content"' in c[1]]
    assert [c.count(b'"content"') for _, c in token_chunks] == [1] * 8  # one write each
    gaps = [b[0] - a[0] for a, b in zip(token_chunks, token_chunks[1:])]
    assert 0.03 < min(gaps) and max(gaps) < 0.2, gaps  # 50 ms apart, as the worker paced them
    assert sent[-1] == "[DONE]"
