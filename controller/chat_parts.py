"""What the chat route (controller/app.py) and its fast path (controller/fast_chat.py) share: a request's
conversation (the affinity key) and the early start of its streamed answer."""

from __future__ import annotations

import functools
from collections.abc import Callable

from starlette.requests import Request

from common.auth import raw_header
from common.direct_body import DirectBody
from common.logging_setup import RequestRecord
from common.sse import sse_head
from controller.policies import Conversation
from controller.relay import Dispatcher, Upstream
from controller.request_peek import Peeked

SESSION_HEADER = "X-Session-Id"  # names a conversation, whose turns stay on one worker (the web UI sends one per chat)
_SESSION_KEY = SESSION_HEADER.lower().encode()
MAX_KEY = 256  # of a session id or user: longer ones are cut (keys held per conversation)


def conversation_of(request: Request, asked: Peeked) -> Conversation | None:
    """The affinity key: the client's session id (header, else the OpenAI `user` field), else the hash of the
    conversation's start. Prefixed by kind, so a session named like a hash is not that conversation."""
    session = raw_header(request, _SESSION_KEY)
    if session:
        key = "s:" + session.decode("latin-1")[:MAX_KEY]
    elif asked.user:
        key = "u:" + asked.user[:MAX_KEY]
    elif asked.conversation:
        key = "c:" + asked.conversation
    else:
        return None
    return Conversation(key, asked.first_turn)


SERVED_BY = "X-Worker-ID"


def early_start(dispatcher: Dispatcher, direct: DirectBody, scope: dict) -> Callable[[Upstream], None]:
    """The dispatch's `on_first` for a streamed answer under our server: the response's head is begun and the
    relay started the moment the first event has passed its checks, so the head and the first event go out in one
    write from there (common/direct_body.py). The request's record is told of the head (its status, the request id
    in it), as `send` would have told it."""

    def start(upstream: Upstream) -> None:
        head = {"type": "http.response.start", "status": 200, "headers": _stream_head(upstream.worker.worker_id)}
        scope[RequestRecord.KEY].sent(head)
        direct.begin(head["status"], head["headers"])
        dispatcher.relay(upstream).start_direct(direct)

    return start


@functools.lru_cache(maxsize=1024)  # (a handful of workers: made once each, not per request)
def _stream_head(worker_id: str) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(sse_head({SERVED_BY: worker_id}))
