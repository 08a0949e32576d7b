"""Keeps this worker known to the controller: register, heartbeat every interval, and register again whenever the
controller answers that it does not know us (it restarted, or expired us during a pause)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from common.protocol import REGISTRANT_IDLE_S, ModelCard, WorkerHeartbeat, WorkerRegistration
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


# How long the client to the controller keeps an idle connection: well under what the controller keeps a registered
# worker's (REGISTRANT_KEEP_ALIVE_S), so a heartbeat never goes out on a connection that the controller is closing
# at that very moment. With both at 5 s, the default heartbeat interval, a heartbeat was lost that way every few
# minutes under load; the worker then registered again, and a request relayed to it between its old and new relay
# tokens failed (issue 26's benchmark, 2026-12-06). Longer than the interval, heartbeats reuse one connection.
KEEPALIVE_S = REGISTRANT_IDLE_S


def controller_client() -> httpx.AsyncClient:
    """The worker's client to its controller (registration and heartbeats)."""
    return httpx.AsyncClient(limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S))


class Registrar:
    def __init__(self, settings: WorkerSettings, client: httpx.AsyncClient, card: ModelCard,
                 load: Callable[[], tuple[int, int]]):
        self.settings = settings
        self.client = client
        self.card = card
        self.load = load  # () -> (in_flight, queued)
        self.registered = False
        self.relay_token: str | None = None  # the controller's credential for the requests it relays to us
        self._headers = ({"X-Registration-Secret": settings.registration_secret}
                         if settings.registration_secret else {})
        self._base = (settings.controller_url or "").rstrip("/")
        self._last_problem: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the last round failed (shown by /health and launch.sh), None when all is well."""
        return self._last_problem

    async def run(self) -> None:
        while True:
            await self.beat()
            # Until registered, retry within a second: the controller's reachability probe can come before this
            # server listens (registration starts with the app), and a worker should not sit idle for long.
            interval = self.settings.heartbeat_interval_s
            await asyncio.sleep(interval if self.registered else min(interval, 1.0))

    async def beat(self) -> None:
        """One round: register if needed, else heartbeat (and register at once if the controller forgot us)."""
        try:
            if self.registered:
                in_flight, queued = self.load()
                hb = WorkerHeartbeat(worker_id=self.settings.worker_id, in_flight=in_flight, queued=queued)
                r = await self._post("/workers/heartbeat", hb.model_dump())
                if r.status_code == 404:
                    log.warning("controller does not know this worker (it restarted?); registering again")
                    self.registered = False
                else:
                    self._check(r, "heartbeat")
            if not self.registered:
                reg = WorkerRegistration(worker_id=self.settings.worker_id, url=self.settings.advertised_url(),
                                         models=[self.card], max_concurrency=self.settings.max_concurrency)
                r = await self._post("/workers/register", reg.model_dump(exclude_none=True))
                self._check(r, "registration")
                self.relay_token = _relay_token(r)
                self.registered = True
                self._problem(None)
                log.info("registered with %s as %s (%s)", self._base, self.settings.worker_id,
                         self.settings.advertised_url())
        except httpx.HTTPError as exc:
            self.registered = False
            self._problem(f"controller {self._base} unreachable ({type(exc).__name__}); retrying every "
                          f"{self.settings.heartbeat_interval_s:g} s")
        except RuntimeError as exc:
            self.registered = False
            self._problem(str(exc))

    async def unregister(self) -> None:
        if not self.registered:
            return
        hb = WorkerHeartbeat(worker_id=self.settings.worker_id)
        try:
            await self._post("/workers/unregister", hb.model_dump(), timeout=2.0)
        except httpx.HTTPError:
            pass

    async def _post(self, path: str, payload: dict, timeout: float = 5.0) -> httpx.Response:
        return await self.client.post(self._base + path, json=payload, headers=self._headers, timeout=timeout)

    @staticmethod
    def _check(r: httpx.Response, what: str) -> None:
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise RuntimeError(f"controller refused {what} (HTTP {r.status_code}): {message}")

    def _problem(self, problem: str | None) -> None:
        """Log a problem once, not every heartbeat, and say when it is over."""
        if problem and problem != self._last_problem:
            log.error(problem)
        self._last_problem = problem


def _relay_token(r: httpx.Response) -> str:
    try:
        token = r.json()["relay_token"]
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token:
        raise RuntimeError("the controller's registration answer carries no relay token (is it an older version?); "
                           "update the controller")
    return token
