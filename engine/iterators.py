"""Ordered reads across memtables and tables: cursors, chunked merge, visibility.

Every source of entries is a *cursor* whose ``next_chunk()`` returns the
next run of entries of a key range, sorted in internal-key order
``(key, -sequence)``, each chunk *key-complete* (all versions of a key in one
chunk). Forward cursors return chunks in ascending key order, reverse
cursors in descending order (each chunk itself still ascending).

:func:`merged_chunks` merges cursors without a Python-level heap: it takes,
from every buffered chunk, the entries up to the smallest "frontier" key (the
largest key every source has fully delivered), sorts them with one C-level
``list.sort`` (Timsort merges the sorted runs), and yields that. Python
code then runs once per entry, not once per comparison.

:func:`visible` turns a merged chunk into what a reader at sequence ``seq``
sees: the newest version <= ``seq`` of each key, tombstones dropped.

Pure module apart from the memtable cursor taking the memtable's lock.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from engine.memtable import Entry, MemTable
from engine.sstable import Table, TableCursor

__all__ = ["Cursor", "LevelCursor", "MemCursor", "RangeTombstone", "merged_chunks",
           "scan_items", "visible", "visible_ranged"]

_MAX_NEGSEQ = 2**64
RangeTombstone = tuple[bytes, bytes, int]  # (start, end, seq): hides [start, end) below seq
_FIRST_CHUNK = 16
_MAX_CHUNK = 1024


class Cursor(Protocol):
    def next_chunk(self) -> list[Entry]:
        """The next key-complete chunk of entries, ascending; ``[]`` when done."""

    def next_visible(self, seq: int) -> list[tuple[bytes, bytes]] | None:
        """The next chunk as a reader at ``seq`` sees it (used when there is nothing to
        merge); None when done."""


class MemCursor:
    """Cursor over a memtable that may still be written: re-seeks for every chunk."""

    __slots__ = ("_done", "_hi", "_limit", "_lo", "_lo_inclusive", "_mem", "_reverse")

    def __init__(self, mem: MemTable, lo: bytes | None, hi: bytes | None, reverse: bool) -> None:
        self._mem = mem
        self._lo = lo
        self._hi = hi
        self._lo_inclusive = True
        self._reverse = reverse
        self._limit = _FIRST_CHUNK
        self._done = False

    def next_chunk(self) -> list[Entry]:
        if self._done:
            return []
        limit = self._limit
        self._limit = min(limit * 2, _MAX_CHUNK)
        chunk = self._mem.chunk(self._lo, self._hi, reverse=self._reverse, limit=limit,
                                inclusive=(self._lo_inclusive, False))
        if not chunk:
            self._done = True
        elif self._reverse:
            self._hi = chunk[0][0]
        else:
            self._lo = chunk[-1][0]
            self._lo_inclusive = False
        return chunk

    def next_visible(self, seq: int) -> list[tuple[bytes, bytes]] | None:
        chunk = self.next_chunk()
        return visible(chunk, seq) if chunk else None


class LevelCursor:
    """Cursor over the sorted, non-overlapping tables of one level >= 1.

    ``largest`` (each table's largest key, as the superversion keeps it) lets
    the cursor find its first table by bisection: a short scan of a level of
    hundreds of tables opens one or two of them and looks at no others.
    """

    __slots__ = ("_current", "_hi", "_i", "_lo", "_reverse", "_tables")

    def __init__(self, tables: Sequence[Table], lo: bytes | None, hi: bytes | None,
                 reverse: bool, largest: Sequence[bytes] | None = None) -> None:
        self._lo = lo
        self._hi = hi
        self._reverse = reverse
        self._tables = tables
        self._current: TableCursor | None = None
        if largest is None:
            largest = [t.props.largest for t in tables]
        if not reverse:
            self._i = 0 if lo is None else bisect_left(largest, lo)
        else:  # the table holding hi, or the last one; next_chunk skips it if it starts at hi
            self._i = len(tables) - 1 if hi is None else min(bisect_left(largest, hi),
                                                             len(tables) - 1)

    def next_chunk(self) -> list[Entry]:
        while (current := self._table_cursor()) is not None:
            chunk = current.next_chunk()
            if chunk:
                return chunk
            self._current = None
        return []

    def next_visible(self, seq: int) -> list[tuple[bytes, bytes]] | None:
        while (current := self._table_cursor()) is not None:
            items = current.next_visible(seq)
            if items is not None:
                return items
            self._current = None
        return None

    def _table_cursor(self) -> TableCursor | None:
        """The cursor of the table being read, opening the next one if needed; None at the end."""
        while self._current is None:
            i = self._i
            if self._reverse:
                if i < 0 or (self._lo is not None and self._tables[i].props.largest < self._lo):
                    return None
                self._i = i - 1
                if self._hi is not None and self._tables[i].props.smallest >= self._hi:
                    continue
            else:
                if i >= len(self._tables) or (
                        self._hi is not None and self._tables[i].props.smallest >= self._hi):
                    return None
                self._i = i + 1
            self._current = self._tables[i].cursor(self._lo, self._hi, self._reverse)
        return self._current


def merged_chunks(cursors: Sequence[Cursor], reverse: bool) -> Iterator[list[Entry]]:
    """Merge cursors into key-complete chunks, each sorted in internal-key order.

    A cursor is asked for more only when the next chunk is requested, so a
    consumer that stops early (a 100-key scan) decodes little beyond what it
    used.
    """
    live: list[tuple[list[Entry], Cursor]] = [([], c) for c in cursors]
    while True:
        refilled: list[tuple[list[Entry], Cursor]] = []
        for chunk, c in live:
            if not chunk:
                chunk = c.next_chunk()
                if not chunk:
                    continue  # exhausted
            refilled.append((chunk, c))
        live = refilled
        if not live:
            return
        if len(live) == 1:
            chunk, c = live[0]
            live = [([], c)]
            yield chunk
            continue
        taken: list[Entry] = []
        rests: list[tuple[list[Entry], Cursor]] = []
        if reverse:
            bound = max(chunk[0][0] for chunk, _ in live)
            probe: tuple[bytes, int] = (bound, -_MAX_NEGSEQ)
            for chunk, c in live:
                j = bisect_left(chunk, probe)
                taken += chunk[j:]
                rests.append((chunk[:j], c))
        else:
            bound = min(chunk[-1][0] for chunk, _ in live)
            probe = (bound, _MAX_NEGSEQ)
            for chunk, c in live:
                j = bisect_right(chunk, probe)
                taken += chunk[:j]
                rests.append((chunk[j:], c))
        live = rests
        taken.sort()
        yield taken


def visible(chunk: list[Entry], seq: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs a reader at ``seq`` sees in a merged chunk, ascending."""
    out: list[tuple[bytes, bytes]] = []
    prev: bytes | None = None
    for key, negseq, value in chunk:
        if key == prev or -negseq > seq:
            continue
        prev = key
        if value is not None:
            out.append((key, value))
    return out


def visible_ranged(chunk: list[Entry], seq: int, range_tombstones: Sequence[RangeTombstone]
                   ) -> list[tuple[bytes, bytes]]:
    """:func:`visible`, also hiding versions older than a range deletion that covers them.

    ``range_tombstones`` are ``(start, end, seq)`` with seq <= the reader's.
    """
    out: list[tuple[bytes, bytes]] = []
    prev: bytes | None = None
    for key, negseq, value in chunk:
        if key == prev or -negseq > seq:
            continue
        prev = key
        if value is not None and not any(s <= key < e and -negseq < t
                                         for s, e, t in range_tombstones):
            out.append((key, value))
    return out


def scan_items(cursors: Sequence[Cursor], seq: int, reverse: bool,
               check: Callable[[], None] | None = None,
               range_tombstones: Sequence[RangeTombstone] = ()
               ) -> Iterator[tuple[bytes, bytes]]:
    """Visible (key, value) pairs from ``cursors`` at ``seq``, in scan order.

    ``check`` runs before each chunk (the engine raises there once closed).
    ``range_tombstones`` (those visible at ``seq``) hide the older versions
    they cover, whichever source holds them.
    """
    if range_tombstones:
        for chunk in merged_chunks(cursors, reverse):
            if check is not None:
                check()
            items = visible_ranged(chunk, seq, range_tombstones)
            if reverse:
                items.reverse()
            yield from items
        return
    if len(cursors) == 1:  # nothing to merge: the cursor filters as it decodes
        cursor = cursors[0]
        while True:
            if check is not None:
                check()
            found = cursor.next_visible(seq)
            if found is None:
                return
            if reverse:
                found.reverse()
            yield from found
    for chunk in merged_chunks(cursors, reverse):
        if check is not None:
            check()
        items = visible(chunk, seq)
        if reverse:
            items.reverse()
        yield from items
