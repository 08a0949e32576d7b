"""The controller's JSON peek (controller/request_peek.py) beside msgspec decoding a Struct of only the fields it
needs, per call, on the bodies of the project's benches (issue 23: switch only if msgspec is no slower on every case).
The peek itself has since taken msgspec for bodies up to 16 KiB (issue 26) and walks the larger ones, which are the
cases here where msgspec lost; the small chat's "peek" column now times that decoder.

    .venv/bin/python bench/peek_bench.py            # ~2 min on one core
    .venv/bin/python bench/peek_bench.py --json peek.json

Both sides are called the way the controller calls the peek: `await peek(body)` on one event loop, a body over 64 KiB
walked in a thread (controller/request_peek.py). Both return the same fields (model, stream, user, a conversation
key, first turn) and are checked against each other on every case before timing. The msgspec side (every body
decoded whole) is a candidate only, not the product's. Its conversation key hashes each message's role and content
(sampled) up to the first user message: the same role, not the same value as the peek's key.
"msgspec floor" is the least msgspec can do: decode the three routing fields and skip everything else (no key).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.big_body_bench import upload_body  # noqa: E402
from bench.harness import chat_body  # noqa: E402
from common.errors import ErrorCode, ServingError  # noqa: E402
from controller.request_peek import _KEY_SAMPLE, _WALK_OFF_LOOP, Peeked, peek_request  # noqa: E402

MiB = 2**20


class _Message(msgspec.Struct):
    role: Any = None
    content: msgspec.Raw = msgspec.Raw(b"")


class _Routing(msgspec.Struct):
    model: Any = msgspec.UNSET
    stream: Any = False
    user: Any = None
    messages: list[_Message] = []


class _RoutingOnly(msgspec.Struct):  # `messages` that are not a list of objects: no conversation key
    model: Any = msgspec.UNSET
    stream: Any = False
    user: Any = None


_DECODE = msgspec.json.Decoder(_Routing)
_DECODE_ONLY = msgspec.json.Decoder(_RoutingOnly)


def _decode(body: bytes) -> tuple[Any, str | None, bool]:
    try:
        try:
            fields = _DECODE.decode(body)
        except msgspec.ValidationError as e:
            if "$.messages" not in str(e):
                raise
            fields = _DECODE_ONLY.decode(body)
    except msgspec.ValidationError:
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: the body must be a JSON object") from None
    except msgspec.DecodeError:
        raise ServingError(ErrorCode.INVALID_JSON, "the request body is not valid JSON") from None
    key, first_turn = None, False
    messages = getattr(fields, "messages", [])
    for i, m in enumerate(messages):
        if m.role == "user":
            h = hashlib.blake2b(digest_size=12)
            for earlier in messages[:i + 1]:
                raw = memoryview(earlier.content)
                h.update(str(earlier.role).encode() + len(raw).to_bytes(8, "little"))
                h.update(raw if len(raw) <= 2 * _KEY_SAMPLE else bytes(raw[:_KEY_SAMPLE]) + bytes(raw[-_KEY_SAMPLE:]))
            key, first_turn = h.hexdigest(), i == len(messages) - 1
            break
    return fields, key, first_turn


async def peek_msgspec(body: bytes) -> Peeked:
    fields, key, first_turn = await asyncio.to_thread(_decode, body) if len(body) > _WALK_OFF_LOOP else _decode(body)
    model, stream, user = fields.model, fields.stream, fields.user
    if model is msgspec.UNSET:
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: model: Field required", param="model")
    if not isinstance(model, str):
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: model: Input should be a valid string",
                           param="model")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise ServingError(ErrorCode.INVALID_REQUEST, "invalid request: stream: Input should be a valid boolean",
                           param="stream")
    return Peeked(model, stream, user if isinstance(user, str) else None, key, first_turn)


def _image_url(mib: float) -> str:
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * int(mib * MiB * 3 / 4)).decode()


def cases() -> dict[str, bytes]:
    photo = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_url(40)}},
                                         {"type": "text", "text": "What is this?"}]}
    later = [photo, {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "What colour is it?"}]
    return {
        "small chat (overhead bench)": json.dumps(chat_body(16)).encode(),
        "40 MiB, 4 images, model first (big-body bench)": upload_body(40),
        "40 MiB, 1 image, fields after it": json.dumps({"messages": [photo], "max_tokens": 16, "user": "alice",
                                                        "stream": True, "model": "demo"}).encode(),
        "40 MiB, later turn, fields after it": json.dumps({"messages": later, "stream": True,
                                                           "model": "demo"}).encode(),
    }


async def per_call(peek, body: bytes, budget_s: float) -> float:
    """Median seconds per call over rounds of calls, spending about `budget_s`."""
    await peek(body)  # warm
    t0 = time.perf_counter()
    await peek(body)
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, min(20_000, int(budget_s / 7 / one)))  # 7 rounds
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            await peek(body)
        rounds.append((time.perf_counter() - t0) / n)
    return statistics.median(rounds)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=6.0, help="seconds spent per case and side")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    figures = {}
    print(f"{'case':50} {'peek':>11} {'msgspec':>11} {'msgspec/peek':>13} {'msgspec floor':>14}")
    for name, body in cases().items():
        walk, ms = await peek_request(body), await peek_msgspec(body)
        assert (walk.model, walk.stream, walk.user, walk.first_turn) == (ms.model, ms.stream, ms.user, ms.first_turn)
        assert (walk.conversation is None) == (ms.conversation is None), (walk, ms)
        t_walk = await per_call(peek_request, body, args.budget_s)
        t_ms = await per_call(peek_msgspec, body, args.budget_s)
        t_floor = await per_call(_floor, body, args.budget_s)
        figures[name] = {"bytes": len(body), "walk_s": t_walk, "msgspec_s": t_ms, "ratio": t_ms / t_walk,
                         "msgspec_floor_s": t_floor}
        print(f"{name:50} {_fmt(t_walk):>11} {_fmt(t_ms):>11} {t_ms / t_walk:>12.2f}x {_fmt(t_floor):>14}",
              flush=True)
    print("load average:", Path("/proc/loadavg").read_text().strip())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


async def _floor(body: bytes) -> Any:
    """msgspec's least possible work: the three routing fields, `messages` skipped (no conversation key), inline."""
    return _DECODE_ONLY.decode(body)


def _fmt(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


if __name__ == "__main__":
    asyncio.run(main())
