"""The UI's thinking display at the handler level: a folded Thinking message above the answer, how a thought
ended, what goes back to the model, the conversation log. The stream source stands in for the controller client
(as in test_ui_handlers.py); the browser test with a real stack is test_thinking_browser.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from app.messages import NOTE_THINKING, conversation_turns, message_text, to_openai_messages
from app.thinking import mark_stopped
from common.errors import ErrorCode, ServingError
from tests.support.ui_handlers import SETTINGS, log_lines, make, run


class ThinkingStream:
    """Yields ("r", text) as reasoning (the way ControllerClient.stream_chat delivers it: into stats, then an empty
    delta) and ("c", text) as answer text; then finishes with `finish`, or raises `error`."""

    def __init__(self, script, finish="stop", error=None):
        self.script, self.finish, self.error = script, finish, error
        self.payloads: list[dict] = []

    async def models(self):
        return []

    async def stream_chat(self, payload, stats, session_id=None, request_id=None):
        self.payloads.append(payload)
        for kind, text in self.script:
            await asyncio.sleep(0.01)
            if kind == "r":
                stats.reasoning += text
                yield ""
            else:
                yield text
        if self.error:
            raise self.error
        stats.finish_reason = self.finish


def user(text="Why?"):
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def thinking_of(history):
    return [m for m in history if (m.get("metadata") or {}).get("id") == NOTE_THINKING]


async def test_reasoning_streams_into_a_folded_thinking_message_above_the_answer(tmp_path):
    source = ThinkingStream([("r", "Light "), ("r", "<scatters>."), ("c", "Blue"), ("c", " sky.")])
    handlers = make(tmp_path, source)
    steps = await run(handlers.stream_reply(user(), replace(SETTINGS, thinking=True)))
    assert source.payloads[0]["thinking"] is True
    pending = [thinking_of(h)[0] for h in steps if thinking_of(h) and not any(
        m["role"] == "assistant" and not m.get("metadata") for m in h)]
    assert pending and all(t["metadata"]["status"] == "pending" for t in pending)  # while thinking, no answer bubble
    final = steps[-1]
    assert [m["role"] for m in final] == ["user", "assistant", "assistant"]
    thought, answer = final[1], final[2]
    assert thought["metadata"]["title"] == "Thinking" and thought["metadata"]["status"] == "done"
    assert thought["metadata"]["duration"] >= 0 and message_text(thought) == "Light &lt;scatters&gt;."
    assert answer == {"role": "assistant", "content": {"type": "text", "text": "Blue sky."}}
    # the next turn sends the reasoning back apart, once, as the worker expects it
    sent = to_openai_messages(final + user("And?"), "", 4, 2**20)
    assert sent[1] == {"role": "assistant", "content": "Blue sky.", "reasoning_content": "Light <scatters>."}
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    record = log_lines(tmp_path)[-1]
    assert record["reasoning"] == "Light <scatters>." and record["answer"] == "Blue sky."
    assert record["params"]["thinking"] is True


async def test_thinking_cut_at_the_token_limit_says_so(tmp_path):
    handlers = make(tmp_path, ThinkingStream([("r", "step one"), ("r", " step two")], finish="length"))
    final = (await run(handlers.stream_reply(user(), replace(SETTINGS, thinking=True))))[-1]
    assert [m["role"] for m in final] == ["user", "assistant"]  # no empty answer bubble
    assert "token limit" in thinking_of(final)[0]["metadata"]["title"]
    assert conversation_turns(final + user("next")) == [{"role": "user", "content": [
        {"type": "text", "text": "Why?"}, {"type": "text", "text": "next"}]}]  # nothing to attach it to


async def test_thinking_that_failed_is_shown_as_failed_with_the_error_note(tmp_path):
    err = ServingError(ErrorCode.WORKER_LOST, "Worker died.")
    handlers = make(tmp_path, ThinkingStream([("r", "hmm")], error=err))
    final = (await run(handlers.stream_reply(user(), replace(SETTINGS, thinking=True))))[-1]
    assert thinking_of(final)[0]["metadata"]["title"] == "Thinking (failed)"
    assert final[-1]["metadata"]["id"] == "error"
    assert log_lines(tmp_path)[-1]["outcome"] == "worker_lost"


async def test_stop_while_thinking_marks_the_thought_stopped(tmp_path):
    source = ThinkingStream([("r", "a"), ("r", "b"), ("r", "c")])
    handlers = make(tmp_path, source)
    gen = handlers.stream_reply(user(), replace(SETTINGS, thinking=True))
    shown = await anext(gen)
    await gen.aclose()  # what Gradio does to the generator on Stop
    assert thinking_of(shown)[0]["metadata"]["status"] == "pending"
    after = handlers.stopped(shown)
    assert thinking_of(after)[0]["metadata"] | {"duration": 0} == {"title": "Thinking (stopped)", "id": NOTE_THINKING,
                                                                   "status": "done", "duration": 0}
    assert log_lines(tmp_path)[-1]["outcome"] == "stopped"
    assert mark_stopped(user()) == user()


async def test_without_the_toggle_nothing_changes(tmp_path):
    source = ThinkingStream([("c", "Plain answer.")])
    final = (await run(make(tmp_path, source).stream_reply(user(), SETTINGS)))[-1]
    assert "thinking" not in source.payloads[0]
    assert final[1:] == [{"role": "assistant", "content": {"type": "text", "text": "Plain answer."}}]
    assert "reasoning" not in log_lines(tmp_path)[-1]
