"""A byte-bounded LRU cache of decoded blocks, shared by every table of an engine.

Keys are ints (``file_number << 40 | block_offset``), values carry a charge
in bytes; inserting past ``capacity_bytes`` evicts least recently used
entries. Thread-safe: one short lock around each operation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Least-recently-used map bounded by the sum of its entries' charges."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[int, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: int) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: int, value: V, charge: int) -> None:
        if charge > self.capacity_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used_bytes -= old[1]
            self._entries[key] = (value, charge)
            self.used_bytes += charge
            while self.used_bytes > self.capacity_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.used_bytes -= dropped

    def erase_file(self, file_number: int) -> None:
        """Drop every block of one file (after it was deleted)."""
        lo, hi = file_number << 40, (file_number + 1) << 40
        with self._lock:
            for key in [k for k in self._entries if lo <= k < hi]:
                self.used_bytes -= self._entries.pop(key)[1]

    def __len__(self) -> int:
        return len(self._entries)
