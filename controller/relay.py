"""Dispatch one chat request to a worker and relay its stream.

Workers answer with HTTP headers only once their first token exists (or with an error status), so everything that
can go wrong before the first token is seen here as a failed attempt, and the request moves to another worker.
After the first token the stream belongs to that worker: a failure becomes one error event, then the end marker.

Past the first event the worker's bytes are relayed as they arrive, a network read at a time, cut at the last
complete event (so a worker dying mid-event never leaves half an event in front of our error event); events that
follow the last write closer than `stream_interval_ms` wait out that interval and go in one write. The controller
parses nothing per token: cheap byte searches find the few events it must read (the end marker, error events for
the metrics, the usage event for tokens/s), and only those are parsed; they are looked for at the end of each block
only, where a worker puts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from common.auth import RELAY_TOKEN_HEADER
from common.errors import ErrorCode, ServingError, error_body, excerpt
from common.metrics import Metrics
from common.sse import DONE, DONE_EVENT, DONE_LINE, complete_events, error_in_event, sse_event, sse_payloads
from controller.policies import Conversation, Policy
from controller.read_deadline import ReadDeadline
from controller.registry import Lease, Registry, WorkerRecord
from controller.request_queue import RequestQueue
from controller.settings import ControllerSettings
from controller.worker_http import WorkerClient, WorkerConnectionError, WorkerResponse, WorkerUnreachable

log = logging.getLogger(__name__)

_DONE_LATER_LINE = b"\n" + DONE_LINE  # at a line start: token text inside JSON could hold the rest
_ERROR_LINE = b'data: {"error"'  # JSON text cannot hold these quotes unescaped, so this only matches error events


@dataclass
class Upstream:
    """An open worker stream whose first event has arrived."""

    worker: WorkerRecord
    lease: Lease
    response: WorkerResponse
    buffered: bytes  # bytes read so far, the first event included: the relay sends them first, as they came
    first_at: float = 0.0  # monotonic time the first event arrived (tokens/s is measured from here)

    def finish(self, ok: bool | None) -> None:
        """End this attempt: idempotent. A stream read to its end goes back to the pool; any other is closed, which
        is what tells the worker we are gone (it aborts the generation). `ok` None: the client left."""
        if self.response.at_eof():
            self.response.release()
        else:
            self.response.close()
        self.lease.release(ok=ok)


class Relay:
    """The relayed blocks of one stream. `aclose()` always ends the attempt, even when iteration never started
    (an async generator closed before its first step skips its own cleanup)."""

    def __init__(self, blocks: AsyncIterator[bytes], upstream: Upstream):
        self._blocks = blocks
        self.upstream = upstream

    def __aiter__(self) -> Relay:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._blocks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._blocks.aclose()  # type: ignore[attr-defined]
        finally:
            self.upstream.finish(ok=None)


class Dispatcher:
    def __init__(self, registry: Registry, policy: Policy, client: WorkerClient, settings: ControllerSettings,
                 metrics: Metrics | None = None):
        self.registry = registry
        self.policy = policy
        self.client = client
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.queue = RequestQueue(registry, policy, settings.queue_size, settings.queue_timeout_s,
                                  self.metrics.observe_queue_wait)

    async def open(self, body: bytes | bytearray, model: str, request_id: str, headers: dict[str, str] | None = None,
                   conversation: Conversation | None = None, client: str = "") -> Upstream:
        """`body`: the client's JSON request, sent to the worker as it is; `headers`: what the controller adds;
        `conversation`: the one it belongs to (for the policy); `client`: who sent it (turns in the waiting line).
        The first attempt may wait in line for a free worker (request_queue.py); a failover does not wait.
        Each attempt holds a lease on its worker: released here when the attempt fails or is cancelled (the client
        left; cancelling also closes the worker's connection, which is how the worker learns it), else handed over
        with the returned stream, whose `relay` releases it."""
        serving = self.registry.serving(model)
        if not serving:
            raise self._no_such_model(model)
        tried: set[str] = set()
        last: ServingError | None = None
        started = time.monotonic()
        for attempt in range(self.settings.max_attempts):
            if attempt == 0 or (last is not None and last.code == ErrorCode.WORKER_BUSY):
                # A worker that answered 429 counts as full for a moment: the request waits in line for a slot
                taken = await self.queue.take(model, conversation, client, request_id)
            else:
                left = [w for w in self.registry.serving(model) if w.worker_id not in tried]
                worker = self.policy.choose(left, conversation) or self.policy.choose(left)  # failover: no wait
                taken = (worker, self.registry.acquire(worker, model)) if worker is not None else None
            if taken is None:
                break
            worker, lease = taken
            tried.add(worker.worker_id)
            try:
                upstream = await self._connect(worker, lease, body, request_id, headers)
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
            worker.breaker.succeeded()
            self.metrics.observe_first_token(started)
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
                       headers: dict[str, str] | None) -> Upstream:
        # One deadline for each wait until the first token: sending the request and the worker's headers (which it
        # sends with its first token), then each read of the first event. On a timeout, as on any cancellation,
        # the client closes the connection: the worker sees its client gone and stops the abandoned attempt.
        deadline = ReadDeadline(self.settings.first_token_timeout_s)
        try:
            response = await self._post(worker, body, request_id, headers, deadline)
            try:
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
                return Upstream(worker, lease, response, buffered, time.monotonic())
            except BaseException:
                response.close()
                raise
        finally:
            deadline.close()

    async def _post(self, worker: WorkerRecord, body: bytes | bytearray, request_id: str,
                    headers: dict[str, str] | None, deadline: ReadDeadline) -> WorkerResponse:
        """The worker's response to the request, once its headers have come."""
        try:
            return await deadline.read(self.client.request(
                "POST", f"{worker.url}/v1/chat/completions", body,
                {"Content-Type": "application/json", "X-Request-ID": request_id, **(headers or {}),
                 RELAY_TOKEN_HEADER: worker.relay_token}))
        except WorkerUnreachable as exc:
            self.registry.mark_unreachable(worker)
            raise ServingError(ErrorCode.WORKER_LOST, f"could not reach worker {worker.worker_id}: {exc}") from exc
        except TimeoutError as exc:
            raise ServingError(ErrorCode.WORKER_TIMEOUT, f"worker {worker.worker_id} sent nothing for "
                               f"{deadline.timeout_s:.0f} s") from exc
        except WorkerConnectionError as exc:  # reachable, but it dropped the connection: not marked unreachable
            raise ServingError(ErrorCode.WORKER_LOST, f"worker {worker.worker_id} failed: {exc}") from exc

    async def _first_event(self, response: WorkerResponse, worker: WorkerRecord, deadline: ReadDeadline
                           ) -> tuple[str | None, bytes]:
        """Read until the first event with data is complete; None when the stream ends first."""
        buffered = b""
        while True:
            chunk = await self._read(response, deadline, worker)
            if not chunk:
                return None, buffered
            buffered += chunk
            for data in sse_payloads(buffered[:complete_events(buffered)]):
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
        """Blocks of complete SSE events, the first event first, and always exactly one end marker. The request's
        lease is released when the stream ends, however it ends."""
        return Relay(self._blocks(up), up)

    async def _blocks(self, up: Upstream) -> AsyncIterator[bytes]:
        ok: bool | None = False
        pending = up.buffered
        loop = asyncio.get_running_loop()
        interval = self.settings.stream_interval_ms / 1000
        last_write = float("-inf")  # the first event goes at once (time to first token)
        deadline = ReadDeadline(self.settings.token_timeout_s)
        try:
            while True:
                end = complete_events(pending)
                if end:
                    hold = last_write + interval - loop.time()
                    if hold > 0 and not _ends(_tail(pending, end)):
                        # Events faster than the interval: the ones that arrive meanwhile join this write. A write
                        # to a socket costs more than everything else the relay does per event.
                        await asyncio.sleep(hold)
                        pending += up.response.read_nowait()
                        end = complete_events(pending)
                    block, pending = pending[:end], pending[end:]
                    tail = _tail(block, end)
                    if _ERROR_LINE in tail or b'"usage"' in tail:
                        self._observe(tail, up.first_at)
                    ok = _ends(tail)  # set before the yield:
                    yield block  # a reader that stops at the end marker closes this generator right here
                    if ok:
                        await _drain(up.response)
                        return
                    last_write = loop.time()
                try:
                    chunk = await self._read(up.response, deadline, up.worker)
                except ServingError as err:
                    log.warning("stream from %s broke: %s", up.worker.worker_id, err.message)
                    self.registry.mark_unreachable(up.worker)  # silent or cut off: no new requests until it beats
                    yield self._failed(err.code, err.message)
                    return
                if not chunk:
                    self.registry.mark_unreachable(up.worker)
                    yield self._failed(ErrorCode.WORKER_LOST, f"worker {up.worker.worker_id} stopped in the middle "
                                       "of the answer; please retry")
                    return
                pending = pending + chunk if pending else chunk
        except (GeneratorExit, asyncio.CancelledError):
            ok = ok or None  # the client left: not the worker's failure
            raise
        finally:
            deadline.close()
            up.finish(ok)  # also on a client disconnect: this generator is closed then

    def _failed(self, code: ErrorCode, message: str) -> bytes:
        self.metrics.count_error(code)
        return sse_event(json.dumps(error_body(code, message))) + DONE_EVENT

    def _observe(self, block: bytes, first_at: float) -> None:
        """Count relayed mid-stream errors; time the answer from its usage event (sent when the client asked for
        usage, and always for non-streaming requests)."""
        for data in sse_payloads(block):
            err = error_in_event(data)
            if err is not None:
                self.metrics.count_error(err.code)
            elif '"usage"' in data:
                try:
                    usage = json.loads(data).get("usage") or {}
                    self.metrics.observe_speed(int(usage.get("completion_tokens") or 0), first_at)
                except (ValueError, AttributeError, TypeError):
                    pass  # not ours to judge: the event is relayed as it is


_ERROR_BODY_MAX = 64 * 1024  # of a worker's error answer: what it says fits; more is not read


def _tail(block: bytes, end: int) -> bytes:
    """The end of `block[:end]` (complete events) from its third-last data line on: where the only events the relay
    reads can be. A worker ends its stream with them (an error event or the usage event, then the end marker) and
    sends nothing after, so the relay need not search every byte it forwards: searching whole blocks of a fast
    stream (a network read is up to hundreds of kB) was a third of the controller's CPU per relayed token."""
    at = end
    for _ in range(3):
        at = block.rfind(b"\ndata:", 0, at)
        if at < 0:
            return block[:end]
    return block[at:end]


def _ends(block: bytes) -> bool:
    """Whether a block of complete events holds the end marker."""
    return block.startswith(DONE_LINE) or _DONE_LATER_LINE in block


async def _drain(response: WorkerResponse) -> None:
    """Read the rest of a finished stream (the end of its chunked body): a connection closed before its end cannot go
    back to the pool, and opening a new connection per request costs both sides more than the request."""
    if response.at_eof():
        return  # the usual case (the end came with the end marker): no timer to arm and cancel
    try:
        async with asyncio.timeout(1.0):
            while await response.readany():
                pass
    except (TimeoutError, WorkerConnectionError):
        pass
