"""A byte-bounded cache of decoded blocks, shared by every table of an engine.

Keys are ints (``file_number << 40 | block_offset``), values carry a charge
in bytes; inserting past ``capacity_bytes`` evicts. Replacement is CLOCK
(second chance), an approximation of LRU that needs no bookkeeping on a hit:
a hit only sets the entry's reference bit, so ``get`` is one dict lookup and
takes no lock. Eviction walks entries in insertion order, giving referenced
ones a second chance (clear the bit, move to the back) and dropping the first
unreferenced one. The clock is an ``OrderedDict``: taking its oldest entry is
O(1), whereas a plain dict used as a queue rescans the holes that earlier
evictions left at its front (that made every miss cost microseconds more).

Thread-safety: ``get`` is lock-free (a dict read under the GIL); ``put`` and
``erase_file`` take ``_lock``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class _Slot(Generic[V]):
    __slots__ = ("charge", "referenced", "value")

    def __init__(self, value: V, charge: int) -> None:
        self.value = value
        self.charge = charge
        self.referenced = False


class LRUCache(Generic[V]):
    """Approximately least-recently-used map bounded by the sum of its entries' charges."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[int, _Slot[V]] = OrderedDict()  # the clock's order
        self._lock = threading.Lock()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: int) -> V | None:
        slot = self._entries.get(key)
        if slot is None:
            self.misses += 1
            return None
        slot.referenced = True
        self.hits += 1
        return slot.value

    def put(self, key: int, value: V, charge: int) -> None:
        if charge > self.capacity_bytes:
            return
        with self._lock:
            entries = self._entries
            old = entries.pop(key, None)
            if old is not None:
                self.used_bytes -= old.charge
            entries[key] = _Slot(value, charge)
            self.used_bytes += charge
            while self.used_bytes > self.capacity_bytes:
                victim_key, victim = entries.popitem(last=False)
                if victim_key == key or victim.referenced:
                    victim.referenced = False
                    entries[victim_key] = victim  # second chance (never the new entry)
                else:
                    self.used_bytes -= victim.charge

    def erase_file(self, file_number: int) -> None:
        """Drop every block of one file (after it was deleted)."""
        lo, hi = file_number << 40, (file_number + 1) << 40
        with self._lock:
            for key in [k for k in self._entries if lo <= k < hi]:
                self.used_bytes -= self._entries.pop(key).charge

    def __len__(self) -> int:
        return len(self._entries)
