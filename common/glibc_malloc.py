"""glibc's malloc settings, through ctypes: the one place that calls mallopt and malloc_trim (no-ops on another C
library). Each server process sets what suits the buffers it makes (app/memory.py, controller/__main__.py)."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# glibc malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _libc = None


def set_malloc(settings: dict[int, int], why: str) -> bool:
    """mallopt each (parameter, value); False (and a warning naming `why`) when glibc refused one or is not here.
    Setting any of these also stops glibc from moving its mmap threshold by itself."""
    if _libc is None:
        return False
    refused = [param for param, value in settings.items() if not _libc.mallopt(param, value)]
    if refused:
        log.warning("mallopt refused %s: %s", refused, why)
    return not refused


def malloc_trim() -> None:
    """Give what the heap can return back to the system."""
    if _libc is not None:
        _libc.malloc_trim(0)
