"""A response begun below ASGI (common/direct_body.py), under our server protocol on a real socket: its head goes
out with its first chunk, byte for byte the head the server's own `send` writes, and the body ends through `send`; a
header the server would refuse (a line break in a value, a separator in a name) is refused by `begin`, which then
begins nothing, so the app can still answer."""

from __future__ import annotations

import httpx
import pytest

from common.bounded_http import bounded_http
from common.direct_body import DirectBody
from tests.support.raw_http import RawClient
from tests.support.served_app import served

HEADERS = [(b"content-type", b"text/plain"), (b"x-a", b"fine")]
BAD = {"/bad-value": (b"x-b", b"v\r\nx-injected: 1"), "/bad-name": (b"x b", b"v"), "/nul": (b"x-b", b"a\x00b")}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    direct = DirectBody.unstarted(scope)
    assert direct is not None, "our protocol offers the direct body"
    if scope["path"] in BAD:
        try:
            direct.begin(200, [(b"x-a", b"fine"), BAD[scope["path"]]])
        except ValueError as exc:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": str(exc).encode()})
        return
    if scope["path"] == "/through-send":  # the same response as the server's own `send` writes it
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    else:
        direct.begin(200, HEADERS)
        direct.write([b"hel", b"lo"], 5)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def raw_response(url: str, path: str) -> bytes:
    """The response's bytes as they came, to the end of its chunked body."""
    client = await RawClient().send(url, {}, path)
    try:
        return await client.read_until(b"0\r\n\r\n")
    finally:
        await client.leave()


async def test_a_begun_head_goes_with_the_body_and_the_body_ends_through_send():
    async with served(app, http=bounded_http()) as url, httpx.AsyncClient() as http:
        r = await http.get(url + "/good")
        assert (r.status_code, r.text, r.headers["x-a"], r.headers["transfer-encoding"]) == (200, "hello", "fine",
                                                                                             "chunked")
        r = await http.get(url + "/good")  # the connection is kept alive: the response was complete
        assert r.text == "hello"


async def test_a_begun_head_is_the_head_the_servers_send_writes():
    async with served(app, http=bounded_http()) as url:
        begun, sent = await raw_response(url, "/good"), await raw_response(url, "/through-send")

    def undated(response: bytes) -> bytes:  # (the date line may differ by a second between the two)
        return b"\r\n".join(line for line in response.split(b"\r\n") if not line.startswith(b"date: "))

    assert undated(begun) == undated(sent)
    assert begun.startswith(b"HTTP/1.1 200 OK\r\ndate: ") and b"\r\nx-a: fine\r\n" in begun


@pytest.mark.parametrize("path", sorted(BAD))
async def test_a_header_the_server_would_refuse_begins_nothing(path):
    async with served(app, http=bounded_http()) as url, httpx.AsyncClient() as http:
        r = await http.get(url + path)
        assert r.status_code == 400, r.text
        assert "not a valid HTTP header" in r.text and repr(BAD[path][0]) in r.text
        assert "x-a" not in r.headers and "x-injected" not in r.headers
