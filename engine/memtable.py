"""The memtable: recent writes, every version, in memory, sorted by key.

Layout::

    _chains: dict  user key -> (seq, value | None, older)   # newest version first
    _keys:   SortedList of user keys                       # for ordered scans

A version chain is a linked list of immutable tuples; adding a version
replaces the dict entry with a new head, so a reader always sees a complete
chain without taking a lock. ``value is None`` is a tombstone.
``range_tombstones`` lists the range deletions ``(start, end, seq)`` added
(append-only, so readers may look without the lock); they hide older
versions of keys in ``[start, end)`` here and in every older source.

Invariants:

1. Sequence numbers strictly decrease along a chain.
2. ``_keys`` holds exactly the keys of ``_chains``.
3. ``approx_bytes`` estimates the Python heap the table occupies (objects,
   dict and list slots), not just payload lengths, so ``memtable_bytes``
   bounds real memory.

Thread-safety: one writer at a time calls :meth:`add` (the engine's
group-commit leader or recovery); any number of readers call :meth:`get`
without locking. :meth:`chunk` and :meth:`add` take ``_lock`` for the sorted
key list, which must never be iterated while it changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import islice

from sortedcontainers import SortedList

from engine.batch import RangeEnd

__all__ = ["Entry", "MemTable"]

# (user key, -sequence, value or None). Sorting entries sorts by key, then
# newest first -- the internal key order used everywhere in the engine.
Entry = tuple[bytes, int, bytes | None]
Chain = tuple[int, bytes | None, "Chain | None"]

# Estimated heap cost beyond payload: a bytes object header, a dict slot and
# a sorted-list slot per key; a tuple, an int and a bytes header per version.
KEY_OVERHEAD = 96
VERSION_OVERHEAD = 128


class MemTable:
    """A sorted, multi-version, in-memory table of one WAL's worth of writes."""

    __slots__ = (
        "_chains",
        "_keys",
        "_lock",
        "approx_bytes",
        "first_seq",
        "last_seq",
        "range_tombstones",
        "wal_number",
    )

    def __init__(self, wal_number: int) -> None:
        self._chains: dict[bytes, Chain] = {}
        self._keys: SortedList[bytes] = SortedList()
        self._lock = threading.Lock()
        self.approx_bytes = 0
        self.wal_number = wal_number
        self.first_seq = 0
        self.last_seq = 0
        self.range_tombstones: list[tuple[bytes, bytes, int]] = []

    def __len__(self) -> int:
        return len(self._chains)

    def add(self, seq: int, ops: dict[bytes, bytes | None]) -> None:
        """Add one batch's operations at ``seq``. Caller is the only writer."""
        if len(ops) == 1:  # a range deletion is a batch of one op (engine.batch.range_of)
            ((start, end),) = ops.items()
            if type(end) is RangeEnd:
                self.range_tombstones.append((start, end, seq))
                self.approx_bytes += VERSION_OVERHEAD + len(start) + len(end)
                if not self.first_seq:
                    self.first_seq = seq
                self.last_seq = seq
                return
        chains = self._chains
        new_keys: list[bytes] = []
        added = 0
        for key, value in ops.items():
            old = chains.get(key)
            if old is None:
                new_keys.append(key)
                added += KEY_OVERHEAD + len(key)
            chains[key] = (seq, value, old)
            added += VERSION_OVERHEAD + (len(value) if value is not None else 0)
        if new_keys:
            with self._lock:
                if len(new_keys) == 1:
                    self._keys.add(new_keys[0])
                else:
                    self._keys.update(new_keys)
        self.approx_bytes += added
        if not self.first_seq:
            self.first_seq = seq
        self.last_seq = seq

    def get(self, key: bytes, seq: int) -> Chain | None:
        """The newest version of ``key`` with sequence <= ``seq``, or None."""
        chain = self._chains.get(key)
        while chain is not None:
            if chain[0] <= seq:
                return chain
            chain = chain[2]
        return None

    def chunk(
        self,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool,
        limit: int,
        inclusive: tuple[bool, bool] = (True, False),
    ) -> list[Entry]:
        """Up to ``limit`` keys of the range with all their versions, in internal-key order.

        With ``reverse`` the keys are the *last* ``limit`` of the range; the
        returned list is ascending either way.
        """
        with self._lock:
            keys = list(islice(self._keys.irange(lo, hi, inclusive=inclusive, reverse=reverse),
                               limit))
        if reverse:
            keys.reverse()
        out: list[Entry] = []
        chains = self._chains
        for key in keys:
            chain: Chain | None = chains[key]
            while chain is not None:
                out.append((key, -chain[0], chain[1]))
                chain = chain[2]
        return out

    def entries(self) -> Iterator[Entry]:
        """Every version in internal-key order. Only for a frozen (immutable) table."""
        chains = self._chains
        for key in self._keys:
            chain: Chain | None = chains[key]
            while chain is not None:
                yield (key, -chain[0], chain[1])
                chain = chain[2]

    def newest_entries(self) -> Iterator[Entry]:
        """Each key's newest version, in key order. Only for a frozen table."""
        chains = self._chains
        for key in self._keys:
            seq, value, _ = chains[key]
            yield (key, -seq, value)

    def smallest_key(self) -> bytes | None:
        with self._lock:
            return self._keys[0] if self._keys else None
