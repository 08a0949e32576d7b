"""Credentials between the processes and from clients, compared in constant time.

- Clients present `Authorization: Bearer <key>` (the controller's or a worker's `--api-keys`).
- The controller issues each worker a random relay token when it registers (in the registration response) and sends
  it as `X-Worker-Token` on every request it relays to that worker. A worker accepts a chat or /metrics request that
  carries either that token or one of its own API keys.
- The controller refuses any request that carries `X-Worker-Token`: only a controller sends it, so receiving one means
  a worker URL leads back to a controller (a relay loop), which would otherwise nest requests without end.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Callable, Iterable

from fastapi import Request

from common.errors import ErrorCode, ServingError

RELAY_TOKEN_HEADER = "X-Worker-Token"
_RELAY_TOKEN_KEY = RELAY_TOKEN_HEADER.lower().encode()


def new_relay_token() -> str:
    return secrets.token_urlsafe(32)


def one_of(presented: str, accepted: Iterable[str]) -> bool:
    """Whether `presented` is one of `accepted`; every candidate is compared, each in constant time."""
    given = presented.encode()
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(given, candidate.encode())
    return found and bool(presented)


def raw_header(request: Request, name: bytes) -> bytes | None:
    """The first value of the header `name` (lower case) as sent, from the request's raw list: Starlette's
    `request.headers` is an object to build, and its `get` raises and catches a KeyError for a header that is not
    there, on every relayed request's way (issue 26)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value
    return None


def bearer_token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def is_loopback_client(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def is_loopback_host(host: str) -> bool:
    """A bind address that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WorkerAccess:
    """Who may use a worker's chat API and /metrics.

    With neither API keys nor a controller (a standalone worker) nothing is checked: the worker refuses to start on
    a non-loopback address in that case unless told `--allow-unauthenticated`. With a controller, the relay token it
    issued is required (or an API key), also before the worker has registered.
    """

    def __init__(self, api_keys: list[str], controller_url: str | None,
                 relay_token: Callable[[], str | None] = lambda: None):
        self.api_keys = list(api_keys)
        self.controller_url = controller_url or None
        self.relay_token = relay_token  # the token of our latest registration (None before the first)

    @property
    def open(self) -> bool:
        return not self.api_keys and not self.controller_url

    def check(self, request: Request) -> None:
        if self.open or one_of(bearer_token(request), self.api_keys):
            return
        token = request.headers.get(RELAY_TOKEN_HEADER, "")
        current = self.relay_token()
        if token and current and one_of(token, [current]):
            return
        if token:  # a controller's token, but not (or no longer) ours: the controller fails over and we re-register
            raise ServingError(ErrorCode.UNAUTHORIZED, "this worker does not know the relay token sent with the "
                               "request (it registered again since); the controller retries elsewhere")
        hints = [f"send requests through the controller at {self.controller_url}"] if self.controller_url else []
        if self.api_keys:
            hints.append("send 'Authorization: Bearer <key>' with one of this worker's --api-keys")
        raise ServingError(ErrorCode.UNAUTHORIZED, "this worker needs a credential: " + ", or ".join(hints))


def refuse_relayed(request: Request) -> None:
    """Controller side of the loop guard (see the module docstring)."""
    if raw_header(request, _RELAY_TOKEN_KEY) is not None:
        raise ServingError(ErrorCode.RELAY_LOOP, "this request was relayed by a controller to a controller: a "
                           "registered worker URL leads back to a controller; that worker is dropped")
