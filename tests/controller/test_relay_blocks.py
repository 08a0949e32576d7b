"""The relay reads only the end of each block of events (issue 26: searching every relayed byte was half of the
controller's CPU per token). What it must still find there, when a worker's whole answer comes in one network write
among thousands of token events: the usage event (tokens/s), a mid-stream error event (counted by code), the end
marker (the stream ends once, the connection goes back to the pool); and the bytes go through unchanged."""

from __future__ import annotations

import contextlib
import json
import random

import pytest

from common.errors import ErrorCode, error_body
from common.metrics import Metrics
from common.protocol import ModelCard, WorkerRegistration
from common.sse import complete_events
from controller.app import worker_client
from controller.policies import ShortestQueue
from controller.registry import Registry
from controller.relay import Dispatcher
from controller.settings import ControllerSettings
from tests.support.loopback_workers import LoopbackWorkers, sse, stream
from tests.support.metrics_text import samples
from tests.support.stream_chunks import CHUNK, USAGE

MANY = [CHUNK] * 3000  # ~300 kB: more than one network read


@contextlib.asynccontextmanager
async def one_write_dispatcher(payloads: list[str]):
    """One loopback worker that sends all of these events in one write."""
    async with LoopbackWorkers() as workers:
        registry = Registry(expiry_s=60)
        registry.register(WorkerRegistration(worker_id="w", url=await workers.start(stream(*payloads)),
                                             models=[ModelCard(id="m")], max_concurrency=2))
        metrics = Metrics()
        settings = ControllerSettings(first_token_timeout_s=5, token_timeout_s=5)
        async with worker_client(settings) as session:
            yield Dispatcher(registry, ShortestQueue(random.Random(0)), session, settings, metrics), metrics, registry


async def relayed_bytes(d: Dispatcher) -> bytes:
    up = await d.open(b'{"model": "m"}', "m", "rid")
    return b"".join([block async for block in d.relay(up)])


async def test_usage_at_the_end_of_a_long_write_is_read_and_the_bytes_pass_unchanged():
    payloads = [*MANY, USAGE, "[DONE]"]
    async with one_write_dispatcher(payloads) as (d, metrics, registry):
        relayed = await relayed_bytes(d)
        assert registry.get("w").in_flight == 0 and registry.get("w").served == 1
    assert relayed == sse(*payloads)  # every byte, once, the end marker last
    s = samples(metrics.render().decode())
    assert s[("internvl_generation_tokens_per_second_count", ())] == 1


async def test_an_error_event_at_the_end_of_a_long_write_is_counted_once():
    payloads = [*MANY, json.dumps(error_body(ErrorCode.ENGINE_ERROR, "boom")), "[DONE]"]
    async with one_write_dispatcher(payloads) as (d, metrics, _):
        relayed = await relayed_bytes(d)
    assert relayed == sse(*payloads)
    assert samples(metrics.render().decode())[("internvl_errors_total", (("code", "engine_error"),))] == 1


@pytest.mark.parametrize("buffer, end", [
    (b"data: a\r\n\r\ndata: b\r\n\r\n", 22),  # CRLF, the whole buffer
    (b"data: a\r\n\r\ndata: b\r\n", 11),  # the second event not complete yet
    (b"data: a\n\ndata: b", 9),  # LF
    (b"data: a\r\n\r\ndata: b\n\ndata: c", 20),  # an LF event after a CRLF one
    (b"data: a\n\ndata: b\r\n\r\n", 20),  # a CRLF event after an LF one
    (b"data: a\r\n", 0),
    (b"", 0),
])
def test_complete_events_finds_the_last_event_end(buffer, end):
    assert complete_events(buffer) == end
