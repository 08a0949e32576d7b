"""The OpenAI stream chunks that stand-in workers send (tests/support/standin_workers.py, loopback_workers.py) and
that the tests of the relay expect back."""

from __future__ import annotations

import json

CHUNK = json.dumps({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]})  # one token
FINISH = json.dumps({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = json.dumps({"id": "c", "model": "m", "choices": [],  # the last chunk of a stream that asked for usage
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
