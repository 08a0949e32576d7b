"""The folded "Thinking" message above an answer (thinking models, the settings' Think toggle).

In the Chatbot the reasoning is its own assistant message whose metadata has a title, a status and a duration:
Gradio shows it as a collapsible section with a spinner while `status` is "pending" and the time it took once
"done"; the answer follows as the next message. Its metadata `id` (NOTE_THINKING) tells the rest of the app that
this is the reasoning of the answer after it (app/messages.py sends it back as that answer's `reasoning_content`).

How a thought ended shows in its title: done, stopped (Stop pressed while thinking), failed (an error while
thinking) or cut at the token limit (max_tokens reached before the answer began).
"""

from __future__ import annotations

import time
from typing import Any

from app.messages import NOTE_THINKING, display_part
from app.texts import EN, tr


class ThinkingDisplay:
    def __init__(self, lang: str = EN):
        self.lang = lang
        self.started: float | None = None
        self.ended: float | None = None

    def message(self, reasoning: str, answering: bool) -> dict[str, Any] | None:
        """The Thinking message while the answer streams (None before any reasoning arrived). `answering`: the
        answer itself has begun, so the thinking is over."""
        if not reasoning:
            return None
        now = time.monotonic()
        self.started = self.started or now
        if answering and self.ended is None:
            self.ended = now
        status = "done" if self.ended is not None else "pending"
        return self._build(reasoning, "thinking", status)

    def final(self, reasoning: str, outcome: str, finish_reason: str | None) -> dict[str, Any] | None:
        """The Thinking message once the stream ended: `outcome` "ok", "stopped" or an error code."""
        if not reasoning:
            return None
        still_thinking = self.ended is None
        self.ended = self.ended or time.monotonic()
        self.started = self.started or self.ended
        key = "thinking"
        if still_thinking:
            key = {"ok": "thinking_cut" if finish_reason == "length" else "thinking",
                   "stopped": "thinking_stopped"}.get(outcome, "thinking_failed")
        return self._build(reasoning, key, "done")

    def _build(self, reasoning: str, key: str, status: str) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        return {"role": "assistant", "content": display_part(reasoning),
                "metadata": {"title": tr(key, self.lang), "id": NOTE_THINKING, "status": status,
                             "duration": round(end - (self.started or end), 1)}}


def mark_stopped(history: list[dict[str, Any]] | None, lang: str = EN) -> list[dict[str, Any]]:
    """After Stop: a Thinking message still pending (its stream was cancelled mid-thought) says it was stopped."""
    out = []
    for msg in history or []:
        meta = msg.get("metadata") or {}
        if meta.get("id") == NOTE_THINKING and meta.get("status") == "pending":
            msg = {**msg, "metadata": {**meta, "title": tr("thinking_stopped", lang), "status": "done"}}
        out.append(msg)
    return out
