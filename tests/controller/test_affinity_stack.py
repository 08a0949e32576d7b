"""Affinity through a real controller process and stand-in workers: every turn of a chat is answered by the worker
that answered its first, whether the chat is named by X-Session-Id, by the `user` field or by nothing at all."""

from __future__ import annotations

import httpx
import pytest

from tests.support.stack import start_controller
from tests.support.standin_workers import standins, tokens


@pytest.fixture(scope="module")
def controller(log_dir):
    ctl = start_controller(log_dir, heartbeat_expiry_s=600.0)
    yield ctl
    ctl.stop()


def turns(n: int, topic: str) -> list[list[dict]]:
    """The messages of each turn of one chat of `n` turns (each turn sends the whole conversation)."""
    messages, out = [{"role": "system", "content": "Answer the questions."}], []
    for i in range(n):
        messages = messages + [{"role": "user", "content": f"{topic}: question {i}"}]
        out.append(messages)
        messages = messages + [{"role": "assistant", "content": f"answer {i}"}]
    return out


@pytest.mark.parametrize("naming", ["nothing", "header", "user"])
async def test_each_turn_goes_where_the_chat_started(controller, naming):
    async with standins(controller.url, {w: tokens(1, 0) for w in ("a", "b", "c")}), \
            httpx.AsyncClient(base_url=controller.url, timeout=30) as http:
        served: dict[int, list[str]] = {}
        for turn in range(4):
            for chat in range(9):
                extra = {"user": f"user-{chat}"} if naming == "user" else {}
                headers = {"X-Session-Id": f"chat-{chat}"} if naming == "header" else {}
                # With a session id, even the first message may change (an edited chat keeps its session).
                topic = f"topic {chat}" if naming == "nothing" else f"topic {chat} edit {turn}"
                r = await http.post("/v1/chat/completions", headers=headers, json={
                    "model": "m", "messages": turns(4, topic)[turn], "max_tokens": 2, **extra})
                assert r.status_code == 200, r.text
                served.setdefault(chat, []).append(r.headers["x-worker-id"])
        assert all(len(set(ws)) == 1 for ws in served.values()), served
        assert len({ws[0] for ws in served.values()}) > 1, served  # chats are spread over the workers
