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
from typing import TYPE_CHECKING

from cachetools import LRUCache

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
        # cachetools keeps the recency order and the byte count, and evicts; the lock: preprocessing runs in threads
        self._entries: LRUCache[Key, torch.Tensor] = LRUCache(max_bytes, getsizeof=_tensor_bytes)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def held_bytes(self) -> int:
        return int(self._entries.currsize)

    def get(self, key: Key) -> torch.Tensor | None:
        """The cached pixels (read only), or None (counted as a miss). A hit becomes the most recently used."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
        return found

    def put(self, key: Key, pixels: torch.Tensor) -> None:
        """Keep `pixels` (not copied: the caller must not modify it afterwards), least recently used entries out
        first; a tensor larger than the whole cache is not kept."""
        if _tensor_bytes(pixels) > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = pixels

    def __len__(self) -> int:
        return len(self._entries)


def _tensor_bytes(pixels: torch.Tensor) -> int:
    return pixels.element_size() * pixels.nelement()
