"""The controller's waiting line: when every worker serving a model is at capacity, a request waits here for a free
worker instead of being refused at once (a public demo's traffic comes in bursts).

One line per model, bounded by `size` requests in all, each waiting at most `timeout_s`; only a full line
(`queue_full`) or a wait that ran out (`queue_timeout`) is answered 429, with a Retry-After of about the recent
waits. Fair across clients: each client (the request's `user` field, else its address) has its own first-come
first-served line, and a free worker goes to the clients in turn, so one client's thousand requests do not stand in
front of another's one. A request leaving (its client disconnected: the dispatch task is cancelled) leaves the line
at once. The worker is taken for the waiter at the moment it is free (the lease is acquired here, in the event that
freed it), so no newcomer can slip in between; nothing is sent to a waiting client until then.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import ErrorCode, ServingError
from controller.policies import Conversation, Policy
from controller.registry import Lease, Registry, WorkerRecord

Taken = tuple[WorkerRecord, Lease]
_LOOK_AHEAD = 64  # waiters looked at for one that can take a free worker


@dataclass(eq=False)
class Waiter:
    model: str
    client: str
    request_id: str
    conversation: Conversation | None
    arrived: float = field(default_factory=time.monotonic)
    granted: asyncio.Future[Taken] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    in_line: bool = True


class RequestQueue:
    def __init__(self, registry: Registry, policy: Policy, size: int, timeout_s: float,
                 observe_wait: Callable[[float], None] = lambda _: None):
        self.registry, self.policy = registry, policy
        self.size, self.timeout_s = size, timeout_s
        self.observe_wait = observe_wait
        self._lines: dict[str, OrderedDict[str, deque[Waiter]]] = {}  # model -> client -> its waiters, oldest first
        self._waiting: dict[str, int] = {}  # model -> waiters
        self._by_id: dict[str, Waiter] = {}  # request id -> its waiter (the UI asks for its place every second)
        self._recent_wait_s = 1.0  # moving average of the waits that ended with a worker (for Retry-After)
        self._someone_waits = asyncio.Event()
        registry.listeners.append(self.pump)

    def waiting(self, model: str) -> int:
        return self._waiting.get(model, 0)

    def models(self) -> list[str]:
        return list(self._waiting)

    def take_free(self, model: str, conversation: Conversation | None,
                  serving: list[WorkerRecord] | None = None) -> Taken | None:
        """A free worker for the request and its lease, at once, when no one waits in line for the model (a request
        does not pass those who wait); else None. `serving`: the model's workers, if the caller has them."""
        if self._waiting.get(model):
            return None
        serving = self.registry.serving(model) if serving is None else serving
        worker = self.policy.choose(serving, conversation)
        if worker is None and self.size == 0:  # no line to wait in for the conversation's own worker
            worker = self.policy.choose(serving)
        return (worker, self.registry.acquire(worker, model)) if worker is not None else None

    async def take(self, model: str, conversation: Conversation | None, client: str, request_id: str) -> Taken | None:
        """A worker for the request and its lease, waiting in line when every worker is at capacity. None when
        waiting cannot help (no worker is usable or busy: all unhealthy or benched) or the line is off (size 0)."""
        taken = self.take_free(model, conversation)
        if taken is not None:
            return taken
        if self.size == 0 or not any(w.healthy and w.busy >= w.max_concurrency for w in self.registry.serving(model)):
            return None  # (a conversation waiting for its own worker: that one is busy)
        if sum(self._waiting.values()) >= self.size:
            raise self._refused(ErrorCode.QUEUE_FULL, f"the controller's waiting line is full ({self.size} requests "
                                f"wait for a free worker); every worker serving '{model}' is at capacity")
        waiter = Waiter(model, client, request_id, conversation)
        self._lines.setdefault(model, OrderedDict()).setdefault(client, deque()).append(waiter)
        self._by_id[request_id] = waiter
        self._waiting[model] = self.waiting(model) + 1
        self._someone_waits.set()
        self.pump()  # a worker may be free that the waiters ahead leave for others (waiting for their own)
        try:
            async with asyncio.timeout(self.timeout_s):
                taken = await waiter.granted
        except TimeoutError:
            if waiter.in_line:
                raise self._refused(ErrorCode.QUEUE_TIMEOUT, f"waited {self.timeout_s:g} s in the controller's line "
                                    f"and no worker serving '{model}' got free") from None
            taken = waiter.granted.result()  # a worker came at the very moment the wait ran out
        except BaseException:  # cancelled (the client left): a worker taken for it meanwhile goes back at once
            if not waiter.in_line:
                waiter.granted.result()[1].release(ok=None)
            raise
        finally:
            self._leave(waiter)
        self._recent_wait_s += 0.2 * (time.monotonic() - waiter.arrived - self._recent_wait_s)
        return taken

    def position(self, request_id: str) -> tuple[str, int, int] | None:
        """(model, place in line counting from 1, waiters for that model) of a waiting request, None if it is not
        waiting. Clients take turns: a request k-th in its client's line comes after the first k of every other
        client's (k counted from 0), and after the (k+1)-th of the clients ahead of its own."""
        waiter = self._by_id.get(request_id)
        if waiter is None:
            return None
        line = self._lines[waiter.model]
        own = line[waiter.client]
        k = own.index(waiter)
        ahead, before_own = k, True
        for waiters in line.values():
            if waiters is own:
                before_own = False
            else:
                ahead += min(len(waiters), k + before_own)
        return waiter.model, ahead + 1, self.waiting(waiter.model)

    async def pump_while_waiting(self, every_s: float) -> None:
        """Forever: `pump` every `every_s` while anyone waits, for capacity that comes back without an event (a
        benched worker's cool-down ends). An empty line wakes nothing: an idle controller's timers cost it CPU."""
        while True:
            await self._someone_waits.wait()
            await asyncio.sleep(every_s)
            self.pump()

    def pump(self) -> None:
        """Give free workers to waiters, clients in turn. Called by the registry when capacity may have been freed
        (a request ended, a worker registered or beat), when a request joins the line, and periodically while anyone
        waits (a cool-down ended). The policy may keep a waiter for its own busy worker (affinity: its caches are
        there, and that worker is not too much busier than the others); then the free worker goes to the next waiter
        in turn that can take it, looking at most `_LOOK_AHEAD` waiters ahead."""
        for model, line in list(self._lines.items()):
            while line:
                serving = self.registry.serving(model)
                if not any(w.healthy and w.busy < w.max_concurrency and w.breaker.admits() for w in serving):
                    break
                for waiter in self._in_turn(line):
                    worker = self.policy.choose(serving, waiter.conversation)
                    if worker is not None:
                        break
                else:
                    break
                line[waiter.client].remove(waiter)
                waiter.granted.set_result((worker, self.registry.acquire(worker, model)))
                self._out(waiter, line, served=True)

    @staticmethod
    def _in_turn(line: OrderedDict[str, deque[Waiter]]):
        """The first `_LOOK_AHEAD` waiters in the order they will be served (clients in turn)."""
        shown, depth = 0, 0
        while shown < _LOOK_AHEAD:
            row = [waiters[depth] for waiters in line.values() if len(waiters) > depth]
            if not row:
                return
            for waiter in row[:_LOOK_AHEAD - shown]:
                yield waiter
            shown += len(row)
            depth += 1

    def _leave(self, waiter: Waiter) -> None:
        """Whatever ended the wait (a worker, the timeout, the client gone): out of the line, the wait observed."""
        if waiter.in_line:
            line = self._lines.get(waiter.model, OrderedDict())
            waiters = line.get(waiter.client, deque())
            waiters.remove(waiter)
            self._out(waiter, line, served=False)
        self.observe_wait(time.monotonic() - waiter.arrived)

    def _out(self, waiter: Waiter, line: OrderedDict[str, deque[Waiter]], served: bool) -> None:
        """`waiter` was just removed from its client's line: the counts follow, empty lines go. A client served
        that still waits goes to the back of the turns."""
        waiter.in_line = False
        if self._by_id.get(waiter.request_id) is waiter:
            del self._by_id[waiter.request_id]
        if line.get(waiter.client):
            if served:
                line.move_to_end(waiter.client)
        else:
            line.pop(waiter.client, None)
        self._waiting[waiter.model] -= 1
        if not self._waiting[waiter.model]:
            del self._waiting[waiter.model]
            self._lines.pop(waiter.model, None)
            if not self._waiting:
                self._someone_waits.clear()

    def _refused(self, code: ErrorCode, message: str) -> ServingError:
        retry = max(1, math.ceil(self._recent_wait_s))
        return ServingError(code, f"{message}; retry in {retry} s", retry_after_s=retry)
