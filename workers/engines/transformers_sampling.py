"""OpenAI's sampling parameters on `model.generate`, with transformers' own processors where it has them
(logit_bias as `sequence_bias`, min_p, min_new_tokens for min_tokens / ignore_eos) and xgrammar's for
response_format. What transformers lacks is here: presence/frequency penalties (OpenAI's additive ones) and
logprobs, read from the language-model head's raw output (the model's distribution before temperature, top-p and
the penalties, as vLLM reports by default).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from common.errors import ErrorCode, ServingError
from workers.engines.base import SamplingParams, TokenLogprob

_thread = threading.local()  # the generation thread's LogprobTap, for the head's hook


def sampling_kwargs(sampling: SamplingParams, *, eos_ids: list[int], prompt_tokens: int, vocab_size: int,
                    grammars: Grammars) -> dict[str, Any]:
    """generate() keyword arguments for the parameters beyond temperature/top-p/top-k/repetition penalty."""
    kwargs: dict[str, Any] = {}
    processors: list = []
    if sampling.stop_token_ids:
        _check_ids("stop_token_ids", sampling.stop_token_ids, vocab_size)
        kwargs["eos_token_id"] = [*eos_ids, *(t for t in sampling.stop_token_ids if t not in eos_ids)]
    minimum = sampling.max_new_tokens if sampling.ignore_eos else sampling.min_new_tokens
    if minimum:
        kwargs["min_new_tokens"] = min(minimum, sampling.max_new_tokens)  # the end tokens are masked until then
    if sampling.min_p and sampling.temperature > 0:
        kwargs["min_p"] = sampling.min_p
    if sampling.logit_bias:
        _check_ids("logit_bias", [t for t, _ in sampling.logit_bias], vocab_size)
        kwargs["sequence_bias"] = {(t,): float(b) for t, b in sampling.logit_bias}
    if sampling.presence_penalty or sampling.frequency_penalty:
        processors.append(_penalties(sampling.presence_penalty, sampling.frequency_penalty, prompt_tokens))
    if sampling.response_format is not None:
        processors.append(grammars.processor(sampling.response_format))
    if processors:
        kwargs["logits_processor"] = processors
    return kwargs


def _check_ids(param: str, ids, vocab_size: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"{param} names token {bad[0]}; this model's vocabulary has "
                           f"ids 0-{vocab_size - 1}", param=param)


def _penalties(presence: float, frequency: float, prompt_tokens: int) -> PresenceFrequencyPenalty:
    return PresenceFrequencyPenalty(presence, frequency, prompt_tokens)


class PresenceFrequencyPenalty:
    """OpenAI's penalties (transformers' logits-processor protocol): subtract `frequency` per earlier occurrence in
    the answer, and `presence` once. A plain module-level class: ZeroGPU pickles the generation arguments."""

    def __init__(self, presence: float, frequency: float, prompt_tokens: int):
        self.presence, self.frequency, self.prompt_tokens = presence, frequency, prompt_tokens

    def __call__(self, input_ids, scores):
        import torch

        answer = input_ids[:, self.prompt_tokens:]
        if answer.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class Grammars:
    """xgrammar's compiler for this model's tokenizer, built on first use (xgrammar comes with lmdeploy)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        self._tokenizer, self._vocab_size, self._stop_ids = tokenizer, vocab_size, stop_ids
        self._compiler = None
        self._lock = threading.Lock()

    def processor(self, response_format: dict):
        import xgrammar
        from xgrammar.contrib.hf import LogitsProcessor

        with self._lock:
            if self._compiler is None:
                info = xgrammar.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size,
                                                               stop_token_ids=self._stop_ids)
                self._compiler = xgrammar.GrammarCompiler(info)
        if response_format["type"] == "json_schema":
            schema = response_format["json_schema"]["schema"]
        else:  # json_object: any JSON object, as lmdeploy compiles it
            schema = {"type": "object"}
        # any_whitespace off: the answer is compact JSON and cannot run on in whitespace
        return LogitsProcessor(self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))


class LogprobTap:
    """Per generation: the head's last-position logits (captured by `hook_head`) -> each chosen token's logprob and
    the `top` most likely tokens. Runs on the generation thread, between the head and the streamer."""

    def __init__(self, tokenizer, top: int):
        self._tokenizer, self._top = tokenizer, top
        self.logits = None

    def __enter__(self) -> LogprobTap:
        _thread.tap = self
        return self

    def __exit__(self, *exc) -> None:
        _thread.tap = None

    def take(self, token_ids: list[int]) -> list[TokenLogprob]:
        if self.logits is None:
            return []
        rows = self.logits.float().log_softmax(-1)
        self.logits = None
        out = []
        for row, token_id in zip(rows, token_ids):
            top = ()
            if self._top:
                values, ids = row.topk(self._top)
                top = tuple((self._text(i), float(v)) for i, v in zip(ids.tolist(), values))
            out.append(TokenLogprob(self._text(token_id), float(row[token_id]), top))
        return out

    def _text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def hook_head(model) -> None:
    """A forward hook on the language-model head: hands the last position's logits to the running generation's
    tap, when it has one."""

    def capture(module, args, output) -> None:
        tap = getattr(_thread, "tap", None)
        if tap is not None:
            tap.logits = output[:, -1, :].detach()

    model.get_output_embeddings().register_forward_hook(capture)
