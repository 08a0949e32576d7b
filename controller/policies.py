"""Dispatch policies: each picks one worker among candidates, skipping unhealthy, benched and full ones, or None.

`conversation` names the conversation a request belongs to (controller/request_peek.py, app.py); only `Affinity`
uses it.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

from cachetools import LRUCache

from controller.registry import WorkerRecord


class Conversation(NamedTuple):  # (a tuple: made per request)
    key: str
    first_turn: bool = False  # no earlier turn: no worker has anything of it cached


class Policy(ABC):
    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    def choose(self, candidates: Sequence[WorkerRecord],
               conversation: Conversation | None = None) -> WorkerRecord | None:
        usable = _usable(candidates)
        return self._pick(usable, conversation) if usable else None

    @abstractmethod
    def _pick(self, usable: Sequence[WorkerRecord], conversation: Conversation | None) -> WorkerRecord: ...


class ShortestQueue(Policy):
    """Least loaded relative to capacity; ties broken at random so equal workers share the load."""

    def _pick(self, usable: Sequence[WorkerRecord], conversation: Conversation | None = None) -> WorkerRecord:
        best = min(w.load for w in usable)
        return self.rng.choice([w for w in usable if w.load == best])


class Lottery(Policy):
    """Random, weighted by free capacity: bigger or idler workers win more often."""

    def _pick(self, usable: Sequence[WorkerRecord], conversation: Conversation | None = None) -> WorkerRecord:
        weights = [max(w.max_concurrency - w.busy, 0) + 1e-9 for w in usable]
        return self.rng.choices(list(usable), weights=weights, k=1)[0]


class Affinity(ShortestQueue):
    """Turns of one conversation go to the worker that served its last turn: that worker holds its media cache
    (decoded, tiled images and video frames) and, under TurboMind, its prefix cache.

    A conversation seen before goes where it went last, while that worker is usable. A first turn goes to the least
    loaded worker (nothing is cached anywhere yet, and that keeps the load even). A later turn of a conversation not
    remembered (the controller restarted, or it runs beside others; its worker left) goes to the top of a rendezvous
    hash of its key over the usable workers: every controller picks the same one, and a worker joining or leaving
    moves only the conversations it wins or held. The affine worker is taken while it has at most `max_excess` more
    requests (running and waiting) than the least loaded one, and waited for while it is full within that bound (in
    the controller's line, request_queue.py); beyond it the least loaded takes the turn and the conversation moves
    there for good. Requests without a conversation go by shortest queue. `remember` bounds the
    conversations kept (the least recently seen are forgotten first)."""

    def __init__(self, rng: random.Random | None = None, max_excess: int = 4, remember: int = 65_536):
        super().__init__(rng)
        self.max_excess = max_excess
        self.remember = remember
        # conversation key -> worker id of its last turn; cachetools evicts the least recently seen
        self._last: LRUCache[str, str] = LRUCache(remember)

    def choose(self, candidates: Sequence[WorkerRecord], conversation: Conversation | None = None
               ) -> WorkerRecord | None:
        """None also when the conversation's worker is full but within the bound: the request waits for it."""
        if conversation is None:
            return super().choose(candidates)
        # One lookup per choice (it also marks the conversation as recently seen): it was three, each a few calls
        # deep into cachetools, on every request's way (issue 26)
        last = self._last.get(conversation.key)
        own = _named(candidates, last)
        usable = _usable(candidates)
        if own is not None and own.healthy and own.breaker.admits() and own.busy >= own.max_concurrency:
            if not usable or _requests(own) - min(_requests(w) for w in usable) <= self.max_excess:
                return None
        return self._pick_for(usable, conversation, last) if usable else None

    def preferred(self, conversation: Conversation) -> str | None:
        """The worker that served the conversation's last turn, if it is remembered."""
        return self._last.get(conversation.key)

    def _pick_for(self, usable: Sequence[WorkerRecord], conversation: Conversation, last: str | None
                  ) -> WorkerRecord:
        """`last`: the worker id of the conversation's last turn, looked up by the caller."""
        key = conversation.key
        if len(usable) == 1:  # (what every branch below comes to, in a fraction of the calls)
            chosen = usable[0]
        else:
            affine = _named(usable, last)
            if affine is None and not (conversation.first_turn and last is None):
                affine = max(usable, key=lambda w: _score(key, w))
            least = min(_requests(w) for w in usable)
            fits = affine is not None and _requests(affine) - least <= self.max_excess
            chosen = affine if fits else super()._pick(usable)
        if chosen.worker_id != last:  # (the lookup already marked it as recently seen)
            self._last[key] = chosen.worker_id
        return chosen


def _usable(candidates: Sequence[WorkerRecord]) -> list[WorkerRecord]:
    """The healthy ones, not benched, with a free slot."""
    return [w for w in candidates if w.healthy and w.busy < w.max_concurrency and w.breaker.admits()]


def _named(workers: Sequence[WorkerRecord], worker_id: str | None) -> WorkerRecord | None:
    if worker_id is not None:
        for w in workers:
            if w.worker_id == worker_id:
                return w
    return None


def _requests(w: WorkerRecord) -> int:
    return w.busy + w.queued


def _score(key: str, w: WorkerRecord) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{w.worker_id}".encode(), digest_size=8).digest(), "big")


POLICIES: dict[str, type[Policy]] = {"affinity": Affinity, "shortest_queue": ShortestQueue, "lottery": Lottery}
