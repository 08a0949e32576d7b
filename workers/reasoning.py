"""Separates a thinking model's reasoning from its answer while the text streams, as vLLM's and lmdeploy's reasoning
parsers and DeepSeek's API do: `<think>reasoning</think>answer` becomes `reasoning_content` deltas, then `content`.

Rules (InternVL3.5 with the thinking system prompt writes its reasoning inside `<think>...</think>` first):
- the answer opens with `<think>` (after optional whitespace): what follows up to `</think>` is reasoning, the rest
  (its leading whitespace dropped: the protocol asks for "a newline" between the two) is the answer;
- an answer that does not open with `<think>` is all content (a model that did not think; a tag later in the text
  is text, e.g. an answer that quotes the tag);
- a tag may be split across any number of deltas: text that could still be the start of a tag is held back until it
  cannot (at most len('</think>') - 1 characters), and released by `flush()` at the end;
- no closing tag (stopped, or cut by max_tokens): everything after `<think>` was reasoning; the answer is empty and
  the finish reason says why.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class Split:
    reasoning: str = ""
    content: str = ""


def _partial_tail(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `tag`."""
    return max((k for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)


class ReasoningParser:
    """Feed it the answer's text deltas in order; each call returns the part that is safe to send now."""

    def __init__(self) -> None:
        self._state = "start"  # start -> reasoning -> answer_start -> answer; or start -> answer
        self._held = ""
        self.reasoning_closed = False  # `</think>` was seen
        self.thought = False  # the answer opened with `<think>`

    def feed(self, text: str) -> Split:
        buf = self._held + text
        self._held = ""
        reasoning, content = "", ""
        while buf:
            if self._state == "start":
                stripped = buf.lstrip()
                if stripped.startswith(THINK_START):
                    self._state, self.thought = "reasoning", True
                    buf = stripped[len(THINK_START):]
                elif THINK_START.startswith(stripped):  # whitespace, or the tag's beginning: wait for more
                    self._held = buf
                    return Split()
                else:
                    self._state = "answer"
            elif self._state == "reasoning":
                end = buf.find(THINK_END)
                if end >= 0:
                    reasoning += buf[:end]
                    buf = buf[end + len(THINK_END):]
                    self._state, self.reasoning_closed = "answer_start", True
                    continue
                hold = _partial_tail(buf, THINK_END)
                reasoning += buf[:len(buf) - hold]
                self._held = buf[len(buf) - hold:]
                buf = ""
            elif self._state == "answer_start":
                buf = buf.lstrip()
                if buf:
                    self._state = "answer"
            else:
                content += buf
                buf = ""
        return Split(reasoning, content)

    def flush(self) -> Split:
        """At the end of the answer: what was held back was no tag after all."""
        held, self._held = self._held, ""
        if self._state == "reasoning":
            return Split(reasoning=held)
        if self._state == "start":
            return Split(content=held.strip() and held)
        return Split(content=held)


def split_reasoning(text: str) -> Split:
    """The whole answer at once (non-streaming responses, tests)."""
    parser = ReasoningParser()
    first, last = parser.feed(text), parser.flush()
    return Split(first.reasoning + last.reasoning, first.content + last.content)


def join_reasoning(reasoning: str, content: str) -> str:
    """An earlier assistant turn as the model writes it: the authors' `chat()` keeps the whole response (reasoning
    included) in the history it sends back (docs/preprocessing.md). The newlines around the reasoning are
    normalised to one on each side (clients such as a Gradio chat strip them), the answer follows a blank line."""
    return f"{THINK_START}\n{reasoning.strip(chr(10))}\n{THINK_END}\n\n{content}"


class AnswerSplitter:
    """One answer's deltas for the wire: `reasoning_content` and `content` apart when the model thinks (families
    with a thinking mode), the text unchanged as `content` otherwise. Counts the generated tokens up to and including
    the one that closes the reasoning (each engine event says how many tokens its text completes), for
    `reasoning_tokens`."""

    def __init__(self, enabled: bool):
        self.parser = ReasoningParser() if enabled else None
        self.tokens = 0  # tokens fed until the reasoning closed (the tags' included)

    def feed(self, text: str, tokens: int = 1) -> Split:
        if self.parser is None:
            return Split(content=text)
        was_open = not self.parser.reasoning_closed
        split = self.parser.feed(text)
        self.tokens += tokens if was_open else 0
        return split

    def flush(self) -> Split:
        return self.parser.flush() if self.parser is not None else Split()

    @property
    def thought(self) -> bool:
        return self.parser is not None and self.parser.thought

    def reasoning_tokens(self, completion_tokens: int) -> int | None:
        """None when the answer did not think (the usage then carries no details)."""
        return min(self.tokens, completion_tokens) if self.thought else None
