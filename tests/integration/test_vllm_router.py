"""Our worker behind vLLM's router (`vllm-router`, the field's Rust gateway): the router adds its own fields to every
request it forwards (logprobs, no_stop_trim, ignore_eos, continue_final_message, skip_special_tokens,
separate_reasoning, stream_reasoning, return_hidden_states, include_reasoning), which the worker must accept.
A real worker (transformers engine, demo checkpoint) and a real router on loopback, driven by the openai client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.support.media_samples import png_data_url
from tests.support.stack import DEMO_MODEL as MODEL
from tests.support.stack import start_vllm_router, start_worker

ROUTER = Path(sys.executable).with_name("vllm-router")


def _router_runs() -> str | None:
    """None when the router binary starts here, else why not (the only reason to skip)."""
    if not ROUTER.exists() and not shutil.which("vllm-router"):
        return "vllm-router is not installed (pip install -r requirements-test.txt)"
    try:
        subprocess.run([str(ROUTER), "--help"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the vllm-router binary cannot run here: {exc}"
    return None


@pytest.fixture(scope="module")
def routed(demo_checkpoint, log_dir):
    why = _router_runs()
    if why:
        pytest.skip(why)
    worker = start_worker(log_dir, demo_checkpoint, None, model_name=MODEL)
    try:
        router = start_vllm_router(log_dir, [worker.url])
        try:
            yield openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0), router
        finally:
            router.stop()
    finally:
        worker.stop()


IMAGE_TURN = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url((20, 160, 40))}},
                                            {"type": "text", "text": "What colour is this?"}]}]


def test_chat_with_an_image_through_vllm_router(routed):
    client, router = routed
    r = client.chat.completions.create(model=MODEL, messages=IMAGE_TURN, max_tokens=8, temperature=0)
    text_only = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What colour is "
                                                                       "this?"}], max_tokens=1)
    assert r.choices[0].finish_reason in ("stop", "length"), router.log()[-2000:]
    assert r.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image reached the model
    chunks = list(client.chat.completions.create(model=MODEL, messages=IMAGE_TURN, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # greedy: the stream says what the one answer said
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_refusals_reach_the_client_through_the_router(routed):
    client, _ = routed
    with pytest.raises(openai.BadRequestError, match="this server does not support tools="):
        client.chat.completions.create(model=MODEL, messages=IMAGE_TURN, max_tokens=4,
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
