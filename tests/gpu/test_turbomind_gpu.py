"""TurboMind on a real GPU: a real worker process (`python -m workers --engine turbomind`) on random-weight
checkpoints of both vision routes, several concurrent multi-image streams, one aborted, the rest complete.

Run on the GPU machine by bench/gpu_check.sh (docs/gpu.md). Plain tests that call asyncio.run: the GPU machine has
no pytest-asyncio. Outputs equal to transformers': test_turbomind_outputs.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.gpu.random_checkpoint import build_native_v2, build_remote_v1
from tests.support.media_samples import data_url, encode
from tests.support.stack import start_worker
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["remote_v1", "native_v2"])
def worker(request, tmp_path_factory):
    build = {"remote_v1": build_remote_v1, "native_v2": build_native_v2}[request.param]
    path = build(tmp_path_factory.mktemp(request.param), "tiny", "cuda")
    proc = start_worker(tmp_path_factory.mktemp("logs"), path, controller_url=None, engine="turbomind",
                        wait_registered=False, max_concurrency=16)
    proc.extra["model"] = path.name  # the worker serves its checkpoint under the folder's name and 404s any other
    yield proc
    print(proc.log()[-4000:])  # shown with -s or on failure: lmdeploy's view of the run
    proc.stop()


def image_url(seed: int, size=(640, 480)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return data_url(encode(Image.fromarray(pixels)), "image/png")


def chat(model: str, seed: int, max_tokens: int) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_url(seed)}},
               {"type": "image_url", "image_url": {"url": image_url(seed + 100)}},
               {"type": "text", "text": "Compare the two images."}]
    return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}


async def stream(client: httpx.AsyncClient, url: str, body: dict, stop_after: int | None = None) -> dict:
    """Read the SSE stream; with stop_after, hang up after that many content chunks (a client that leaves)."""
    chunks, finish = 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            choice = event["choices"][0]
            chunks += bool(choice["delta"].get("content"))
            finish = choice.get("finish_reason") or finish
            if stop_after is not None and chunks >= stop_after:
                break
    return {"chunks": chunks, "finish": finish}


def test_concurrent_multi_image_streams_with_one_abort(worker):
    asyncio.run(concurrent_streams_with_one_abort(worker))


async def concurrent_streams_with_one_abort(worker):
    async with httpx.AsyncClient(timeout=300) as client:
        health = (await client.get(f"{worker.url}/health")).json()
        assert health["engine"] == "turbomind"
        model = worker.extra["model"]
        jobs = [stream(client, worker.url, chat(model, i, 96), stop_after=3 if i == 2 else None) for i in range(6)]
        results = await asyncio.gather(*jobs)
        for i, res in enumerate(results):
            if i == 2:
                assert res["chunks"] == 3 and res["finish"] is None
            else:
                assert res["finish"] == "length" and res["chunks"] > 0, (i, res)
        # the aborted request's KV must be back: the worker goes idle, then serves again
        async def idle() -> dict | None:
            health = (await client.get(f"{worker.url}/health")).json()
            return health if health["status"] == "ok" and health["in_flight"] == 0 and \
                not health.get("engine_running") else None

        await wait_until_async(idle, 30, "the worker idle after the abort", interval=0.1,
                               detail=lambda: worker.log()[-2000:])
        again = await stream(client, worker.url, chat(model, 42, 8))
        assert again["finish"] == "length"


def test_over_long_prompt_is_a_400(worker):
    body = chat(worker.extra["model"], 1, 8) | {"stream": False}
    body["messages"][0]["content"][-1]["text"] = "word " * 20000
    with httpx.Client(timeout=120) as client:
        resp = client.post(f"{worker.url}/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "context_length_exceeded"
