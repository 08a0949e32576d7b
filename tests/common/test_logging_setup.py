"""common/logging_setup.py: log lines carry the request id, as key=value text and as JSON, inside a route too."""

from __future__ import annotations

import io
import json
import logging

from fastapi import FastAPI
from fastapi.testclient import TestClient

from common.logging_setup import JsonFormatter, KeyValueFormatter, _RequestIdFilter, install_request_ids, request_id_var


def record(msg: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("controller.relay", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    _RequestIdFilter().filter(rec)
    return rec


def test_log_lines_carry_the_request_id_as_key_value_and_json():
    token = request_id_var.set("rid-7")
    try:
        rec = record('worker w1 failed: "timeout"', status=504)
    finally:
        request_id_var.reset(token)
    kv = KeyValueFormatter().format(rec)
    assert "level=warning logger=controller.relay request_id=rid-7 " in kv
    assert 'msg="worker w1 failed: \\"timeout\\""' in kv and kv.endswith("status=504")
    parsed = json.loads(JsonFormatter().format(rec))
    assert parsed["request_id"] == "rid-7" and parsed["msg"] == 'worker w1 failed: "timeout"'
    assert parsed["status"] == 504
    assert record("outside a request").request_id == "-"


def test_request_id_reaches_the_log_records_of_the_route():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(KeyValueFormatter())
    log = logging.getLogger("test.route")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    app = FastAPI()
    install_request_ids(app)

    @app.get("/x")
    async def x() -> dict:
        log.info("inside the route")
        return {}

    try:
        TestClient(app).get("/x", headers={"X-Request-ID": "carried-1"})
    finally:
        log.removeHandler(handler)
    assert "request_id=carried-1 msg=\"inside the route\"" in stream.getvalue()
