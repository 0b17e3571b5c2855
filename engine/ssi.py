"""Certifier for serializable snapshot isolation (SSI) and its OCC baseline.

Pure: no I/O, no clock, no threads. The caller (the engine's transaction
layer, or a replicated leader) serialises every call -- "caller holds the
certifier's lock" -- and passes the time in.

Model (Cahill, Röhm & Fekete 2008; Ports & Grittner 2012):

* A transaction T reads at ``snapshot`` (a sequence number) and writes at its
  commit. Writes are buffered, so another transaction can only see -- or
  conflict with -- T's writes once T is certified.
* ``T1 -rw-> T2`` (an rw-antidependency) when T1 read a key, or scanned a
  range holding a key, that a concurrent T2 overwrote. Edges are found from
  both sides: when a reader reads a key a concurrent writer already
  certified (``on_read``/``on_scan``), and when a writer certifies over an
  earlier reader's SIREAD entries (``certify``).
* A *dangerous structure* is ``T_in -rw-> T_pivot -rw-> T_out`` where T_out
  was certified before T_pivot and T_in (``T_in`` may be ``T_out``: write
  skew). If T_in is read-only it is dangerous only when T_out's writes were
  visible to T_in's snapshot (the read-only refinement). Every
  non-serializable history under SI contains one (Fekete et al. 2005).
* The victim is the pivot if it is not yet certified, else T_in -- and with
  buffered writes that is always the transaction acting at that moment, so
  it fails at once with ``dangerous_structure``. Why: an edge *into* T
  (``R -rw-> T``) needs T's writes, which exist only once T is certified, so
  an active transaction has no in-edges and cannot be a pivot yet. A
  structure is therefore completed either by the pivot's own certification
  (it has the in-edge from readers of its writes and the out-edge to the
  earlier T_out) or by T_in reading the certified pivot's write -- each time
  by the victim itself. PostgreSQL, whose writes are visible as they happen,
  must instead *doom* a running pivot when T_out commits; here no transaction
  ever dooms another. ``TxnState.doomed`` remains for :meth:`Certifier.expire`,
  which fails transactions older than ``max_txn_age_s`` (``too_old``).

The lifecycle of a :class:`TxnState` (ACTIVE, PENDING, COMMITTED, ABORTED)
is drawn in ``engine/txnstate.py``. PENDING (certified, not yet visible)
counts for conflicts but not for readers.

Invariants:

1. Commit stamps are handed out in certification order; that order must be
   the order in which commits become visible (the caller guarantees it by
   certifying and enqueueing the write in one critical section).
2. A committed transaction is forgotten once every active transaction began
   after it was certified and sees its writes: it can then gain no
   rw-edge to a concurrent transaction. So the state tracked is bounded by
   the transactions overlapping the oldest active one, and ``max_txn_age_s``
   bounds how long that can be.
3. ``isolation="occ"`` uses the same write index but no SIREAD entries: at
   certification a transaction fails if anything it read was overwritten by a
   transaction certified after its snapshot (serial order = commit order).

Two rules every backend (the standalone engine, a replicated leader) must
follow are implemented once, so that neither carries its own copy:
:class:`BlindWrites` (when and how writes outside transactions are recorded
and settled; ``engine/blindwrites.py``, re-exported here) and
:meth:`Certifier.commit_empty` (committing a transaction that wrote nothing).
"""

from __future__ import annotations

import warnings
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from typing import Literal

from sortedcontainers import SortedDict

from engine.blindwrites import BlindWrite, BlindWrites
from engine.errors import SerializationFailure, TransactionClosed
from engine.txnstate import SERIALIZATION_REASONS, Status, TxnState

# BlindWrite(s), Status, TxnState and SERIALIZATION_REASONS live in their own modules;
# engine.ssi is the import path the backends and tests use.
__all__ = ["SERIALIZATION_REASONS", "BlindWrite", "BlindWrites", "Certifier", "Status",
           "TxnState"]


def _in_range(key: bytes, lo: bytes | None, hi: bytes | None) -> bool:
    return (lo is None or key >= lo) and (hi is None or key < hi)


def _overlaps(lo1: bytes | None, hi1: bytes | None, lo2: bytes | None, hi2: bytes | None
              ) -> bool:
    """Do ``[lo1, hi1)`` and ``[lo2, hi2)`` share a key (None: unbounded)?"""
    return (hi2 is None or lo1 is None or lo1 < hi2) and (hi1 is None or lo2 is None
                                                         or lo2 < hi1)


class Certifier:
    """Decides, one call at a time, whether transactions may commit."""

    def __init__(self, isolation: Literal["ssi", "occ"] = "ssi",
                 max_txn_age_s: float = 60.0, *, max_txn_age: float | None = None) -> None:
        """``max_txn_age_s``: see :meth:`check`; ``max_txn_age`` is its deprecated old name."""
        if max_txn_age is not None:
            warnings.warn("Certifier(max_txn_age=) is deprecated: use max_txn_age_s",
                          DeprecationWarning, stacklevel=2)
            max_txn_age_s = max_txn_age
        self.isolation = isolation
        self.max_txn_age_s = max_txn_age_s
        self._stamp = 0
        self._next_id = 0
        self._active: OrderedDict[int, TxnState] = OrderedDict()  # by begin stamp
        self._finished: deque[TxnState] = deque()  # certified, by commit stamp
        # SIREAD entries (SSI only): point reads by key, scanned ranges by reader.
        self._readers: dict[bytes, set[TxnState]] = {}
        self._range_readers: dict[TxnState, list[tuple[bytes | None, bytes | None]]] = {}
        # Certified writers still relevant to someone: key -> writers, oldest first.
        self._writers: SortedDict[bytes, list[TxnState]] = SortedDict()
        # Certified range deletions still relevant (few; checked by every read and write).
        self._range_writers: list[TxnState] = []
        self.commits = 0
        self.aborts: Counter[str] = Counter()  # SerializationFailure reasons
        self.rollbacks: Counter[str] = Counter()  # rollback, storage errors, lost leadership

    # -- queries ---------------------------------------------------------------

    @property
    def tracking(self) -> bool:
        """True while some transaction's state is kept (blind writes must be recorded)."""
        return bool(self._active or self._finished)

    def tracked(self) -> dict[str, int]:
        """Sizes of the certifier's state, for ``stats()`` and memory tests."""
        return {
            "active": len(self._active),
            "committed_tracked": len(self._finished),
            "siread_keys": len(self._readers),
            "siread_ranges": sum(len(r) for r in self._range_readers.values()),
            "written_keys": len(self._writers) + len(self._range_writers),
        }

    # -- transaction lifecycle -------------------------------------------------

    def begin(self, snapshot: int, now: float, *, read_only: bool = False) -> TxnState:
        """Start tracking a transaction that reads at ``snapshot``."""
        self._stamp += 1
        self._next_id += 1
        t = TxnState(self._next_id, snapshot, self._stamp, now, read_only)
        self._active[t.txn_id] = t
        return t

    def check(self, t: TxnState, now: float) -> None:
        """Raise if ``t`` may no longer run (doomed, too old, finished)."""
        if t.status is not Status.ACTIVE:
            if t.doomed is not None:
                raise SerializationFailure(t.doomed, f"transaction {t.txn_id}")
            raise TransactionClosed(f"transaction {t.txn_id} already ended")
        if t.doomed is not None:
            reason = t.doomed
            self._fail(t, reason)
            raise SerializationFailure(reason, f"transaction {t.txn_id} was chosen as victim")
        if now - t.begin_time > self.max_txn_age_s:
            self._fail(t, "too_old")
            raise SerializationFailure(
                "too_old", f"transaction ran longer than max_txn_age_s={self.max_txn_age_s}")

    def on_read(self, t: TxnState, key: bytes, now: float) -> None:
        """Record that ``t`` read ``key`` (present or not) at its snapshot."""
        self.check(t, now)
        t.reads.add(key)
        if self.isolation == "occ":
            return
        readers = self._readers.get(key)
        if readers is None:
            self._readers[key] = {t}
        else:
            readers.add(t)
        for w in self._writers.get(key, ()):
            if w is not t and w.commit_seq is not None and w.commit_seq > t.snapshot:
                self._read_edge(t, w)
        for w in self._newer_range_writers(t, key, key + b"\x00"):
            self._read_edge(t, w)

    def _newer_range_writers(self, t: TxnState, lo: bytes | None, hi: bytes | None
                             ) -> list[TxnState]:
        """Range deletions certified after ``t``'s snapshot that touch ``[lo, hi)``."""
        if not self._range_writers:
            return []
        return [w for w in self._range_writers
                if w is not t and w.commit_seq is not None and w.commit_seq > t.snapshot
                and any(_overlaps(a, b, lo, hi) for a, b in w.range_writes)]

    def on_scan(self, t: TxnState, lo: bytes | None, hi: bytes | None, now: float) -> None:
        """Record that ``t`` scanned ``[lo, hi)``: it depends on every key there, present or not."""
        self.check(t, now)
        t.ranges.append((lo, hi))
        if self.isolation == "occ":
            return
        self._range_readers.setdefault(t, []).append((lo, hi))
        for key in self._writers.irange(lo, hi, inclusive=(True, False)):
            for w in self._writers[key]:
                if w is not t and w.commit_seq is not None and w.commit_seq > t.snapshot:
                    self._read_edge(t, w)
        for w in self._newer_range_writers(t, lo, hi):
            self._read_edge(t, w)

    def certify(self, t: TxnState, writes: Iterable[bytes], commit_seq: int | None,
                now: float) -> None:
        """Decide whether ``t`` commits; on success it is PENDING at ``commit_seq``.

        ``commit_seq`` is the sequence its writes will carry (``None`` for a
        transaction without writes). Raises SerializationFailure, after
        which ``t`` is ABORTED. May doom other transactions.
        """
        self.check(t, now)
        keys = frozenset(writes)
        if keys and commit_seq is None:
            raise ValueError("a transaction with writes needs a commit sequence")
        if t.read_only and keys:
            raise ValueError("a read-only transaction cannot write")
        for key in keys:
            for w in self._writers.get(key, ()):
                if w is not t and w.commit_seq is not None and w.commit_seq > t.snapshot:
                    self._fail(t, "write_write")
                    raise SerializationFailure(
                        "write_write", f"key {key!r} was written by a concurrent transaction")
            if self._newer_range_writers(t, key, key + b"\x00"):
                self._fail(t, "write_write")
                raise SerializationFailure(
                    "write_write", f"key {key!r} was deleted by a concurrent delete_range")
        if self.isolation == "occ":
            self._validate_reads(t)
        else:
            for key in keys:
                self._link_readers(t, key)
            # t as the pivot: an earlier-certified t_out and any reader of t's writes.
            if any(self._dangerous(r, t, t_out) for r in t.in_edges for t_out in t.out_edges):
                self._fail(t, "dangerous_structure")
                raise SerializationFailure(
                    "dangerous_structure",
                    f"transaction {t.txn_id} is the pivot of a cycle of rw-antidependencies")
        self._certify(t, keys, commit_seq)
        self.commits += 1

    def _certify(self, t: TxnState, keys: frozenset[bytes], commit_seq: int | None) -> None:
        """Make ``t`` PENDING and index its writes."""
        self._stamp += 1
        t.commit_stamp = self._stamp
        t.commit_seq = commit_seq if keys else None
        t.writes = keys
        t.status = Status.PENDING
        del self._active[t.txn_id]
        self._finished.append(t)
        for key in keys:
            writers = self._writers.get(key)
            if writers is None:
                self._writers[key] = [t]
            else:
                writers.append(t)

    def commit_empty(self, t: TxnState, now: float) -> None:
        """Commit ``t``, which wrote nothing: certify it without writes, then mark it committed.

        Nothing has to become visible, so there is no PENDING phase: a
        read-only commit is decided and finished in one call (it can still
        fail, e.g. ``too_old``, and then raises like :meth:`certify`). It
        stays tracked while concurrent transactions may still form a
        dangerous structure through it (the read-only anomaly).
        """
        self.certify(t, (), None, now)
        self.committed(t)

    def committed(self, t: TxnState) -> None:
        """``t``'s writes are now visible to new snapshots."""
        if t.status is Status.PENDING:
            t.status = Status.COMMITTED
        self._collect()

    def abort(self, t: TxnState, reason: str = "rollback") -> None:
        """Forget ``t`` (rolled back by its owner, or its certified commit failed)."""
        if t.status is Status.ABORTED:
            return
        self._fail(t, reason)

    def record_blind_write(self, keys: Iterable[bytes], commit_seq: int, now: float,
                           ranges: tuple[tuple[bytes, bytes], ...] = ()) -> TxnState:
        """Record a write outside any transaction (``put``, ``batch``) while others are tracked.

        A blind write has no reads, so it can only be the T_out of a
        dangerous structure; it never fails itself. ``ranges`` are the
        ``[start, end)`` a ``delete_range`` wrote: every key in them, present
        or not, counts as written.
        """
        t = self.begin(commit_seq - 1, now)
        keys = frozenset(keys)
        t.range_writes = ranges
        if self.isolation == "ssi":
            for key in keys:
                self._link_readers(t, key)
            for lo, hi in ranges:
                self._link_range_readers(t, lo, hi)
        self._certify(t, keys, commit_seq)
        if ranges:
            t.commit_seq = commit_seq  # it wrote (a range), though no single key
            self._range_writers.append(t)
        return t

    def expire(self, now: float) -> None:
        """Fail active transactions older than ``max_txn_age_s`` so their state can go."""
        while self._active:
            oldest = next(iter(self._active.values()))
            if now - oldest.begin_time <= self.max_txn_age_s:
                break
            oldest.doomed = "too_old"
            self._fail(oldest, "too_old")
        self._collect()

    # -- internals -------------------------------------------------------------

    def _link_readers(self, w: TxnState, key: bytes) -> None:
        """Add ``R -rw-> w`` for every concurrent SIREAD holder R of ``key`` (w certifying)."""
        readers = self._readers.get(key)
        if readers:
            for r in readers:
                if r is not w and self._concurrent_reader(r, w):
                    r.out_edges.add(w)
                    w.in_edges.add(r)
        for r, ranges in self._range_readers.items():
            if r is not w and self._concurrent_reader(r, w) and any(
                _in_range(key, lo, hi) for lo, hi in ranges
            ):
                r.out_edges.add(w)
                w.in_edges.add(r)

    def _link_range_readers(self, w: TxnState, lo: bytes, hi: bytes) -> None:
        """Add ``R -rw-> w`` for every concurrent reader of a key or range in ``[lo, hi)``."""
        for key, readers in self._readers.items():
            if lo <= key < hi:
                for r in readers:
                    if r is not w and self._concurrent_reader(r, w):
                        r.out_edges.add(w)
                        w.in_edges.add(r)
        for r, ranges in self._range_readers.items():
            if r is not w and self._concurrent_reader(r, w) and any(
                _overlaps(lo, hi, a, b) for a, b in ranges
            ):
                r.out_edges.add(w)
                w.in_edges.add(r)

    @staticmethod
    def _concurrent_reader(r: TxnState, w: TxnState) -> bool:
        """Is reader ``r`` concurrent with ``w``, which is certifying right now?

        Yes if r is still running, if r certified after w began, or if r's
        writes are not in w's snapshot -- r may have certified before w began
        and still be PENDING (its WAL write or log entry in flight) then.
        """
        if r.status is Status.ABORTED:
            return False
        return (r.status is Status.ACTIVE or r.commit_stamp > w.begin_stamp
                or (r.commit_seq is not None and r.commit_seq > w.snapshot))

    def _read_edge(self, r: TxnState, w: TxnState) -> None:
        """``r`` (active, reading now) missed certified ``w``'s write: add ``r -rw-> w``.

        If that completes a dangerous structure, ``r`` is the victim either
        way -- it is the pivot, or it is T_in and the pivot ``w`` is already
        certified -- so it fails now.
        """
        if w in r.out_edges:
            return
        r.out_edges.add(w)
        w.in_edges.add(r)
        if any(self._dangerous(r, w, t_out) for t_out in w.out_edges) or any(
            self._dangerous(t_in, r, w) for t_in in r.in_edges
        ):
            self._fail(r, "dangerous_structure")
            raise SerializationFailure(
                "dangerous_structure",
                f"transaction {r.txn_id} read a key whose concurrent overwrite closes a "
                "cycle of rw-antidependencies")

    @staticmethod
    def _dangerous(t_in: TxnState, pivot: TxnState, t_out: TxnState) -> bool:
        """Is ``t_in -rw-> pivot -rw-> t_out`` a structure whose t_out committed first?"""
        if (t_out.status is Status.ABORTED or pivot.status is Status.ABORTED
                or t_in.status is Status.ABORTED):
            return False
        if not t_out.certified:
            return False
        if pivot.certified and pivot.commit_stamp < t_out.commit_stamp:
            return False
        if t_in.certified and t_in.commit_stamp < t_out.commit_stamp:
            return False
        read_only = t_in.read_only or (t_in.certified and not t_in.writes)
        if read_only and t_in is not t_out:
            return t_out.commit_seq is not None and t_out.commit_seq <= t_in.snapshot
        return True

    def _validate_reads(self, t: TxnState) -> None:
        """OCC backward validation: fail if a read was overwritten after the snapshot."""
        def newer(key: bytes) -> bool:
            return any(w is not t and w.commit_seq is not None and w.commit_seq > t.snapshot
                       for w in self._writers.get(key, ()))
        stale = next((k for k in t.reads if newer(k)), None)
        if stale is None:
            for lo, hi in t.ranges:
                stale = next((k for k in self._writers.irange(lo, hi, inclusive=(True, False))
                              if newer(k)), None)
                if stale is not None:
                    break
        if stale is None and self._range_writers:
            stale = next((k for k in t.reads if self._newer_range_writers(t, k, k + b"\x00")),
                         None)
            if stale is None and any(self._newer_range_writers(t, lo, hi) for lo, hi in t.ranges):
                stale = b"<a range deleted by a concurrent delete_range>"
        if stale is not None:
            self._fail(t, "stale_read")
            raise SerializationFailure(
                "stale_read", f"key {stale!r} was overwritten after the snapshot")

    def _fail(self, t: TxnState, reason: str) -> None:
        was_certified = t.certified
        t.status = Status.ABORTED
        if reason in SERIALIZATION_REASONS:
            self.aborts[reason] += 1
        else:
            self.rollbacks[reason] += 1
        if was_certified:
            self.commits -= 1
        self._active.pop(t.txn_id, None)
        self._forget(t)
        for other in t.out_edges:
            other.in_edges.discard(t)
        for other in t.in_edges:
            other.out_edges.discard(t)
        t.out_edges.clear()
        t.in_edges.clear()
        self._collect()

    def _forget(self, t: TxnState) -> None:
        """Remove ``t`` from the SIREAD and writer indexes."""
        for key in t.reads:
            readers = self._readers.get(key)
            if readers is not None:
                readers.discard(t)
                if not readers:
                    del self._readers[key]
        self._range_readers.pop(t, None)
        if t.range_writes:
            try:
                self._range_writers.remove(t)
            except ValueError:
                pass
        for key in t.writes:
            writers = self._writers.get(key)
            if writers is not None:
                try:
                    writers.remove(t)
                except ValueError:
                    pass
                if not writers:
                    del self._writers[key]

    def _collect(self) -> None:
        """Drop committed transactions no active transaction overlaps (invariant 2)."""
        finished = self._finished
        if not finished:
            return
        if self._active:
            oldest = next(iter(self._active.values()))
            min_stamp, min_snapshot = oldest.begin_stamp, oldest.snapshot
        else:
            min_stamp, min_snapshot = self._stamp + 1, 2**63
        while finished:
            t = finished[0]
            if t.status is Status.ABORTED:
                finished.popleft()
                continue
            if t.status is not Status.COMMITTED or t.commit_stamp > min_stamp:
                break
            if t.commit_seq is not None and t.commit_seq > min_snapshot:
                break
            finished.popleft()
            self._forget(t)
            # Neighbours still tracked keep their edges to t (t may yet be the
            # T_out of a structure through them); t's own edge sets are not
            # consulted again, so release them.
            t.in_edges.clear()
            t.out_edges.clear()
