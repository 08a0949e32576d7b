"""The one context check: does the prompt (images included) plus the answer fit the engine's real limit?

In three steps, cheapest first, so that text far beyond the context costs nothing:
1. Before any media work, on the event loop in microseconds: no tokenizer turns N characters into fewer than
   N / (its longest token, in characters) tokens, so text beyond context x that length cannot fit.
2. In a thread: a prompt much longer than the context in characters is refused when a prefix of it already holds
   more tokens than the context (tokenizing a prefix costs a fraction of the whole).
3. In a thread: the prompt is tokenized, once; the engine receives these ids, and its room decides max_tokens.
"""

from __future__ import annotations

from dataclasses import replace

from common.errors import ErrorCode, ServingError
from common.protocol import ChatCompletionRequest
from workers.engines.base import Engine, GenerationRequest

# Step 2 applies past this many characters per token of context; typical text has 3-5.
PREFIX_CHARS_PER_TOKEN = 8
# Step 1 allows for normalisers (NFC and the like) that shorten text before it is split into tokens.
NORMALISER_SLACK = 2


def text_chars(req: ChatCompletionRequest) -> int:
    total = 0
    for msg in req.messages:
        if isinstance(msg.content, str):
            total += len(msg.content)
        else:
            total += sum(len(p.text) for p in msg.content if getattr(p, "type", None) == "text")
    return total


def refuse_text_beyond(req: ChatCompletionRequest, context: int, longest_token: int | None) -> None:
    """Step 1, once per request, where the body is validated (workers/body_parser.py): with the engine's figures as
    numbers, as the body parser's helper process has no engine."""
    if not longest_token:
        return
    chars, most = text_chars(req), context * longest_token * NORMALISER_SLACK
    if chars > most:
        raise ServingError(ErrorCode.CONTEXT_TOO_LONG, f"the conversation's text is {chars:,} characters; the "
                           f"model's context holds {context} tokens, which no text of more than {most:,} characters "
                           "fits; shorten it or start a new chat", param="messages")


def tokenize_within_context(engine: Engine, prompt: str, user_spans: tuple[tuple[int, int], ...] = ()) -> list[int]:
    """Steps 2 and 3. Runs in a thread (tokenizers release the GIL while they work)."""
    context = engine.context_length
    prefix_chars = context * PREFIX_CHARS_PER_TOKEN
    if len(prompt) > prefix_chars:
        # A prefix cut in the middle of a word can gain a token or two over the whole text's tokens there.
        spans = tuple((a, min(b, prefix_chars)) for a, b in user_spans if a < prefix_chars)
        prefix_tokens = len(engine.tokenize(prompt[:prefix_chars], spans))
        if prefix_tokens > context + 2:
            raise ServingError(ErrorCode.CONTEXT_TOO_LONG, f"the conversation needs more than {prefix_tokens} "
                               f"tokens (its first {prefix_chars:,} of {len(prompt):,} characters already do) but "
                               f"the model's context holds {context}; shorten it or start a new chat",
                               param="messages")
    return engine.tokenize(prompt, user_spans)


def fit_context(engine: Engine, gen: GenerationRequest, asked: int | None) -> None:
    """Step 3's check, against the engine's own limit; lowers the default answer length to the room left."""
    context = engine.context_length
    prompt_tokens = len(gen.input_ids or ())
    room = context - prompt_tokens
    if room < 1:
        raise ServingError(ErrorCode.CONTEXT_TOO_LONG, f"the conversation needs {prompt_tokens} tokens but the "
                           f"model's context holds {context}; start a new chat, send fewer images or lower max "
                           "tiles per image")
    if asked is not None and asked > room:
        raise ServingError(ErrorCode.CONTEXT_TOO_LONG, f"max_tokens={asked} does not fit: the prompt uses "
                           f"{prompt_tokens} of the model's {context} tokens, leaving {room}", param="max_tokens")
    if gen.sampling.max_new_tokens > room:
        gen.sampling = replace(gen.sampling, max_new_tokens=room)
