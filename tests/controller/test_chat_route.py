"""The chat route served ahead of FastAPI's layers (controller/chat_route.py) keeps what FastAPI gave it: what the
app's middlewares do (request ids, the access line, the request counter by route template), its exception handlers
(one JSON error body, counted by code) and the routing answers (405 for another method); an app with a middleware it
does not apply refuses the route. The real controller app, in-process; streaming
through it is covered by the relay and integration tests."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from starlette.middleware.gzip import GZipMiddleware

from prometheus_client.parser import text_string_to_metric_families

from controller.app import create_app
from controller.settings import ControllerSettings

CHAT = "/v1/chat/completions"


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


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_another_method_is_refused_as_by_the_router(client, method):
    r = client.request(method, CHAT)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert f"{method} is not allowed on {CHAT}" in r.json()["error"]["message"]
    assert _count(client, "internvl_http_requests_total", route=CHAT, method=method, status="405") == 1


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
    with TestClient(app) as client, pytest.raises(RuntimeError, match="does not apply"):
        client.post(CHAT, content=b"{}")


def test_each_chat_request_writes_one_access_line_with_its_status(client, caplog):
    with caplog.at_level(logging.INFO, logger="internvl.access"):
        r = client.post(CHAT, content=b"{not json", headers={"X-Request-ID": "trace-43"})
    assert r.headers["x-request-id"] == "trace-43"
    lines = [r for r in caplog.records if r.name == "internvl.access"]
    assert len(lines) == 1 and lines[0].getMessage() == f"POST {CHAT} 400" and lines[0].status == 400
