"""What a block of a test leaves in reference cycles: the cycle collector is off while it runs (nothing it made is
collected behind its back), then one collection keeps what it found (DEBUG_SAVEALL) for the test to look at."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


def _collect_keeping() -> list:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    return list(gc.garbage)


@contextlib.contextmanager
def collector_off() -> Iterator[Callable[[], list]]:
    """The block runs after one collection, with the collector off; the function it is given collects once and
    returns what was in reference cycles. The collector is as it was after the block."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield _collect_keeping
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
