"""Engine test double: emits tokens at a set rate inside a real worker process, for tests and benchmarks of the
layers above the engine (controller, UI, fault handling). Never used by the product.

Select it with `python -m workers --engine tests.support.scripted_engine:ScriptedEngine`; behaviour comes from
environment variables so one worker process can be scripted per test:
  SCRIPTED_TOKENS (default 16)        tokens per answer
  SCRIPTED_RATE (default 200)         tokens per second (0: as fast as possible)
  SCRIPTED_HANG_FIRST_S (default 0)   sleep before the first token (hang tests)
  SCRIPTED_FAIL_FIRST_N (default 0)   the first N requests raise an engine error before any token
  SCRIPTED_CRASH_AFTER (default -1)   hard-exit the whole process after this many tokens (kill tests)
  SCRIPTED_CONTEXT_LENGTH (default: the checkpoint's)  context size to advertise (long relay benchmarks)

Per-request switches, written in the user's text, aim a failure at one worker so that one pair of workers can play
every fault scenario (a failover test needs the same request to fail on one worker and work on the other):
  scripted:fail=WORKER_ID   that worker raises an engine error (HTTP 500) before the first token ('*': every worker)
  scripted:hang=WORKER_ID   that worker sleeps 30 s before the first token
  scripted:break=WORKER_ID  that worker raises an engine error right after its first token (a mid-stream failure)
  scripted:ground           the answer is a grounding answer (two labelled boxes on InternVL's 0-1000 scale)
  scripted:code             the answer is text and code laid out with a tab and indented lines (CODE_ANSWER)
  scripted:think            the answer thinks first, as InternVL3.5 does: `<think>...</think>` then the answer, its
                            tags split across tokens (THINKING_ANSWER)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import AsyncIterator

from common.errors import ErrorCode, ServingError
from workers.engines.base import Engine, EngineEvent, FinishEvent, GenerationRequest, TokenEvent
from workers.model_spec import ModelSpec
from workers.settings import WorkerSettings

GROUNDING_ANSWER = ("The <ref>sun</ref><box>[[760, 80, 900, 290]]</box> is top right; the "
                    "<ref>house</ref><box>[[150, 220, 480, 750]]</box> is on the left.").split(" ")
# Tokens as a tokenizer might cut them: both tags split, the reasoning over several tokens.
THINKING_REASONING = ["\n", "The", " picture", " shows", " a", " sun", " <", "b>", "and", " a", " house", ".", "\n"]
THINKING_ANSWER = ["<th", "ink>", *THINKING_REASONING, "</", "think", ">", "\n\n", "A", " sun", " over", " a",
                   " house", "."]


# Layout a chat must keep to the character: a tab, lines indented alike, a leading and a trailing blank line.
CODE_ANSWER = ["\n", "Run", " this", ":", "\n", "    def", " f", "():", "\n", "    \t", "return", " 1", "\n",
               "    then", " call", " f", "\n\n"]


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self, settings: WorkerSettings, spec: ModelSpec):
        self.spec = spec
        if os.environ.get("SCRIPTED_CONTEXT_LENGTH"):
            self.spec = dataclasses.replace(spec, context_length=int(os.environ["SCRIPTED_CONTEXT_LENGTH"]))
        self.model_id = settings.model_name or os.path.basename(os.path.normpath(settings.model_path))
        self.tokens = int(os.environ.get("SCRIPTED_TOKENS", "16"))
        self.rate = float(os.environ.get("SCRIPTED_RATE", "200"))
        self.hang_first_s = float(os.environ.get("SCRIPTED_HANG_FIRST_S", "0"))
        self.fail_left = int(os.environ.get("SCRIPTED_FAIL_FIRST_N", "0"))
        self.crash_after = int(os.environ.get("SCRIPTED_CRASH_AFTER", "-1"))
        self.worker_id = settings.worker_id
        self.running = 0
        self.queued = 0
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def check_health(self) -> None:
        if not self.started:
            raise ServingError(ErrorCode.ENGINE_ERROR, "scripted engine not started")

    def tokenize(self, prompt: str, user_spans: tuple[tuple[int, int], ...] = ()) -> list[int]:
        return [0] * len(re.findall(r"<IMG_CONTEXT>|\S+", prompt))

    def _aimed_at_me(self, prompt: str, action: str) -> bool:
        targets = re.findall(rf"scripted:{action}=([\w.*-]+)", prompt)
        return any(t in ("*", self.worker_id) for t in targets)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        """Stops (closing the stream) at any await: the hang, the pace between tokens."""
        if self.fail_left > 0:
            self.fail_left -= 1
            raise ServingError(ErrorCode.ENGINE_ERROR, "scripted engine failure (SCRIPTED_FAIL_FIRST_N)")
        if self._aimed_at_me(request.prompt, "fail"):
            raise ServingError(ErrorCode.ENGINE_ERROR, f"scripted engine failure on {self.worker_id} (scripted:fail)")
        prompt_tokens = len(request.input_ids) if request.input_ids is not None else len(self.tokenize(request.prompt))
        self.running += 1
        try:
            if self.hang_first_s:
                await asyncio.sleep(self.hang_first_s)
            elif self._aimed_at_me(request.prompt, "hang"):
                await asyncio.sleep(30.0)
            images = request.prompt.count(self.spec.image_start)
            first = f"I see {images} image{'s' if images != 1 else ''}."
            script = GROUNDING_ANSWER if "scripted:ground" in request.prompt else None
            script = THINKING_ANSWER if "scripted:think" in request.prompt else script
            script = CODE_ANSWER if "scripted:code" in request.prompt else script
            limit = min(len(script) if script else self.tokens, request.sampling.max_new_tokens)
            for i in range(limit):  # words made one at a time: answers may be a million tokens long (benchmarks)
                if script is THINKING_ANSWER or script is CODE_ANSWER:
                    word = script[i]
                else:
                    word = (" " if i else "") + script[i] if script else first if i == 0 else f" word{i}"
                if i == self.crash_after:
                    os._exit(17)
                if self.rate:
                    await asyncio.sleep(1.0 / self.rate)
                yield TokenEvent(word)
                if i == 0 and self._aimed_at_me(request.prompt, "break"):
                    raise ServingError(ErrorCode.ENGINE_ERROR, f"scripted failure after the first token on "
                                       f"{self.worker_id} (scripted:break)")
            reason = "length" if limit < (len(script) if script else self.tokens) else "stop"
            yield FinishEvent(reason, prompt_tokens, limit)
        finally:
            self.running -= 1
