"""The read path: point, multi-key and range lookups over a superversion.

A :class:`SuperVersion` is what one read needs, bundled so that it can be
swapped atomically: the live memtable, the immutable memtables (newest
first) and the tables by level, plus the range deletions of the frozen
sources. The lookups here are functions of (superversion, key, sequence);
:class:`Reader` adds the engine's state around them (which superversion a
sequence reads, whether range deletions exist, the closed check), and
:class:`Snapshot` is a public handle on one sequence.

Invariants:

1. A superversion never changes once built; writers publish a new one by
   swapping ``Versions.sv`` (under ``_mutex``). Readers take no lock.
2. A reader reads the visible sequence *before* the superversion: every
   entry with a sequence <= the visible one is then in the bundle, and a
   batch is either wholly visible or not (a write is inserted into the
   memtable before its sequence is published).
3. A range tombstone hides, at every sequence >= its own, every older
   version of its keys in every source: once ``Versions.range_deletes`` is
   set the lookups take the ``*_ranged`` path that honours them.
4. :func:`lookup` and :func:`lookup_version` walk the sources in the same
   order (memtable, immutables, L0 newest first, then one table per level);
   ``lookup`` is kept apart because it is every ``get``'s hot path and builds
   no (sequence, value) pair. Keep the two in step.

Thread-safety: everything here may be called from any thread at once.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Protocol

from engine.batch import Buffer, check_key, check_keys, scan_bounds
from engine.bloom import key_hash, key_hashes
from engine.errors import ClosedError
from engine.iterators import Cursor, LevelCursor, MemCursor, scan_items
from engine.memtable import MemTable
from engine.options import Options
from engine.sstable import Table
from engine.version import Version

__all__ = ["ReadSource", "Reader", "Snapshot", "SuperVersion", "lookup", "lookup_many",
           "lookup_ranged"]

RangeTombstone = tuple[bytes, bytes, int]


class SuperVersion:
    """What a reader needs, swapped atomically: memtables plus tables by level."""

    __slots__ = ("has_tables", "imms", "l0", "levels", "mem", "rts", "version")

    def __init__(self, mem: MemTable, imms: tuple[MemTable, ...], version: Version,
                 tables: dict[int, Table]) -> None:
        self.mem = mem
        self.imms = imms  # newest first
        self.version = version
        self.l0 = tuple(tables[f.number] for f in version.levels[0])
        self.levels = tuple(
            ([f.largest for f in files], [tables[f.number] for f in files])
            for files in version.levels[1:]
            if files
        )
        self.has_tables = bool(self.l0 or self.levels)
        # Range deletions of the frozen sources (the live memtable's are read live).
        self.rts: tuple[RangeTombstone, ...] = tuple(
            rt for imm in imms for rt in imm.range_tombstones) + tuple(
            rt for _, f in version.files() for rt in tables[f.number].props.range_tombstones)

    def has_range_deletes(self) -> bool:
        """True if any source holds a range deletion (reads must then honour them)."""
        return bool(self.rts or self.mem.range_tombstones)


def range_tombstones(sv: SuperVersion, seq: int) -> list[RangeTombstone]:
    """The range deletions a reader at ``seq`` must honour (the live memtable's included)."""
    return [rt for rt in (*sv.rts, *sv.mem.range_tombstones) if rt[2] <= seq]


def lookup_version(sv: SuperVersion, key: bytes, seq: int) -> tuple[int, bytes | None] | None:
    """The newest version (sequence, value or None) of ``key`` visible at ``seq``."""
    chain = sv.mem.get(key, seq)
    if chain is not None:
        return chain[0], chain[1]
    for imm in sv.imms:
        chain = imm.get(key, seq)
        if chain is not None:
            return chain[0], chain[1]
    if not sv.has_tables:
        return None
    h, delta = key_hash(key)
    for t in sv.l0:
        p = t.props
        if p.smallest <= key <= p.largest and t.may_contain(h, delta):
            hit = t.get(key, seq)
            if hit is not None:
                return hit
    for largest, tables in sv.levels:
        i = bisect_left(largest, key)
        if i < len(tables):
            t = tables[i]
            if t.props.smallest <= key and t.may_contain(h, delta):
                hit = t.get(key, seq)
                if hit is not None:
                    return hit
    return None


def lookup(sv: SuperVersion, key: bytes, seq: int) -> bytes | None:
    """The value of ``key`` at ``seq``: :func:`lookup_version`'s walk (invariant 4)."""
    found = sv.mem.get(key, seq)
    if found is not None:
        return found[1]
    for imm in sv.imms:
        found = imm.get(key, seq)
        if found is not None:
            return found[1]
    if not sv.has_tables:
        return None
    h, delta = key_hash(key)
    for t in sv.l0:
        p = t.props
        if p.smallest <= key <= p.largest and t.may_contain(h, delta):
            hit = t.get(key, seq)
            if hit is not None:
                return hit[1]
    for largest, tables in sv.levels:
        i = bisect_left(largest, key)
        if i < len(tables):
            t = tables[i]
            if t.props.smallest <= key and t.may_contain(h, delta):
                hit = t.get(key, seq)
                if hit is not None:
                    return hit[1]
    return None


def lookup_ranged(sv: SuperVersion, key: bytes, seq: int) -> bytes | None:
    """:func:`lookup` honouring range deletions (a version older than one covering it is gone)."""
    hit = lookup_version(sv, key, seq)
    if hit is None or hit[1] is None:
        return None
    found_seq = hit[0]
    for start, end, t in (*sv.rts, *sv.mem.range_tombstones):
        if found_seq < t <= seq and start <= key < end:
            return None
    return hit[1]


def lookup_many(sv: SuperVersion, keys: list[bytes], seq: int) -> list[bytes | None]:
    """:func:`lookup` of every key of ``keys`` at ``seq``, one pass per source.

    Sources are visited newest first (memtables, L0 tables newest first,
    then each level); a key leaves ``pending`` at the first source that
    holds a version visible at ``seq`` (a tombstone resolves it to None).
    Each key is hashed once; in a level, each table takes the run of
    pending keys between its smallest and largest key (two bisections)
    and :meth:`Table.get_sorted` probes its filter and blocks for them.
    """
    found: dict[bytes, bytes | None] = {}
    pending = sorted(set(keys))
    for mem in (sv.mem, *sv.imms):
        if not pending:
            break
        if not len(mem):
            continue
        get = mem.get
        rest: list[bytes] = []
        for k in pending:
            chain = get(k, seq)
            if chain is None:
                rest.append(k)
            else:
                found[k] = chain[1]
        pending = rest
    if pending and sv.has_tables:
        hashes = key_hashes(pending)
        for t in sv.l0:
            p = t.props
            lo = bisect_left(pending, p.smallest)
            hi = bisect_right(pending, p.largest, lo)
            if lo < hi and t.get_sorted(pending, hashes, lo, hi, seq, found):
                keep = [i for i, k in enumerate(pending) if k not in found]
                pending = [pending[i] for i in keep]
                hashes = [hashes[i] for i in keep]
                if not pending:
                    break
        for largest, tables in sv.levels:
            if not pending:
                break
            i, n, j, ntables = 0, len(pending), 0, len(tables)
            while i < n:
                # The table that may hold pending[i], and the run of keys it spans.
                j = bisect_left(largest, pending[i], j)
                if j == ntables:
                    break
                t = tables[j]
                end = bisect_right(pending, largest[j], i)
                lo = bisect_left(pending, t.props.smallest, i, end)
                if lo < end:
                    t.get_sorted(pending, hashes, lo, end, seq, found)
                i = end
                j += 1
            keep = [i for i, k in enumerate(pending) if k not in found]
            if len(keep) < n:
                pending = [pending[i] for i in keep]
                hashes = [hashes[i] for i in keep]
    return [found.get(k) for k in keys]


def cursors(sv: SuperVersion, lo: bytes | None, hi: bytes | None, reverse: bool,
            min_seq: int = 0) -> list[Cursor]:
    """One cursor per source of ``sv`` that may hold keys in ``[lo, hi)``.

    ``min_seq``: leave out tables with no version at or above it (the
    range is under a range tombstone of that sequence: what they hold
    there is hidden anyway).
    """
    # An empty memtable has nothing for this scan even if written to later:
    # the scan's sequence was read first, and writes become visible only
    # after they are in the memtable.
    out: list[Cursor] = [MemCursor(sv.mem, lo, hi, reverse)] if len(sv.mem) else []
    out += [MemCursor(imm, lo, hi, reverse) for imm in sv.imms]
    for t in sv.l0:
        p = t.props
        if (p.max_seq >= min_seq and (lo is None or p.largest >= lo)
                and (hi is None or p.smallest < hi)):
            out.append(t.cursor(lo, hi, reverse))
    for largest, tables in sv.levels:
        if min_seq:
            keep = [i for i, t in enumerate(tables) if t.props.max_seq >= min_seq]
            if len(keep) < len(tables):
                tables = [tables[i] for i in keep]
                largest = [largest[i] for i in keep]
        out.append(LevelCursor(tables, lo, hi, reverse, largest))
    return out


Segment = tuple[bytes | None, bytes | None, int]


def covered_segments(lo: bytes | None, hi: bytes | None, rts: Sequence[RangeTombstone]
                     ) -> list[Segment]:
    """``[lo, hi)`` cut at every range-tombstone boundary inside it: ``(start, end, seq)``
    pieces in key order, ``seq`` the highest sequence of the tombstones covering the
    whole piece (0: none). Neighbours with the same ``seq`` are merged. Pure.

    A version older than ``seq`` in its piece is hidden, so a scan of the piece needs
    only the sources holding versions at or above it (:func:`cursors`' ``min_seq``):
    scanning across a deleted range then costs what scanning an empty one does.
    """
    points = sorted({p for s, e, _ in rts for p in (s, e)
                     if (lo is None or p > lo) and (hi is None or p < hi)})
    bounds: list[bytes | None] = [lo, *points, hi]
    out: list[Segment] = []
    for a, b in pairwise(bounds):
        seq = 0 if a is None or b is None else max(
            (t for s, e, t in rts if s <= a and b <= e), default=0)
        if out and out[-1][2] == seq:
            out[-1] = (out[-1][0], b, seq)
        else:
            out.append((a, b, seq))
    return out


class ReadSource(Protocol):
    """Where a :class:`Reader` finds the superversion to read (``engine.versions.Versions``)."""

    @property
    def range_deletes(self) -> bool: ...

    def sv_at(self, seq: int) -> SuperVersion: ...


class Reader:
    """Reads at a given sequence: what snapshots, transactions and the engine share.

    The narrow seam between the read path and everyone who reads at a
    pinned sequence (``Snapshot``, the local transaction backend): no
    caller needs the engine itself.
    """

    __slots__ = ("_check_open", "_source", "options")

    def __init__(self, options: Options, source: ReadSource,
                 check_open: Callable[[], None]) -> None:
        self.options = options
        self._source = source
        self._check_open = check_open

    def get_at(self, key: bytes, seq: int) -> bytes | None:
        """The value of ``key`` at ``seq`` (None if absent)."""
        self._check_open()
        src = self._source
        if src.range_deletes:
            return lookup_ranged(src.sv_at(seq), key, seq)
        return lookup(src.sv_at(seq), key, seq)

    def get_many_at(self, keys: list[bytes], seq: int) -> list[bytes | None]:
        """The values of ``keys`` at ``seq``, in order."""
        self._check_open()
        src = self._source
        sv = src.sv_at(seq)
        if src.range_deletes:
            return [lookup_ranged(sv, k, seq) for k in keys]
        return lookup_many(sv, keys, seq)

    def scan_at(self, start: Buffer | None, end: Buffer | None, reverse: bool, seq: int
                ) -> Iterator[tuple[bytes, bytes]]:
        """The live pairs in ``[start, end)`` at ``seq``, ascending (descending if reverse)."""
        lo = None if start is None else check_key(start, self.options)
        hi = None if end is None else check_key(end, self.options)
        src = self._source
        sv = src.sv_at(seq)
        if lo is not None and hi is not None and lo >= hi:
            return iter(())
        rts = range_tombstones(sv, seq) if src.range_deletes else []
        segments = covered_segments(lo, hi, rts) if rts else []
        if len(segments) <= 1 and not (segments and segments[0][2]):
            return scan_items(cursors(sv, lo, hi, reverse), seq, reverse, self._check_open,
                              rts)
        return self._scan_segments(sv, segments, reverse, seq, rts)

    def _scan_segments(self, sv: SuperVersion, segments: list[Segment], reverse: bool,
                       seq: int, rts: list[RangeTombstone]) -> Iterator[tuple[bytes, bytes]]:
        """A scan piece by piece (see :func:`covered_segments`), in scan order."""
        for a, b, covered in (reversed(segments) if reverse else segments):
            yield from scan_items(cursors(sv, a, b, reverse, covered), seq, reverse,
                                  self._check_open, rts)


class Snapshot:
    """A consistent, read-only view of the store at one sequence number.

    Holding a snapshot keeps compaction from discarding the versions it sees;
    release it (or use it as a context manager) when done.
    """

    __slots__ = ("_reader", "_release", "_released", "sequence")

    def __init__(self, reader: Reader, sequence: int,
                 release: Callable[[int], None]) -> None:
        self._reader = reader
        self._release = release
        self.sequence = sequence
        self._released = False

    def get(self, key: Buffer) -> bytes | None:
        self._check()
        return self._reader.get_at(check_key(key, self._reader.options), self.sequence)

    def multi_get(self, keys: Iterable[Buffer]) -> list[bytes | None]:
        """The values of ``keys`` in this snapshot, in order (see :meth:`Engine.multi_get`)."""
        ks = check_keys(keys, self._reader.options)
        self._check()
        return self._reader.get_many_at(ks, self.sequence)

    def scan(self, start: Buffer | None = None, end: Buffer | None = None, *,
             reverse: bool = False, prefix: Buffer | None = None
             ) -> Iterator[tuple[bytes, bytes]]:
        """The snapshot's pairs in ``[start, end)`` or with ``prefix`` (see :meth:`Engine.scan`)."""
        lo, hi = scan_bounds(start, end, prefix, self._reader.options)
        self._check()
        return self._reader.scan_at(lo, hi, reverse, self.sequence)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self.sequence)

    def _check(self) -> None:
        if self._released:
            raise ClosedError("snapshot was released")

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
