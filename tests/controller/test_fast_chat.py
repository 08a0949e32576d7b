"""The usual chat request served from the connection's callbacks (controller/fast_chat.py) answers as the route does,
and everything else is the route's: what it does not take, what fails its checks, and a first attempt that does not
start well, which the route goes on with (its failover, counting and errors). A client that leaves is let go of as
the route lets go of it.

The real controller app under our server protocol, in the test's event loop (so the test sees which way each request
went: `Ways`); stand-in workers registered over HTTP; requests over real sockets. The existing relay, cancellation,
failover and accounting tests run through the same path wherever a request qualifies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from common.bounded_http import BoundedHttpTools, bounded_http
from controller.app import create_app
from controller.fast_chat import MAX_BODY
from controller.settings import ControllerSettings
from tests.support.chat_http import body
from tests.support.raw_http import RawClient, read_to_close
from tests.support.served_app import served, until
from tests.support.standin_workers import Behaviour, Seen, hang, standins, tokens
from tests.support.stream_chunks import CHUNK, FINISH

CHAT = "/v1/chat/completions"


class Ways:
    """Which way the app's chat requests went: `taken`, what the fast path's `take` answered for each request it was
    offered (a request it does not want is never offered); `tasks`, how many chat requests the app's task served;
    `handed_over`, how many of those the fast path had taken."""

    def __init__(self, app, monkeypatch):
        self.taken: list[bool] = []
        self.tasks = 0
        self.handed_over = 0
        fast, take, start = app.below_asgi, app.below_asgi.take, BoundedHttpTools._start_asgi_task
        mine = set()  # (the cycles of the requests taken)

        def counted_take(protocol, cycle, body):
            self.taken.append(take(protocol, cycle, body))
            if self.taken[-1]:
                mine.add(id(cycle))
            return self.taken[-1]

        def counted_start(protocol, cycle, app):
            if cycle.scope["path"] == CHAT:
                self.tasks += 1
                self.handed_over += id(cycle) in mine
            start(protocol, cycle, app)

        monkeypatch.setattr(fast, "take", counted_take)
        monkeypatch.setattr(BoundedHttpTools, "_start_asgi_task", counted_start)


def then(first: Behaviour, later: Behaviour) -> Behaviour:
    """`first` for a worker's first request (which leaves a kept-alive connection to it), `later` for the rest."""
    calls = 0

    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return await (first if calls == 1 else later)(request, seen)

    return answer


def error_status() -> Behaviour:
    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.json_response({"error": {"message": "engine broke", "type": "server_error",
                                            "code": "internal_error"}}, status=500)
    return answer


def error_event() -> Behaviour:
    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"error": {"message": "engine broke", "type": "server_error", '
                             b'"code": "internal_error"}}\r\n\r\ndata: [DONE]\r\n\r\n')
        await response.write_eof()
        return response
    return answer


def ends_at_once() -> Behaviour:
    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: [DONE]\r\n\r\n")
        await response.write_eof()
        return response
    return answer


def drops() -> Behaviour:
    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse:
        request.transport.abort()
        return web.Response()
    return answer


def stream(**extra) -> dict:
    return body("m", stream=True, **extra)


def events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


@contextlib.asynccontextmanager
async def _controller(settings: ControllerSettings | None = None) -> AsyncIterator[tuple]:
    """(the controller app, its URL), served by our server protocol in this event loop."""
    app = create_app(settings or ControllerSettings(heartbeat_expiry_s=600.0))
    async with served(app, http=bounded_http()) as url:
        yield app, url


def _leases(app) -> int:
    return sum(len(w.leases) for w in app.state.registry.all())


def _chat_count(app, status: int) -> float:
    """The request counter's count of chat requests answered with `status`."""
    labels = {"route": CHAT, "method": "POST", "status": str(status)}
    return next((s.value for m in app.state.metrics.requests.collect() for s in m.samples
                 if s.name.endswith("_total") and s.labels == labels), 0.0)


async def test_the_usual_request_is_answered_below_asgi_as_the_route_answers_it(monkeypatch, caplog):
    caplog.set_level("INFO", logger="internvl.access")
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"w": tokens(3, gap_s=0.0)}) as workers, \
                httpx.AsyncClient(base_url=url, timeout=10) as http:
            first = await http.post(CHAT, json=stream())  # no connection to the worker yet: one is made for it
            assert ways.taken == [True] and ways.tasks == 0
            fast = await http.post(CHAT, json=stream(), headers={"X-Request-ID": "req-fast-1"})
            assert ways.taken == [True, True] and ways.tasks == 0  # answered with no task
            # A forwarded header is the route's (its proxy headers middleware): never offered to the fast path
            routed = await http.post(CHAT, json=stream(), headers={"X-Forwarded-For": "10.1.2.3"})
            assert ways.taken == [True, True] and ways.tasks == 1
            assert _chat_count(app, 200) == 3 and _leases(app) == 0
            assert app.state.registry.get("w").served == 3
        for r in (first, fast, routed):
            assert r.status_code == 200, r.text
            assert events(r.text) == [CHUNK] * 3 + [FINISH, "[DONE]"]
        assert fast.headers["x-request-id"] == "req-fast-1"  # the client's id, echoed (and sent to the worker)
        assert workers["w"].seen[1].headers["X-Request-ID"] == "req-fast-1"
        assert json.loads(workers["w"].seen[1].body) == stream()  # the body as the client sent it
        unlike = {"date", "x-request-id"}
        assert {k: v for k, v in fast.headers.items() if k not in unlike} == \
            {k: v for k, v in routed.headers.items() if k not in unlike}
    lines = [r for r in caplog.records if r.name == "internvl.access" and r.getMessage() == f"POST {CHAT} 200"]
    assert len(lines) == 3


@pytest.mark.parametrize("case", ["not streamed", "query string", "large body", "chunked body", "expect",
                                  "invalid json", "unknown model", "stream not a boolean"])
async def test_what_it_does_not_take_is_answered_by_the_route(monkeypatch, case):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"w": tokens(2, gap_s=0.0)}), httpx.AsyncClient(base_url=url, timeout=10) as http:
            await http.post(CHAT, json=stream())
            await http.post(CHAT, json=stream())
            assert ways.taken == [True, True] and ways.tasks == 0
            sent = json.dumps(stream()).encode()
            path, headers = CHAT, {"Content-Type": "application/json"}
            if case == "not streamed":
                sent = json.dumps(body("m")).encode()
            elif case == "query string":
                path = CHAT + "?tag=1"
            elif case == "large body":
                sent = json.dumps(stream(content="x" * MAX_BODY)).encode()
            elif case == "expect":
                headers["Expect"] = "100-continue"
            elif case == "invalid json":
                sent = b'{"model": "m", "stream": true, "messages": ['
            elif case == "unknown model":
                sent = json.dumps(body("nope", stream=True)).encode()
            elif case == "stream not a boolean":
                sent = json.dumps(body("m", stream="yes")).encode()

            async def chunks() -> AsyncIterator[bytes]:
                yield sent

            r = await http.post(path, content=chunks() if case == "chunked body" else sent, headers=headers)
            offered = case in ("not streamed", "invalid json", "unknown model", "stream not a boolean")
            assert ways.taken == [True, True] + ([False] if offered else [])
            assert ways.tasks == 1 and ways.handed_over == 0  # this one's
        expected = {"invalid json": (400, "invalid_json"), "unknown model": (404, "model_not_found"),
                    "stream not a boolean": (400, "invalid_request")}
        if case in expected:
            status, code = expected[case]
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        else:
            assert r.status_code == 200, r.text
            assert (r.json()["choices"][0]["message"]["content"] == "hihi" if case == "not streamed"
                    else events(r.text)[-1] == "[DONE]")
        assert _leases(app) == 0


async def test_a_key_the_route_refuses_is_refused_as_the_route_refuses_it(monkeypatch):
    async with _controller(ControllerSettings(heartbeat_expiry_s=600.0, api_keys=["k1"])) as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"w": tokens(2, gap_s=0.0)}), httpx.AsyncClient(base_url=url, timeout=10) as http:
            key = {"Authorization": "Bearer k1"}
            await http.post(CHAT, json=stream(), headers=key)
            assert (await http.post(CHAT, json=stream(), headers=key)).status_code == 200
            refused = await http.post(CHAT, json=stream(), headers={"Authorization": "Bearer k2"})
        assert ways.taken == [True, True, False]
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert _chat_count(app, 401) == 1


async def test_a_worker_that_cannot_be_reached_is_the_routes_to_judge(monkeypatch):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"a": tokens(1, gap_s=0.0)}) as a, httpx.AsyncClient(base_url=url, timeout=10) as http:
            await a["a"].close()  # its port refuses connections from now on
            r = await http.post(CHAT, json=stream())
            record = app.state.registry.get("a")
            assert not record.healthy and record.failures == 1 and not record.leases
        assert ways.taken == [True] and ways.handed_over == 1
        assert r.status_code == 503 and "could not reach worker a" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("failure", [error_status, error_event, ends_at_once, drops])
async def test_a_first_attempt_that_does_not_start_well_is_the_routes_to_fail_over(monkeypatch, failure):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        session = {"X-Session-Id": "chat-1"}  # (affinity: the chat's turns go to the worker of its first)
        async with standins(url, {"a": then(tokens(1, gap_s=0.0), failure())}) as a, \
                httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.post(CHAT, json=stream(), headers=session)).headers["x-worker-id"] == "a"
            async with standins(url, {"b": tokens(2, gap_s=0.0)}):
                r = await http.post(CHAT, json=stream(), headers=session)
                record = app.state.registry.get("a")
                assert record.failures == 1 and record.breaker.failures == 1 and not record.leases
                assert _leases(app) == 0 and _chat_count(app, 200) == 2
        assert ways.taken == [True, True] and ways.handed_over == 1
        assert r.status_code == 200 and r.headers["x-worker-id"] == "b", r.text
        assert events(r.text) == [CHUNK] * 2 + [FINISH, "[DONE]"]
        assert len(a["a"].seen) == 2


async def test_the_first_token_deadline_runs_from_the_request_written(monkeypatch):
    settings = ControllerSettings(heartbeat_expiry_s=600.0, first_token_timeout_s=0.5)
    async with _controller(settings) as (app, url):
        ways = Ways(app, monkeypatch)
        session = {"X-Session-Id": "chat-1"}
        async with standins(url, {"a": then(tokens(1, gap_s=0.0), hang())}) as a, \
                httpx.AsyncClient(base_url=url, timeout=10) as http:
            await http.post(CHAT, json=stream(), headers=session)
            async with standins(url, {"b": tokens(2, gap_s=0.0)}):
                started = time.monotonic()
                r = await http.post(CHAT, json=stream(), headers=session)
                waited = time.monotonic() - started
            await until(lambda: a["a"].seen[-1].closed is not None, 5, "the controller closed the silent attempt")
            assert app.state.registry.get("a").failures == 1 and _leases(app) == 0
        assert ways.taken == [True, True] and ways.handed_over == 1
        assert r.status_code == 200 and r.headers["x-worker-id"] == "b", r.text
        assert waited >= 0.5  # the deadline, once, from the request written


async def test_a_client_that_leaves_before_the_first_token_is_let_go_of(monkeypatch):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"a": then(tokens(1, gap_s=0.0), hang())}) as a, \
                httpx.AsyncClient(base_url=url, timeout=10) as http:
            await http.post(CHAT, json=stream())
            client = await RawClient().send(url, stream())
            await until(lambda: len(a["a"].seen) == 2, 5, "the request reached the worker")
            await client.leave()
            await until(lambda: a["a"].seen[-1].closed is not None, 5, "the controller closed the worker's stream")
            await until(lambda: _chat_count(app, 499) == 1, 5, "the request was counted as the client's leaving")
            record = app.state.registry.get("a")
            assert not record.leases and record.failures == 1 and record.breaker.failures == 0  # (as the route's)
        assert ways.taken == [True, True] and ways.tasks == 0


async def test_a_client_that_leaves_mid_stream_is_let_go_of(monkeypatch):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"a": tokens(400, gap_s=0.02)}) as a, \
                httpx.AsyncClient(base_url=url, timeout=20) as http:
            await http.post(CHAT, json=body("m", stream=True, max_tokens=None))
            client = await RawClient().send(url, stream())
            await client.read_until(b"data: ")
            await client.leave()
            await until(lambda: a["a"].seen[-1].closed is not None, 5, "the controller closed the worker's stream")
            await until(lambda: _chat_count(app, 200) == 2, 5, "the request was counted")
            assert a["a"].seen[-1].sent_tokens < 400
        assert ways.taken == [True, True] and ways.tasks == 0
        assert _leases(app) == 0


async def test_a_client_that_reads_slowly_gets_the_whole_stream(monkeypatch):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        n = 20_000  # ~2 MB: far past what the sockets hold, so the relay must wait for the client
        async with standins(url, {"a": tokens(n, gap_s=0.0)}) as a, \
                httpx.AsyncClient(base_url=url, timeout=20) as http:
            await http.post(CHAT, json=stream())
            client = await RawClient().send(url, stream())
            await until(lambda: len(a["a"].seen) == 2 and a["a"].seen[-1].sent_tokens > 100, 10, "tokens flow")
            await asyncio.sleep(0.5)  # (not reading: the buffers fill; the answer must come whole however long)
            text = (await client.read_until(b"data: [DONE]\r\n\r\n\r\n0\r\n\r\n", timeout=30)).decode()
            await client.leave()
        assert ways.taken == [True, True] and ways.tasks == 0
        assert text.count(f"data: {CHUNK}") == n and _leases(app) == 0


async def test_pipelined_requests_are_answered_in_turn(monkeypatch):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"a": tokens(3, gap_s=0.01)}), httpx.AsyncClient(base_url=url, timeout=10) as http:
            await http.post(CHAT, json=stream())
            sent = json.dumps(stream()).encode()
            chat = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (CHAT.encode(), len(sent), sent)
            health = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            got = await read_to_close(url, chat + chat + health)
        assert ways.taken == [True, True]  # the second chat waited behind the first: the app's task served it
        answers = got.split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200", b"200", b"200"]
        assert answers[0].count(b"data: [DONE]") == 1 and answers[1].count(b"data: [DONE]") == 1
        assert b'"status":"ok"' in answers[2]
        assert _leases(app) == 0


async def test_a_client_that_asks_to_close_gets_its_answer_then_the_close(monkeypatch):
    async with _controller() as (app, url):
        ways = Ways(app, monkeypatch)
        async with standins(url, {"a": tokens(3, gap_s=0.0)}), httpx.AsyncClient(base_url=url, timeout=10) as http:
            await http.post(CHAT, json=stream())
            sent = json.dumps(stream()).encode()
            got = await read_to_close(url, b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                      b"Content-Length: %d\r\n\r\n%s" % (CHAT.encode(), len(sent), sent))
        assert ways.taken == [True, True] and ways.tasks == 0
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close\r\n" in head + b"\r\n"
        assert rest.endswith(b"data: [DONE]\r\n\r\n\r\n0\r\n\r\n") and rest.count(b"data: ") == 5
        assert _leases(app) == 0
