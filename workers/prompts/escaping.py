"""User text never becomes a control token.

The prompt is one string (template markers, image expansions, and the text of the messages), but only the template
and the image expansions may hold control tokens: `<|im_end|>` typed by a user must reach the model as the characters
`<`, `|`, `im`, ..., not as the token that closes a turn, or a message could forge system and assistant turns.

So the pipeline records where the messages' text lies in the prompt (`split_untrusted`), and the engines tokenize with
`encode_prompt`, which marks the control tokens inside those spans with transformers' own markers
(`mark_control_tokens`) and tokenizes with `sanitize_control_tokens=True` (the same machinery as
`apply_chat_template(..., sanitize_control_tokens=True)`): marked tokens are encoded as plain text, everything else as
the tokenizer always does. A prompt whose messages hold no control token is tokenized exactly as before.

Control tokens: the tokenizer's special tokens and special added tokens, and its added tokens that the template itself
writes. InternVL's
grounding markup (`<ref>`, `<box>`, `<quad>` and their closing forms) stays a token in user text: it is how users ask
for grounding (the model cards' own prompts), and it cannot close a turn.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache

from common.errors import ErrorCode, ServingError
from workers.prompts.templates import Template

GROUNDING_TOKENS = frozenset({"<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"})

Spans = tuple[tuple[int, int], ...]


class UntrustedText:
    """Wraps message text in markers that cannot occur in it, so its place in the rendered prompt can be found again
    whatever the template adds around it. One instance per request."""

    def __init__(self) -> None:
        nonce = secrets.token_hex(8)
        self.start, self.end = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"

    def wrap(self, text: str) -> str:
        if self.start in text or self.end in text:  # 64 random bits: only by a guess of one in 2**64
            raise ServingError(ErrorCode.INVALID_REQUEST, "the message text holds a reserved character sequence")
        return f"{self.start}{text}{self.end}" if text else text

    def split(self, rendered: str) -> tuple[str, Spans]:
        """The prompt without markers, and the (start, end) of each message text in it."""
        out: list[str] = []
        spans: list[tuple[int, int]] = []
        length, pos = 0, 0
        while (a := rendered.find(self.start, pos)) >= 0:
            b = rendered.index(self.end, a)
            out.append(rendered[pos:a])
            length += a - pos
            text = rendered[a + len(self.start):b]
            out.append(text)
            spans.append((length, length + len(text)))
            length += len(text)
            pos = b + len(self.end)
        out.append(rendered[pos:])
        return "".join(out), tuple(spans)


def encode_prompt(tokenizer, prompt: str, spans: Spans, template: Template) -> list[int]:
    """Token ids of `prompt`, the text in `spans` encoded as plain text, with the special tokens the tokenizer adds
    around a sequence (e.g. BOS for Llama, Yi, InternLM2; none for Qwen2), as the checkpoints' own `chat()` does."""
    from transformers.utils.chat_template_utils import mark_control_tokens  # here: the pipeline imports this module

    pattern = _control_pattern(tokenizer, template)
    marked = prompt
    if spans and pattern is not None:
        pieces, pos = [], 0
        for a, b in spans:
            pieces += [prompt[pos:a], mark_control_tokens(prompt[a:b], pattern)]
            pos = b
        pieces.append(prompt[pos:])
        marked = "".join(pieces)
    prefix, suffix = _added_around(tokenizer)
    try:
        ids = tokenizer(marked, add_special_tokens=False, sanitize_control_tokens=True).input_ids
    except ValueError as exc:  # a control token that plain text would also produce: no safe way to encode it
        raise ServingError(ErrorCode.INVALID_REQUEST, f"the message text holds a control token of this model that "
                           f"cannot be sent as plain text ({exc}); remove it", param="messages") from None
    return [*prefix, *ids, *suffix]


def control_tokens(tokenizer, template: Template) -> tuple[str, ...]:
    written = "\0".join((template.system_start, template.system_end, template.user_start, template.user_end,
                         template.assistant_start, template.assistant_end, *template.stop_words))
    special = set(tokenizer.all_special_tokens)  # some tokenizers do not flag their bos/eos/pad as special
    return tuple(sorted(t.content for t in tokenizer.added_tokens_decoder.values()
                        if (t.special or t.content in special or t.content in written)
                        and t.content not in GROUNDING_TOKENS and not t.content.isspace()))


def _control_pattern(tokenizer, template: Template) -> re.Pattern | None:
    tokens = control_tokens(tokenizer, template)
    return _compile(tokens) if tokens else None


@lru_cache(maxsize=16)
def _compile(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))))  # longest first


def _added_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a sequence when asked to add special tokens."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return full[:at], full[at + len(plain):]
