"""Each uploaded file's encoded form (its base64 data: URL), kept between turns.

A chat request carries the whole conversation, so without this every turn re-reads and re-encodes every earlier
file (4/3 of its size in new text each time). Keyed by the file's path, size and modification time, so a file
changed in place is read again; least recently used entries go first once `max_bytes` of text is held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from app.messages import data_url


class EncodedFiles:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int, int], tuple[str, str]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()  # handlers of several chats may run in threads
        self.hits = self.misses = 0

    def get(self, path: str | Path, max_file_bytes: int) -> tuple[str, str]:
        """(kind, data: URL) of the file; the size limit is checked again on every call (it may have changed)."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return data_url(p, max_file_bytes)  # says why, naming the file
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            found = self._entries.get(key)
            if found is not None and st.st_size <= max_file_bytes:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
        kind, url = data_url(p, max_file_bytes)
        with self._lock:
            self.misses += 1
            if len(url) <= self.max_bytes and key not in self._entries:
                self._entries[key] = (kind, url)
                self._held += len(url)
                while self._held > self.max_bytes:
                    _, (_, old) = self._entries.popitem(last=False)
                    self._held -= len(old)
        return kind, url
