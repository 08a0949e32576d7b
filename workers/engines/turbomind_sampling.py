"""What TurboMind honours of OpenAI's parameters, and its logprobs in our form.

Read from lmdeploy 0.18.0's source: `GenerationConfig` carries logprobs (top-n per token, at most 1024),
response_format (compiled by xgrammar inside TurboMind), min_p, min_new_tokens, stop_token_ids, ignore_eos,
skip_special_tokens and random_seed. It has no presence/frequency penalty, and TurboMind does not run
`logits_processors` (lmdeploy/turbomind/turbomind.py never reads them), so logit_bias cannot be applied either:
those two are refused at admission (workers/openai_support.py).
"""

from __future__ import annotations

from workers.engines.base import TokenLogprob

TURBOMIND_FEATURES = frozenset({"logprobs", "response_format", "min_p", "min_tokens", "stop_token_ids", "ignore_eos",
                                "skip_special_tokens"})


def lmdeploy_logprobs(token_ids: list[int] | None, logprobs: list[dict[int, float]] | None, tokenizer,
                      top: int) -> list[TokenLogprob]:
    """One lmdeploy output's logprobs (a {token id: logprob} dict per new token: the top n and the chosen one) for
    the tokens they belong to, which are the last ones of the output's `token_ids` (lmdeploy's GenOut keeps earlier
    tokens there as detokenizer context)."""
    if not logprobs or not token_ids:
        return []
    chosen = token_ids[len(token_ids) - len(logprobs):]

    def text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out = []
    for token_id, row in zip(chosen, logprobs):
        best = sorted(row.items(), key=lambda kv: kv[1], reverse=True)[:top]
        out.append(TokenLogprob(text(token_id), float(row.get(token_id, float("-inf"))),
                                tuple((text(t), float(lp)) for t, lp in best)))
    return out
