"""Each uploaded file's encoded form (its base64 data: URL), kept between turns.

A chat request carries the whole conversation, so without this every turn re-reads and re-encodes every earlier
file (4/3 of its size in new text each time). Keyed by the file's path, size and modification time, so a file
changed in place is read again; least recently used entries go first once `max_bytes` of text is held.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cachetools import LRUCache

from app.messages import data_url


class EncodedFiles:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # cachetools keeps the recency order and the bytes of text held, and evicts
        self._entries: LRUCache[tuple[str, int, int], tuple[str, str]] = LRUCache(
            max_bytes, getsizeof=lambda entry: len(entry[1]))
        self._lock = threading.Lock()  # handlers of several chats may run in threads
        self.hits = self.misses = 0

    @property
    def held_bytes(self) -> int:
        """Characters of data: URL text held."""
        return int(self._entries.currsize)

    def get(self, path: str | Path, max_file_bytes: int) -> tuple[str, str]:
        """(kind, data: URL) of the file; the size limit is checked again on every call (it may have changed)."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return data_url(p, max_file_bytes)  # says why, naming the file
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            found = self._entries.get(key)  # a hit becomes the most recently used
            if found is not None and st.st_size <= max_file_bytes:
                self.hits += 1
                return found
        kind, url = data_url(p, max_file_bytes)
        with self._lock:
            self.misses += 1
            if len(url) <= self.max_bytes and key not in self._entries:
                self._entries[key] = (kind, url)
        return kind, url
