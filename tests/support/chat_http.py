"""Small HTTP helpers for tests that chat through a controller or a worker: chat bodies, held streams, the controller's
worker table."""

from __future__ import annotations

import json

import httpx


def body(model: str, content: str | list[dict] = "hello", max_tokens: int | None = 4, stream: bool = False,
         **extra) -> dict:
    """A one-message chat request body; `content` a text or OpenAI content parts; max_tokens None: not sent."""
    sent = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    return sent if max_tokens is None else {**sent, "max_tokens": max_tokens}


def chat(http: httpx.Client, url: str, model: str, text: str = "hello", **extra) -> httpx.Response:
    return http.post(url + "/v1/chat/completions", json=body(model, text, **extra))


def worker_status(ctl_url: str) -> dict[str, dict]:
    return {w["worker_id"]: w for w in httpx.get(ctl_url + "/workers", timeout=10).json()["workers"]}


def data_lines(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


class HeldStream:
    """A stream read up to its first event and held open; `rest()` reads it to the end, `close()` leaves it."""

    def __init__(self, http: httpx.Client, url: str, payload: dict):
        request = http.build_request("POST", url + "/v1/chat/completions", json=payload)
        self.response = http.send(request, stream=True)
        assert self.response.status_code == 200, self.response.read()
        self.worker_id = self.response.headers.get("x-worker-id")
        self.events = data_lines(self.response)  # kept: dropping a half-read iterator closes the connection
        self.first = next(self.events)
        assert "error" not in json.loads(self.first), self.first

    def rest(self) -> list[str]:
        try:
            return list(self.events)
        finally:
            self.response.close()

    def close(self) -> None:
        self.response.close()


def open_stream(http: httpx.Client, url: str, model: str, text: str = "hello", max_tokens: int = 400) -> HeldStream:
    return HeldStream(http, url, body(model, text, max_tokens, stream=True))
