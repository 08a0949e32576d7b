"""From generated tokens to the text a client sees, for every engine: incremental decoding and stop strings.

The transformers engine feeds token ids (`IncrementalDecoder`, then `StopStrings`); TurboMind feeds the text deltas
lmdeploy already decoded incrementally (its own detokenizer runs inside its generate loop) through the same
`StopStrings`. So a stop string is cut the same way whichever engine serves.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


class IncrementalDecoder:
    """Text deltas from token ids, one at a time.

    Decodes a short window (the previous delta's tokens as context, for tokenizers whose pieces depend on their left
    neighbour, like SentencePiece's leading spaces) and holds text back while a multi-byte character is split across
    tokens (the window then decodes to a trailing U+FFFD)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids already turned into text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held back (at the end of the answer an incomplete character stays as U+FFFD)."""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):]


class StopStrings:
    """Cuts a text stream at the first stop string, which is not emitted. Text that could still turn out to be the
    start of a stop string is held back until it cannot; only that held-back tail is searched again, so the cost per
    delta does not grow with the answer."""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """The text that is safe to send now; after a stop string (`hit`), nothing more."""
        if self.hit:
            return ""
        if not self.stops:
            return text
        buf = self.pending + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.pending = True, ""
            return buf[:min(found)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]

    def flush(self) -> str:
        """At the end of the answer: the held-back tail was no stop string after all."""
        out, self.pending = self.pending, ""
        return out
