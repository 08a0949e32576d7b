"""The routes served ahead of FastAPI's layers (controller/direct_routes.py: chat, the workers' heartbeat) keep what
FastAPI gave them: what the app's middlewares do (request ids, the access line, the request counter by route
template), its exception handlers (one JSON error body, counted by code) and the routing answers (405 for another
method); an app with a middleware they do not apply refuses them. The real controller app, in-process; streaming
through it is covered by the relay and integration tests, heartbeats from real workers by the registration tests."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from starlette.middleware.gzip import GZipMiddleware

from prometheus_client.parser import text_string_to_metric_families

from common.protocol import ModelCard, WorkerRegistration
from controller.app import create_app
from controller.settings import ControllerSettings

CHAT = "/v1/chat/completions"
HEARTBEAT = "/workers/heartbeat"


@pytest.fixture
def client():
    with TestClient(create_app(ControllerSettings())) as c:
        yield c


def _count(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


@pytest.mark.parametrize("path", [CHAT, HEARTBEAT])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_another_method_is_refused_as_by_the_router(client, method, path):
    r = client.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert f"{method} is not allowed on {path}" in r.json()["error"]["message"]
    assert _count(client, "internvl_http_requests_total", route=path, method=method, status="405") == 1


def test_a_heartbeat_is_answered_and_counted_under_its_route():
    secret = {"X-Registration-Secret": "s3cret"}  # (the test client is not on loopback)
    with TestClient(create_app(ControllerSettings(registration_secret="s3cret")), headers=secret) as client:
        _heartbeats(client)
    with TestClient(create_app(ControllerSettings(registration_secret="s3cret"))) as client:
        refused = client.post(HEARTBEAT, json={"worker_id": "w"})
        assert refused.status_code == 403 and "registration secret" in refused.json()["error"]["message"]


def _heartbeats(client: TestClient) -> None:
    unknown = client.post(HEARTBEAT, json={"worker_id": "ghost"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_worker"
    bad = client.post(HEARTBEAT, json={"queued": 1})
    assert bad.status_code == 400 and "worker_id" in bad.json()["error"]["message"]
    assert _count(client, "internvl_http_requests_total", route=HEARTBEAT, method="POST", status="404") == 1
    assert _count(client, "internvl_errors_total", code="unknown_worker") == 1
    client.app.state.registry.register(WorkerRegistration(worker_id="w", url="http://127.0.0.1:9",
                                                          models=[ModelCard(id="m")], max_concurrency=1))
    ok = client.post(HEARTBEAT, json={"worker_id": "w", "queued": 3})
    assert ok.status_code == 200 and ok.json() == {"ok": True} and len(ok.headers["x-request-id"]) == 32
    assert client.app.state.registry.get("w").queued == 3
    assert _count(client, "internvl_http_requests_total", route=HEARTBEAT, method="POST", status="200") == 1


def test_a_route_is_served_ahead_only_if_added_before_the_first_request(client):
    client.post(CHAT, content=b"{}")
    with pytest.raises(RuntimeError, match="add it before"):
        client.app.serve_ahead("/late", client.app.state.registry.all)


def test_errors_are_the_apps_json_bodies_counted_by_code(client):
    bad = client.post(CHAT, content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    none = client.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert none.status_code == 503 and none.json()["error"]["code"] == "no_worker_available"
    assert _count(client, "internvl_errors_total", code="invalid_json") == 1
    assert _count(client, "internvl_errors_total", code="no_worker_available") == 1
    assert _count(client, "internvl_http_requests_total", route=CHAT, method="POST", status="400") == 1
    assert _count(client, "internvl_http_requests_total", route=CHAT, method="POST", status="503") == 1


def test_request_ids_are_kept_or_made(client):
    given = client.post(CHAT, content=b"{}", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = client.post(CHAT, content=b"{}")
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "trace-42"


def test_a_body_over_the_limit_is_refused_before_it_is_read(client):
    limit = ControllerSettings().max_body_bytes
    r = client.post(CHAT, content=b"x", headers={"Content-Length": str(limit + 1)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_other_paths_still_go_through_fastapi(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/no/such/path").json()["error"]["code"] == "not_found"


def test_an_app_with_a_middleware_the_route_does_not_apply_refuses_it():
    app = create_app(ControllerSettings())
    app.add_middleware(GZipMiddleware)
    with TestClient(app) as client, pytest.raises(RuntimeError, match="do not apply"):
        client.post(CHAT, content=b"{}")


def test_each_chat_request_writes_one_access_line_with_its_status(client, caplog):
    with caplog.at_level(logging.INFO, logger="internvl.access"):
        r = client.post(CHAT, content=b"{not json", headers={"X-Request-ID": "trace-43"})
    assert r.headers["x-request-id"] == "trace-43"
    lines = [r for r in caplog.records if r.name == "internvl.access"]
    assert len(lines) == 1 and lines[0].getMessage() == f"POST {CHAT} 400" and lines[0].status == 400
