"""What a server made to start (its modules, its app, a worker's model) is frozen out of the cycle collector's full
collections once it has started (common/serve.py): each full collection walked all of it, and stopped every stream
the process served meanwhile (a worker's, up to 130 ms under 500 streams: issue 26). Real processes; their
/metrics tell the frozen count, the collector's thresholds (full collections made ten times rarer) and its own
counts."""

from __future__ import annotations

import httpx
import pytest

from common.serve import FULL_AFTER
from tests.support.chat_http import body
from tests.support.metrics_text import samples
from tests.support.stack import SCRIPTED, start_controller, start_worker

KEY = "metrics-key"  # the worker's own key, to read its /metrics


@pytest.fixture(scope="module")
def servers(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, api_keys=[KEY],
                          model_name="scripted")
    try:
        yield controller, worker
    finally:
        worker.stop()
        controller.stop()


def _metrics(url: str) -> dict:
    return samples(httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text)


@pytest.mark.parametrize("which, at_least", [("controller", 20_000), ("worker", 50_000)])
def test_what_a_server_made_to_start_is_out_of_the_collectors_walks(servers, which, at_least):
    controller, worker = servers
    proc = controller if which == "controller" else worker
    r = httpx.post(controller.url + "/v1/chat/completions", json=body("scripted"), timeout=30)
    assert r.status_code == 200  # the server is serving, after its start
    figures = _metrics(proc.url)
    assert figures[("internvl_gc_frozen_objects", ())] >= at_least
    assert figures[("python_gc_collections_total", (("generation", "2"),))] >= 1  # (the collection before the freeze)
    # Full collections ten times rarer than Python's default (10): each walks what the server holds while serving
    assert figures[("internvl_gc_threshold", (("generation", "2"),))] == FULL_AFTER == 100
