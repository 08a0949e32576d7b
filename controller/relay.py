"""Dispatch one chat request to a worker, up to its first event.

Workers answer with HTTP headers only once their first token exists (or with an error status), so everything that
can go wrong before the first token is seen here as a failed attempt, and the request moves to another worker.
After the first token the stream belongs to that worker: a failure becomes one error event, then the end marker.
The stream past its first event is relayed by controller/stream_pump.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.auth import RELAY_TOKEN_HEADER
from common.errors import ErrorCode, ServingError, excerpt
from common.metrics import Metrics
from common.sse import DONE, error_in_event, first_payload
from controller.policies import Conversation, Policy
from controller.read_deadline import ReadDeadline
from controller.registry import Lease, Registry, WorkerRecord
from controller.request_queue import RequestQueue
from controller.settings import ControllerSettings
from controller.stream_pump import Relay, StreamPump
from controller.worker_connection import Connection, WorkerConnectionError, WorkerResponse, WorkerUnreachable
from controller.worker_http import WorkerClient

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """An open worker stream whose first event has arrived."""

    worker: WorkerRecord
    lease: Lease
    response: WorkerResponse
    buffered: bytes  # bytes read so far, the first event included: the relay sends them first, as they came
    first_at: float = 0.0  # monotonic time the first event arrived (tokens/s is measured from here)
    relay: Relay | None = None  # the stream past its first event, once made (`Dispatcher.relay`)

    def finish(self, ok: bool | None) -> None:
        """End this attempt: idempotent. A stream read to its end goes back to the pool; any other is closed, which
        is what tells the worker we are gone (it aborts the generation). `ok` None: the client left."""
        if self.response.at_eof():
            self.response.release()
        else:
            self.response.close()
        self.lease.release(ok=ok)


@dataclass
class Begun:
    """A request's first attempt, begun from the server's callbacks (controller/fast_chat.py): its worker and lease,
    its early start, and the connection its request was written on (None: none was idle; nothing sent yet). Handed
    to `Dispatcher.open`, which goes on with it as with an attempt of its own; or `abandon`ed."""

    worker: WorkerRecord
    lease: Lease
    early: _EarlyStart
    started: float  # monotonic time the dispatch began (the time to first token's start)
    conn: Connection | None = None  # (None: none was idle; `connect` makes one)
    sent_at: float = 0.0  # loop time the attempt began (the first token's deadline runs from there)
    opened: bool = False  # `Dispatcher.open` took it up: it ends there

    def abandon(self) -> None:
        """The client left, and no dispatch took the attempt up: it ends as a dispatch cancelled then ends it (the
        worker's connection closed, which tells the worker; no verdict on the worker). A stream its early start
        began meanwhile (handed over, the dispatch not yet running) ends as a stream's client leaving ends it."""
        if self.opened or self.lease.released:
            return
        started = self.early.outcome
        if isinstance(started, Upstream) and started.relay is not None:
            started.relay.pump.close()
        conn = self.conn
        if conn is not None:
            conn.early = conn.watcher = None
            if not conn.handed_over():
                conn.transport.abort()
        self.lease.release(ok=None)
        self.worker.breaker.no_verdict()


class Dispatcher:
    def __init__(self, registry: Registry, policy: Policy, client: WorkerClient, settings: ControllerSettings,
                 metrics: Metrics | None = None):
        self.registry = registry
        self.policy = policy
        self.client = client
        self.settings = settings
        self.metrics = metrics or Metrics()
        # Made in the loop it serves (the app's lifespan). Handed to what each request makes: CPython 3.11 asks the
        # kernel for its pid each time the running loop is looked up (6 syscalls per request, issue 26).
        self.loop = asyncio.get_running_loop()
        self.queue = RequestQueue(registry, policy, settings.queue_size, settings.queue_timeout_s,
                                  self.metrics.observe_queue_wait)

    async def open(self, body: bytes | bytearray, model: str, request_id: str, headers: dict[str, str] | None = None,
                   conversation: Conversation | None = None, client: str = "",
                   on_first: Callable[[Upstream], None] | None = None, begun: Begun | None = None) -> Upstream:
        """`body`: the client's JSON request, sent to the worker as it is; `headers`: what the controller adds;
        `conversation`: the one it belongs to (for the policy); `client`: who sent it (turns in the waiting line);
        `on_first`: called with the stream the moment its first event has passed the checks, before this returns
        (it may start the relay: the first token's way then leaves out the unwinding of this call).
        The first attempt may wait in line for a free worker (request_queue.py); a failover does not wait.
        Each attempt holds a lease on its worker: released here when the attempt fails or is cancelled (the client
        left; cancelling also closes the worker's connection, which is how the worker learns it), else handed over
        with the returned stream, whose `relay` releases it. `begun`: the first attempt, begun already (`begin`)."""
        serving = self.registry.serving(model)
        if not serving and begun is None:
            raise self._no_such_model(model)
        tried: set[str] = set()
        last: ServingError | None = None
        started = time.monotonic() if begun is None else begun.started
        for attempt in range(self.settings.max_attempts):
            if attempt == 0 and begun is not None:
                begun.opened = True
                taken = begun.worker, begun.lease
            elif attempt == 0 or (last is not None and last.code == ErrorCode.WORKER_BUSY):
                # A worker that answered 429 counts as full for a moment: the request waits in line for a slot. (A
                # free worker is taken without the line's coroutine: the usual case, on every request's way.)
                taken = (self.queue.take_free(model, conversation, serving) if attempt == 0 else None) \
                    or await self.queue.take(model, conversation, client, request_id)
            else:
                left = [w for w in self.registry.serving(model) if w.worker_id not in tried]
                worker = self.policy.choose(left, conversation) or self.policy.choose(left)  # failover: no wait
                taken = (worker, self.registry.acquire(worker, model)) if worker is not None else None
            if taken is None:
                break
            worker, lease = taken
            tried.add(worker.worker_id)
            try:
                upstream = await self._connect(worker, lease, body, request_id, headers, on_first,
                                               begun if attempt == 0 else None)
            except ServingError as err:
                lease.release(ok=False)
                log.warning("request %s: worker %s failed before the first token: %s", request_id,
                            worker.worker_id, err.message)
                self._judge(worker, err)
                if err.code == ErrorCode.RELAY_LOOP:  # its URL leads back to a controller: never a worker
                    self.registry.remove(worker.worker_id)
                if not err.retryable:
                    raise
                last = err
                continue
            except BaseException:
                lease.release(ok=None)
                worker.breaker.no_verdict()
                raise
            self.first_token(worker, started)
            return upstream
        if last is not None:
            raise ServingError(ErrorCode.NO_WORKER, f"every worker tried for model '{model}' failed before "
                               f"answering ({len(tried)} tried); last error: {last.message}")
        busy = [w for w in self.registry.serving(model) if w.healthy and w.busy >= w.max_concurrency]
        if busy:
            raise ServingError(ErrorCode.WORKER_BUSY, f"all workers serving '{model}' are at capacity; "
                               "retry in a few seconds")
        benched = [w for w in self.registry.serving(model) if w.breaker.benched]
        if benched:
            soonest = min(w.breaker.cooldown_left_s() for w in benched)
            raise ServingError(ErrorCode.NO_WORKER, f"no worker can take requests for '{model}' right now: "
                               f"{len(benched)} benched after failing {self.settings.breaker_failures} requests in a "
                               f"row (the next trial in {soonest:.0f} s; check their logs)")
        raise ServingError(ErrorCode.NO_WORKER, f"no healthy worker is serving '{model}' right now; "
                           "its workers stopped answering (check their logs or start one)")

    def begin(self, worker: WorkerRecord, lease: Lease, body: bytes | bytearray, request_id: str,
              headers: dict[str, str], on_first: Callable[[Upstream], None], started: float) -> Begun:
        """A first attempt on `worker`, from the caller's step (the server's callbacks, controller/fast_chat.py):
        the request written at once where a connection to it is idle. Its early start calls `on_first` as `open`'s
        would; anything else is `open`'s to go on with (or the attempt's `abandon`)."""
        begun = Begun(worker, lease, _EarlyStart(worker, lease, on_first), started, sent_at=self.loop.time())
        try:
            begun.conn = self.client.send_now(f"{worker.url}/v1/chat/completions", body,
                                              self._worker_headers(worker, request_id, headers), begun.early)
        except ValueError:  # a header the request cannot carry: `open` meets it again, and ends the attempt
            pass
        return begun

    async def connect(self, begun: Begun, body: bytes | bytearray, request_id: str, headers: dict[str, str]) -> None:
        """A begun attempt's request written on a new connection (none was idle). WorkerConnectionError, or
        ValueError, and nothing sent, when it cannot be: `open` meets it again, and ends the attempt."""
        begun.conn = await self.client.send(f"{begun.worker.url}/v1/chat/completions", body,
                                            self._worker_headers(begun.worker, request_id, headers), begun.early)

    def first_token(self, worker: WorkerRecord, started: float) -> None:
        """An attempt's first event passed its checks: the worker's breaker and the time to first token know."""
        worker.breaker.succeeded()
        self.metrics.observe_first_token(started)

    def _judge(self, worker: WorkerRecord, err: ServingError) -> None:
        """A failed attempt, for the worker's breaker: failures of the worker count; a busy worker or a request
        the worker refused (the client's error) show it alive."""
        if err.code == ErrorCode.WORKER_BUSY:
            worker.refused_as_full()
            worker.breaker.no_verdict()
        elif not err.retryable:
            worker.breaker.succeeded()
        elif worker.breaker.failed():
            log.warning("worker %s benched for %.0f s: %d requests in a row failed before their first token",
                        worker.worker_id, worker.breaker.cooldown_s, worker.breaker.failures)

    def _no_such_model(self, model: str) -> ServingError:
        cards = self.registry.model_cards()
        if not cards:
            return ServingError(ErrorCode.NO_WORKER, "no worker is registered with the controller; start one with "
                                "`python -m workers --model-path PATH` or ./launch.sh")
        names = ", ".join(c.id for c in cards)
        return ServingError(ErrorCode.MODEL_NOT_FOUND, f"model {excerpt(model)} is not served here; available: "
                            f"{names}", param="model")

    async def _connect(self, worker: WorkerRecord, lease: Lease, body: bytes | bytearray, request_id: str,
                       headers: dict[str, str] | None, on_first: Callable[[Upstream], None] | None,
                       begun: Begun | None = None) -> Upstream:
        # One deadline for each wait until the first token: sending the request and the worker's headers (which it
        # sends with its first token), then each read of the first event. On a timeout, as on any cancellation,
        # the client closes the connection: the worker sees its client gone and stops the abandoned attempt.
        deadline = ReadDeadline(self.settings.first_token_timeout_s, self.loop, begun.sent_at if begun else None)
        if begun is not None:
            early = begun.early
        else:
            early = _EarlyStart(worker, lease, on_first) if on_first is not None else None
        try:
            try:
                response = await self._post(worker, body, request_id, headers, deadline, early,
                                            begun and begun.conn)
            except ServingError:
                if early is not None and isinstance(early.outcome, Upstream):
                    # The first event came as the wait for it ended (the first-token deadline, due in the same turn
                    # of the event loop): the stream has started, and its head may be out. It is the answer: no
                    # failover now, nor an error in place of a response begun.
                    return early.outcome
                raise
            except BaseException:
                if early is not None and isinstance(early.outcome, Upstream):
                    # Cancelled (the client left) after the stream had started: it ends as a client's leaving does,
                    # before the connection's loss would reach the stream as the worker's failure.
                    self.relay(early.outcome).pump.close()
                raise
            try:
                if early is not None and early.outcome is not None:
                    if isinstance(early.outcome, BaseException):
                        raise early.outcome
                    return early.outcome
                if response.status == 401:  # our relay token, not the client's key: never tell the client it is wrong
                    raise ServingError(ErrorCode.WORKER_LOST, f"worker {worker.worker_id} refused the controller's "
                                       "relay token (it restarted or registered again)")
                if response.status != 200:
                    raw = await response.read(_ERROR_BODY_MAX)
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = None
                    raise ServingError.from_body(payload, response.status)
                first, buffered = await self._first_event(response, worker, deadline)
                if first is None or first == DONE:
                    raise ServingError(ErrorCode.WORKER_LOST, f"worker {worker.worker_id} ended the stream at once")
                err = error_in_event(first)
                if err is not None:
                    raise err
                upstream = Upstream(worker, lease, response, buffered, time.monotonic())
                if on_first is not None:
                    on_first(upstream)
                return upstream
            except BaseException:
                response.close()
                raise
        finally:
            deadline.close()

    async def _post(self, worker: WorkerRecord, body: bytes | bytearray, request_id: str,
                    headers: dict[str, str] | None, deadline: ReadDeadline,
                    early: _EarlyStart | None = None, sent: Connection | None = None) -> WorkerResponse:
        """The worker's response to the request, once its headers have come (`sent`: the request was written on it
        already, `begin`)."""
        try:
            if sent is not None:
                return await deadline.read(self.client.response(sent))
            return await deadline.read(self.client.request(
                "POST", f"{worker.url}/v1/chat/completions", body, self._worker_headers(worker, request_id, headers),
                early))
        except WorkerUnreachable as exc:
            self.registry.mark_unreachable(worker)
            raise ServingError(ErrorCode.WORKER_LOST, f"could not reach worker {worker.worker_id}: {exc}") from exc
        except TimeoutError as exc:
            raise ServingError(ErrorCode.WORKER_TIMEOUT, f"worker {worker.worker_id} sent nothing for "
                               f"{deadline.timeout_s:.0f} s") from exc
        except WorkerConnectionError as exc:  # reachable, but it dropped the connection: not marked unreachable
            raise ServingError(ErrorCode.WORKER_LOST, f"worker {worker.worker_id} failed: {exc}") from exc

    @staticmethod
    def _worker_headers(worker: WorkerRecord, request_id: str, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Request-ID": request_id, **(headers or {}),
                RELAY_TOKEN_HEADER: worker.relay_token}

    async def _first_event(self, response: WorkerResponse, worker: WorkerRecord, deadline: ReadDeadline
                           ) -> tuple[str | None, bytes]:
        """Read until the first event with data is complete; None when the stream ends first."""
        buffered = b""
        while True:
            chunk = await self._read(response, deadline, worker)
            if not chunk:
                return None, buffered
            buffered += chunk
            data = first_payload(buffered)
            if data is not None:
                return data, buffered

    async def _read(self, response: WorkerResponse, deadline: ReadDeadline, worker: WorkerRecord) -> bytes:
        """What the network has brought since the last read (b"" at the end of the body)."""
        try:
            return await deadline.read(response.readany())
        except TimeoutError as exc:
            raise ServingError(ErrorCode.WORKER_TIMEOUT,
                               f"worker {worker.worker_id} sent nothing for {deadline.timeout_s:.0f} s") from exc
        except WorkerConnectionError as exc:
            raise ServingError(ErrorCode.WORKER_LOST, f"lost worker {worker.worker_id}: {exc}") from exc

    def relay(self, up: Upstream) -> Relay:
        """The stream past its first event (controller/stream_pump.py): blocks of complete SSE events, the first
        event first, and always exactly one end marker; one per stream. The request's lease is released when the
        stream ends, however it ends."""
        if up.relay is None:
            up.relay = Relay(StreamPump(up, self.registry, self.metrics, self.settings.stream_interval_ms / 1000,
                                        self.settings.token_timeout_s, self.loop))
        return up.relay


class _EarlyStart:
    """An attempt's `on_first`, called from the worker connection's own callback when the first event comes with
    the response's head (or before the request's task has woken for the head): the stream starts there, with no task
    woken on the first token's way (issue 26). Only a good first event of a 200 answer starts it; anything else
    (an error status or event, an empty stream, an event not complete yet) is left to the task, which reads the
    first event itself as before, once it has the head (the client calls this no more then). What `on_first` raises
    is the task's to raise."""

    __slots__ = ("lease", "on_first", "outcome", "worker")

    def __init__(self, worker: WorkerRecord, lease: Lease, on_first: Callable[[Upstream], None]):
        self.worker, self.lease, self.on_first = worker, lease, on_first
        self.outcome: Upstream | BaseException | None = None

    def __call__(self, response: WorkerResponse) -> None:
        if self.outcome is not None or response.status != 200:
            return
        first = first_payload(response.peek())
        if first is None or first == DONE or error_in_event(first) is not None:
            return
        try:
            upstream = Upstream(self.worker, self.lease, response, response.read_nowait(), time.monotonic())
            self.on_first(upstream)
            self.outcome = upstream
        except Exception as exc:  # noqa: BLE001 - raised in the task, not in the connection's callback
            self.outcome = exc


_ERROR_BODY_MAX = 64 * 1024  # of a worker's error answer: what it says fits; more is not read
