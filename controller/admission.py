"""Who may register a worker, and which URLs the controller accepts as workers.

- With a registration secret, only callers that send it may register, heartbeat or unregister. Without one, only
  callers on this machine (loopback) may: nobody else can make the controller probe a URL of their choice.
- A registered URL must answer `/health` as that very worker (its worker id and model), so a typo, another service
  or the controller itself is refused with the reason; redirects are not followed and only the start of the answer
  is read.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import urllib.parse

from fastapi import Request

from common.auth import is_loopback_client, is_loopback_host
from common.bounded_http import KEEP_ALIVE
from common.errors import ErrorCode, ServingError, excerpt
from common.protocol import REGISTRANT_KEEP_ALIVE_S, WorkerRegistration
from controller.settings import ControllerSettings
from controller.worker_connection import WorkerConnectionError
from controller.worker_http import WorkerClient

log = logging.getLogger(__name__)

_HEALTH_MAX_BYTES = 64 * 1024
_HINT = ("start the worker with --worker-url set to an address this controller can reach (and --host binding that "
         "interface, e.g. 0.0.0.0)")


def check_registrant(request: Request, settings: ControllerSettings) -> None:
    secret = settings.registration_secret
    if secret:
        given = request.headers.get("x-registration-secret", "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise ServingError(ErrorCode.FORBIDDEN, "worker registration refused: wrong or missing registration "
                               "secret (set the same --registration-secret on worker and controller)")
    elif not is_loopback_client(request):
        raise ServingError(ErrorCode.FORBIDDEN, "worker registration refused: this controller has no registration "
                           "secret, so it accepts workers from its own machine only; start it with "
                           "--registration-secret S and the workers with the same --registration-secret S")
    keep = request.scope.get("extensions", {}).get(KEEP_ALIVE)
    if keep is not None:  # a worker of ours: its heartbeats come back on this connection (common/protocol.py)
        keep(REGISTRANT_KEEP_ALIVE_S)


def announce(settings: ControllerSettings) -> None:
    """Said once at start: how workers on other hosts get in."""
    if not settings.registration_secret:
        log.warning("no --registration-secret: only workers on this machine can register; for workers on other "
                    "hosts start the controller with --registration-secret S (or INTERNVL_CONTROLLER_REGISTRATION_"
                    "SECRET=S) and each worker with the same --registration-secret S")


def is_own_address(url: str, settings: ControllerSettings) -> bool:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    ours = host in ("0.0.0.0", "::", settings.host.lower()) or is_loopback_host(host)
    return ours and port == settings.port


async def check_worker_identity(client: WorkerClient, reg: WorkerRegistration, settings: ControllerSettings,
                                timeout_s: float) -> None:
    url = reg.url.rstrip("/")
    if is_own_address(url, settings):
        raise _refused(f"{url} is this controller's own address; {_HINT}")
    try:
        async with asyncio.timeout(timeout_s):
            r = await client.request("GET", f"{url}/health")
            try:
                status, raw = r.status, await r.read(_HEALTH_MAX_BYTES)
            finally:
                r.close()
    except (WorkerConnectionError, ValueError, TimeoutError) as exc:
        raise _refused(f"the controller cannot reach the worker's advertised URL {url} ({type(exc).__name__}); "
                       f"{_HINT}") from None
    if status != 200:
        raise _refused(f"{url}/health answered HTTP {status}, so it is not this worker; {_HINT}")
    try:
        health = json.loads(raw)
    except ValueError:
        health = None
    if not isinstance(health, dict):
        raise _refused(f"{url}/health did not answer as an InternVL worker; {_HINT}")
    models = {m.id for m in reg.models}
    if health.get("worker_id") != reg.worker_id or health.get("model") not in models:
        wanted = excerpt(", ".join(sorted(models)), 128)
        raise _refused(f"{url}/health answers as worker {excerpt(health.get('worker_id'))} serving "
                       f"{excerpt(health.get('model'))}, not as {excerpt(reg.worker_id)} serving {wanted}; two "
                       "workers may share an advertised URL (check --worker-url and --port)")


def _refused(why: str) -> ServingError:
    return ServingError(ErrorCode.INVALID_REQUEST, f"worker registration refused: {why}", param="url")
