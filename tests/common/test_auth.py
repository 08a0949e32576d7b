"""common/auth.py: API keys and relay tokens, compared in constant time; who may use a worker; the relay-loop guard.
The processes that use them are tested end to end in tests/controller/test_relay_token.py and
tests/workers/test_worker_credentials.py; here each rule is checked on its own."""

from __future__ import annotations

import hmac

import pytest
from starlette.requests import Request

import common.auth as auth
from common.auth import (RELAY_TOKEN_HEADER, WorkerAccess, bearer_token, is_loopback_client, is_loopback_host,
                         new_relay_token, one_of, refuse_relayed)
from common.errors import HTTP_STATUS, ErrorCode, ServingError


def request(headers: dict[str, str] | None = None, client: tuple[str, int] | None = ("127.0.0.1", 50000)) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()], "client": client}
    return Request(scope)


def refused(access: WorkerAccess, headers: dict[str, str]) -> ServingError:
    with pytest.raises(ServingError) as err:
        access.check(request(headers))
    assert err.value.code == ErrorCode.UNAUTHORIZED and HTTP_STATUS[err.value.code] == 401
    return err.value


# ------------------------------------------------------------------------------------------- key comparison


def test_one_of_accepts_an_accepted_key_and_refuses_wrong_missing_and_empty_ones():
    keys = ["k-alpha", "k-beta"]
    assert one_of("k-alpha", keys) and one_of("k-beta", keys)
    assert not one_of("k-gamma", keys)
    assert not one_of("k-alph", keys) and not one_of("k-alpha ", keys)  # a prefix or a trailing space is not the key
    assert not one_of("", keys)
    assert not one_of("", [""])  # an empty key configured by mistake lets no one in with an empty credential
    assert not one_of("k-alpha", [])


def test_every_candidate_is_compared_whichever_matches(monkeypatch):
    """How long a check takes must not tell which key (or how much of it) matched: no early exit."""
    compared, real = [], hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ["first", "second", "third"]
    assert one_of("first", keys)
    assert compared == [k.encode() for k in keys]


def test_relay_tokens_are_long_random_and_never_repeat():
    tokens = {new_relay_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(t) >= 40 and " " not in t for t in tokens)  # 32 random bytes, URL-safe text


def test_bearer_token_is_read_from_the_authorization_header_only():
    assert bearer_token(request({"Authorization": "Bearer sk-1"})) == "sk-1"
    assert bearer_token(request({"Authorization": "bearer   sk-2 "})) == "sk-2"
    assert bearer_token(request({"Authorization": "Basic c2stMQ=="})) == ""
    assert bearer_token(request({"X-Api-Key": "sk-1"})) == ""
    assert bearer_token(request()) == ""


# ------------------------------------------------------------------------------------------- who may use a worker


def test_a_standalone_worker_without_keys_is_open():
    access = WorkerAccess([], None)
    assert access.open
    access.check(request())


def test_a_worker_with_keys_takes_one_of_them_and_refuses_the_rest_naming_the_way_in():
    access = WorkerAccess(["sk-1", "sk-2"], None)
    assert not access.open
    access.check(request({"Authorization": "Bearer sk-2"}))
    for headers in ({}, {"Authorization": "Bearer sk-3"}, {"Authorization": "Bearer "}):
        assert "Authorization: Bearer <key>" in refused(access, headers).message


def test_a_worker_behind_a_controller_takes_its_current_relay_token_only():
    current = {"token": None}
    access = WorkerAccess([], "http://127.0.0.1:10001", lambda: current["token"])
    assert not access.open  # even before the first registration: no window with the door open
    err = refused(access, {})
    assert "through the controller at http://127.0.0.1:10001" in err.message
    assert "relay token" in refused(access, {RELAY_TOKEN_HEADER: "anything"}).message

    current["token"] = old = new_relay_token()
    access.check(request({RELAY_TOKEN_HEADER: old}))
    current["token"] = new_relay_token()  # registered again: the controller issued a new token
    assert "registered again" in refused(access, {RELAY_TOKEN_HEADER: old}).message
    access.check(request({RELAY_TOKEN_HEADER: current["token"]}))
    refused(access, {RELAY_TOKEN_HEADER: ""})
    refused(access, {"Authorization": f"Bearer {current['token']}"})  # a relay token is not an API key


def test_an_api_key_also_opens_a_worker_behind_a_controller():
    access = WorkerAccess(["sk-1"], "http://127.0.0.1:10001", lambda: "tok")
    access.check(request({"Authorization": "Bearer sk-1"}))
    access.check(request({RELAY_TOKEN_HEADER: "tok"}))
    err = refused(access, {"Authorization": "Bearer sk-9"})
    assert "controller" in err.message and "--api-keys" in err.message


# ------------------------------------------------------------------------------------------- relay loops


def test_a_controller_refuses_a_relayed_request_as_a_loop():
    refuse_relayed(request({"Authorization": "Bearer sk-1"}))
    for value in (new_relay_token(), ""):
        with pytest.raises(ServingError) as err:
            refuse_relayed(request({RELAY_TOKEN_HEADER.lower(): value}))
        assert err.value.code == ErrorCode.RELAY_LOOP and HTTP_STATUS[ErrorCode.RELAY_LOOP] == 508


# ------------------------------------------------------------------------------------------- loopback


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                            ("::ffff:127.0.0.1", True), ("10.0.0.2", False), ("::ffff:10.0.0.2", False),
                                            ("testclient", False), ("", False)])
def test_loopback_clients(host, loopback):
    assert is_loopback_client(request(client=(host, 1))) is loopback


def test_a_request_without_a_client_address_is_not_loopback():
    assert not is_loopback_client(request(client=None))


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("example.org", False)])
def test_loopback_bind_addresses(host, loopback):
    assert is_loopback_host(host) is loopback
