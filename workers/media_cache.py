"""The worker's cache of preprocessed media: the normalised pixel tiles of recent images and videos.

A chat request carries the whole conversation, so every turn about a video sends the same clip again; decoding 32
frames of it is the most expensive CPU step a worker has. Entries are keyed by a hash of the file's content (the
base64 text of a data: URL, or the downloaded bytes) and the preprocessing parameters (tile size and budget,
frames, segment), so the same file with other parameters is another entry. What is kept is the final float32
tensor [tiles, 3, S, S]: on a hit nothing is decoded, resized or normalised again. Entries are shared, never
copied here: callers must not modify them (the pipeline concatenates a request's media into a new tensor, so the
engines never see a cached tensor itself).

Bounded by bytes (`--media-cache-mb`), least recently used out first; hits and misses are counted for /metrics.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Key = tuple[object, ...]


def content_digest(source: str | bytes) -> str:
    """SHA-256 of a data: URL (hashed whole, media type included: one copy of the text fewer than cutting it) or of
    raw bytes (downloaded media). A key is (digest, *preprocessing parameters)."""
    data = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    return ("u" if isinstance(source, str) else "b") + hashlib.sha256(data).hexdigest()


class MediaCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # preprocessing runs in worker threads
        self.held_bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: Key) -> torch.Tensor | None:
        """The cached pixels (read only), or None (counted as a miss)."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return found

    def put(self, key: Key, pixels: torch.Tensor) -> None:
        """Keep `pixels` (not copied: the caller must not modify it afterwards); a tensor larger than the whole cache
        is not kept."""
        size = pixels.element_size() * pixels.nelement()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.held_bytes -= old.element_size() * old.nelement()
            self._entries[key] = pixels
            self.held_bytes += size
            while self.held_bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.held_bytes -= evicted.element_size() * evicted.nelement()

    def __len__(self) -> int:
        return len(self._entries)
