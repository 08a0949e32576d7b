"""Giving memory back after large messages. A 10 MB pasted message is copied several times on its way (Gradio's
request body, its JSON, the history, the display text, the request to the controller); once freed, glibc kept
most of it: its mmap threshold rises after the first large free (up to 32 MB), so later large buffers come from
the heap, and a heap does not shrink past anything still in use above them. Measured (docs/web-ui.md): ten refused
10 MB messages took the UI from 150 to 496 MiB, still 496 after a minute idle.

Two glibc settings (common/glibc_malloc.py): a fixed mmap threshold of 1 MiB, so every large buffer is
its own mapping and goes back to the system when freed; and, a few seconds after a large message, a garbage
collection and malloc_trim for what the heap can still return."""

from __future__ import annotations

import gc
import threading

from common.glibc_malloc import M_MMAP_THRESHOLD, malloc_trim, set_malloc

LARGE_BYTES = 1024 * 1024  # a message this large schedules a release
_RELEASE_AFTER_S = 5.0


def map_large_buffers() -> None:
    """Call once at start-up, before large buffers are made."""
    set_malloc({M_MMAP_THRESHOLD: LARGE_BYTES}, "memory may stay high after large messages")


class MemoryReleaser:
    """`large_message_done()` after handling a large message; the release runs once, a few seconds later (later
    large messages in between join it), in its own thread."""

    def __init__(self, delay_s: float = _RELEASE_AFTER_S):
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._pending: threading.Timer | None = None

    def large_message_done(self) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = threading.Timer(self.delay_s, self._release)
                self._pending.daemon = True
                self._pending.start()

    def _release(self) -> None:
        with self._lock:
            self._pending = None
        gc.collect()
        malloc_trim()
