"""The chat request body, parsed and validated once, without holding the worker's event loop.

Validating JSON holds the GIL all along (pydantic's parser does not release it; ~8 ms per MB here), so a thread does
not help: a 50 MB prompt would stall /health and the heartbeats for half a second. Bodies past a few megabytes are
therefore parsed in a helper process, started with the app, and come back as the validated model (strings are
copied back at memory speed). The helper also applies the first, free context check (workers/context_check.py), so
text far beyond the context is refused without its copy coming back. Small bodies are parsed in place: the hop would
cost more than it saves.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from fastapi import Request
from pydantic import ValidationError

from common.errors import ErrorCode, ServingError
from common.http import describe_validation, read_body
from common.protocol import ChatCompletionRequest
from workers.context_check import refuse_text_beyond

IN_PLACE_MAX_BYTES = 2 * 1024 * 1024


def _validate(raw: bytes, context: int, longest_token: int | None) -> tuple[bool, object]:
    """-> (True, request) or (False, (code, message, param)): a ServingError does not survive pickling."""
    try:
        req = ChatCompletionRequest.model_validate_json(raw)
        refuse_text_beyond(req, context, longest_token)
        return True, req
    except ValidationError as exc:
        return False, describe_validation(exc.errors())
    except ServingError as err:
        return False, (err.code, err.message, err.param)


def _ready() -> bool:
    return True


def _exit_with_parent(parent: int) -> None:
    """Helper initializer: a worker killed with SIGKILL cannot stop its helpers, so they go by themselves. `parent`
    is the worker's pid as it started the pool: a helper that comes up after its worker died (killed during
    start-up) must not take its adopter (init, a subreaper) for its worker. On Linux the kernel kills the helper
    with its worker (PR_SET_PDEATHSIG: strictly, when the thread that started it ends; the pool is started and
    refilled from the event loop's thread, which lives as long as the worker); elsewhere a thread polls."""
    if _die_with_parent():
        if os.getppid() != parent:  # it died before the request was made
            os._exit(0)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _die_with_parent() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class BodyParser:
    """`helpers` processes (0: parse in this process, for hosts that allow one process only)."""

    def __init__(self, helpers: int) -> None:
        self.helpers = helpers
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        if not self.helpers:
            return
        # spawn: a fork of a process holding CUDA or engine threads is not safe; the children import only the
        # protocol. The default is two, so that a big prompt to refuse does not wait behind every big image body
        # (~60 MB each).
        self._pool = ProcessPoolExecutor(self.helpers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_exit_with_parent, initargs=(os.getpid(),))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _ready) for _ in range(self.helpers)))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def parse(self, request: Request, max_bytes: int, context: int,
                    longest_token: int | None) -> ChatCompletionRequest:
        raw = await read_body(request, max_bytes)
        args = (raw, context, longest_token)
        if len(raw) <= IN_PLACE_MAX_BYTES or self._pool is None:
            ok, result = _validate(*args)
        else:
            try:
                ok, result = await asyncio.get_running_loop().run_in_executor(self._pool, _validate, *args)
            except BrokenProcessPool:  # the helper died (killed, out of memory): parse here, start a new one
                self.stop()
                await self.start()
                ok, result = _validate(*args)
        if not ok:
            code, message, param = result
            raise ServingError(code if isinstance(code, ErrorCode) else ErrorCode(code), message, param=param)
        return result
