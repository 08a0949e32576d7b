"""Structured logs with a request id, for the controller and the workers.

One line per record, either key=value (default, readable and grep-able) or JSON (`--log-format json`, for log
shippers). Every record carries the request id of the HTTP request it belongs to ('-' outside requests). The id
comes from the client's `X-Request-ID` header, or is made here; it is put back into the request headers (so routes
and the controller's relay forward the same id to the worker) and echoed in the response's `X-Request-ID`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # anything else is replaced: ids end up in log lines
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id",
                                                                             "color_message"}  # uvicorn's ANSI copy

access_log = logging.getLogger("internvl.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name,
                  "request_id": getattr(record, "request_id", "-"), "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())


def _kv_value(value: object) -> str:
    text = str(value)
    if text and not re.search(r'[\s"=]', text):
        return text
    return json.dumps(text, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name,
                  "request_id": getattr(record, "request_id", "-"), "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "kv") -> None:
    """Configure the root logger once per process; uvicorn's own loggers are routed through it too (start uvicorn
    with `log_config=None` so it does not install its own handlers over these)."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every request at INFO: heartbeats every few seconds would bury the useful lines.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex. Ids must be unique, not secret (a client may send its own): the process's
    seeded generator, not os.urandom and a UUID object (a tenth of that cost)."""
    return f"{random.getrandbits(128):032x}"


class RequestRecord:
    """One request's id, bound for its logs and echoed in its response's head, and its access line at its end:
    what `RequestIdMiddleware` does for each request, in one place for it and for the route served ahead of the
    middlewares (controller/direct_routes.py)."""

    __slots__ = ("_rid_header", "_token", "method", "path", "rid", "started", "status")

    KEY = "internvl.request_record"  # scope[KEY]: the request's record, for a head sent outside `send`

    def __init__(self, scope: Scope):
        headers = scope["headers"]
        given = None
        for k, v in headers:
            if k == b"x-request-id":
                given = v.decode("latin-1")  # (the last one counts, as in a dict of them)
        if given is None:
            self.rid = new_request_id()
        else:
            self.rid = given if _VALID_ID.match(given) else new_request_id()
            headers = [(k, v) for k, v in headers if k != b"x-request-id"]
        self._rid_header = (b"x-request-id", self.rid.encode())
        scope["headers"] = [*headers, self._rid_header]
        self.method, self.path = scope.get("method"), scope.get("path", "")  # (not the scope: it holds the record)
        scope[self.KEY] = self
        self._token = request_id_var.set(self.rid)
        self.started, self.status = time.monotonic(), 500

    def sent(self, message: Message) -> None:
        """A message of the response, before it goes: the head's status is noted and the id added to it."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", []), self._rid_header]

    def watching(self, send: Send) -> Send:
        """`send`, telling this record of each message first (`sent`)."""
        async def send_seen(message: Message) -> None:
            self.sent(message)
            await send(message)

        return send_seen

    def end(self) -> None:
        # (probes would drown the useful lines; the line's fields are made only for a log that takes it)
        if self.path not in ("/health", "/metrics", "/workers/heartbeat") and access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s %d", self.method, self.path, self.status,
                            extra={"status": self.status,
                                   "duration_ms": round((time.monotonic() - self.started) * 1000, 1)})
        request_id_var.reset(self._token)


class RequestIdMiddleware:
    """Pure ASGI middleware: binds the request id for the request's logs and writes one access line per request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope)
        try:
            await self.app(scope, receive, record.watching(send))
        finally:
            record.end()


def install_request_ids(app) -> None:
    app.add_middleware(RequestIdMiddleware)
