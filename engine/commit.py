"""The commit pipeline: sequence allocation, certification, WAL group write, memtable, publish.

Every write of the engine -- ``put``, ``delete``, ``batch``, a transaction's
commit, a replica's ``apply_many``, ``sync()`` -- is :meth:`CommitPipeline.commit`.
The pipeline knows the WAL, the writer queue and the sequences; the rest of
the engine reaches it only through a :class:`CommitEnv` of callbacks
(Pebble's ``commitPipeline`` and ``commitEnv``, ``commit.go``)::

    commit(batches) --under _mutex--> allocate sequences, certify (txn) or
        |                             register (blind write), queue a writer
        v
    head of the queue = group leader --env.make_room()--> memtable with room
        |  takes every queued writer up to 1 MiB, releases _mutex
        v
    one WAL record for the group (+ one sync if any member asked for it)
        v
    memtable insert --under _mutex--> publish visible_seq, settle the
        certifier, wake the group and the next leader

Lock rules: ``_mutex`` is the engine's one mutex (passed in). It guards
``writers``, ``last_seq``, ``visible_seq``, ``synced_seq``, ``wal`` and
``unsynced_wals``; it is held briefly, never across WAL I/O. Only the group
leader writes the WAL and the active memtable. ``idle`` is notified when
the queue empties, ``visible`` when ``visible_seq`` moves or writes stop.

Invariants:

1. Sequences are allocated in queue order, under ``_mutex``; WAL order,
   memtable order and visibility order equal allocation order. A
   transaction is certified in the critical section that allocates its
   sequence, so certification order is sequence order (ssi.py invariant 1).
2. A write is acknowledged only after its WAL record was written (and
   synced if it asked for it). A group holding any such write is synced as
   a whole; before a synced group, closed WAL segments still holding
   unsynced records (``unsynced_wals``) are synced first, so a durable write
   always has a durable past (``synced_seq`` is the last durable sequence).
3. ``visible_seq`` moves only after every batch up to it is in the
   memtable; a reader reads it before the superversion (engine/reads.py).
4. If the WAL write fails, the whole group fails, its transactions are
   aborted (``storage_error``) and ``env.failed`` stops all later writes:
   after a failed sync nobody can say what reached the disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.batch import range_of
from engine.encoding import FileKind
from engine.errors import EngineError, StorageError
from engine.fs import FileSystem
from engine.logfile import LogFile
from engine.memtable import MemTable
from engine.ssi import BlindWrite, BlindWrites, Certifier, TxnState
from engine.wal import encode_group

__all__ = ["CommitEnv", "CommitPipeline", "Ops"]

log = logging.getLogger(__name__)

_MAX_GROUP_BYTES = 1 << 20

Ops = dict[bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class CommitEnv:
    """What the pipeline needs from the rest of the engine. Every callback: caller holds _mutex.

    * ``check_writable(what)`` -- raise if writes are refused now (closed,
      read-only, stopped by an error); ``what`` names the operation.
    * ``make_room()`` -- called by a group leader: return the memtable the
      group inserts into, after switching to a new one (``rotate_wal``) or
      stalling if the current one is full; raise to fail the group.
    * ``failed(error)`` -- a WAL write failed: stop every later write.
    * ``stopped()`` -- writes were stopped by an error (``begin`` waits no
      longer for certified commits to become visible).
    """

    check_writable: Callable[[str], None]
    make_room: Callable[[], MemTable]
    failed: Callable[[EngineError], None]
    stopped: Callable[[], bool]


class _Writer:
    """A queued write: one or more (sequence, ops) batches, and what the certifier must settle.

    ``states`` is a transaction's certifier state, ``blind`` the handles of
    its batches as blind writes (:class:`engine.ssi.BlindWrites`); the group
    that writes it settles both under ``_mutex``.
    """

    __slots__ = ("batches", "blind", "cv", "done", "error", "nbytes", "states", "sync")

    def __init__(self, nbytes: int, cv: threading.Condition, sync: bool) -> None:
        self.batches: list[tuple[int, Ops]] = []
        self.nbytes = nbytes
        self.cv = cv
        self.sync = sync  # the group that writes this one must fsync
        self.states: list[TxnState] = []
        self.blind: list[BlindWrite] = []
        self.done = False
        self.error: BaseException | None = None


class _Group:
    """What a leader writes for its group, gathered under _mutex and written outside it."""

    __slots__ = ("batches", "mem", "older", "size", "sync", "synced_to", "wal", "writers")

    def __init__(self, writers: list[_Writer], size: int, sync: bool, mem: MemTable,
                 wal: LogFile | None, older: list[tuple[int, str]], synced_to: int) -> None:
        self.writers = writers
        self.batches = [b for w in writers for b in w.batches]
        self.size = size
        self.sync = sync
        self.mem = mem
        self.wal = wal
        self.older = older  # closed segments to sync first (invariant 2)
        self.synced_to = synced_to


class CommitPipeline:
    """The engine's write path (module docstring); sequences and WAL state are its fields."""

    __slots__ = ("_blind", "_certifier", "_env", "_fs", "_mutex", "_stats", "idle",
                 "last_seq", "path", "synced_seq", "unsynced_wals", "visible", "visible_seq",
                 "wal", "writers")

    def __init__(self, fs: FileSystem, path: str, mutex: threading.Lock, env: CommitEnv,
                 certifier: Certifier, stats: Counter[str]) -> None:
        self._fs = fs
        self.path = path
        self._mutex = mutex
        self._env = env
        self._certifier = certifier
        self._blind = BlindWrites(certifier)  # writes outside transactions (_mutex)
        self._stats = stats
        self.writers: deque[_Writer] = deque()
        self.idle = threading.Condition(mutex)  # the writer queue became empty
        self.visible = threading.Condition(mutex)  # visible_seq moved, or writes stopped
        self.last_seq = self.visible_seq = self.synced_seq = 0
        self.wal: LogFile | None = None
        # Closed WAL segments holding records written without a sync: a synced
        # write syncs them first, so that it never survives a crash that
        # loses an earlier write (a durable write implies a durable prefix).
        self.unsynced_wals: list[tuple[int, str]] = []

    @property
    def blind_writes(self) -> BlindWrites:
        """The registry of writes outside transactions (``begin`` records what it cannot see)."""
        return self._blind

    def reset(self, last_seq: int) -> None:
        """Every write up to ``last_seq`` is applied and durable (recovery, refresh). Holds _mutex
        or runs before any thread."""
        self.last_seq = self.visible_seq = self.synced_seq = last_seq

    # -- the write --------------------------------------------------------------------------

    def commit(self, items: list[tuple[int | None, Ops]], nbytes: int, txn: TxnState | None,
               *, sync: bool, what: str = "write") -> int:
        """Queue batches (None: next sequence), group-commit, return the last sequence or 0.

        With ``txn`` (one item), the transaction is certified in the same
        critical section that allocates its sequence. With ``sync`` the group
        that writes these batches fsyncs. No items at all is a sync barrier
        (``Engine.sync``): it joins a group like a write and makes it sync.
        A batch whose caller-chosen sequence is <= ``last_seq`` is skipped
        (idempotent replay); if all are, nothing is queued and 0 returned.
        """
        w = _Writer(nbytes, threading.Condition(self._mutex), sync)
        with self._mutex:
            self._env.check_writable(what)
            last = self._allocate(w, items, txn)
            if not w.batches and items:
                return 0
            self.writers.append(w)
            while not w.done and self.writers[0] is not w:
                w.cv.wait()
            if w.done:  # a leader wrote it for us
                if w.error is not None:
                    raise w.error
                return last
            try:
                mem = self._env.make_room()
            except BaseException as exc:
                self._finish([w], exc)
                raise
            group = self._gather(w, mem)
        error = self._write(group)
        with self._mutex:
            self._publish(group, error)
        if error is not None:
            raise error
        return last

    def _allocate(self, w: _Writer, items: list[tuple[int | None, Ops]],
                  txn: TxnState | None) -> int:
        """Give ``w``'s batches their sequences and certify or register them. Holds _mutex."""
        now = time.monotonic()
        last = self.last_seq
        for sequence, ops in items:
            if sequence is not None and sequence <= last:
                continue  # already applied: idempotent replay
            seq = last + 1 if sequence is None else sequence
            if txn is not None:
                self._certifier.certify(txn, ops, seq, now)
                w.states.append(txn)
            elif ops:
                rng = range_of(ops)
                w.blind.append(self._blind.submit(seq, ops, now) if rng is None
                               else self._blind.submit(seq, (), now, ranges=(rng,)))
            w.batches.append((seq, ops))
            last = seq
        self.last_seq = last
        return last

    def _gather(self, leader: _Writer, mem: MemTable) -> _Group:
        """The leader's group: it and the writers queued behind it, up to 1 MiB. Holds _mutex."""
        writers = [leader]
        size = leader.nbytes
        sync = leader.sync
        for other in self.writers:
            if other is leader:
                continue
            if size + other.nbytes > _MAX_GROUP_BYTES:
                break
            writers.append(other)
            size += other.nbytes
            sync = sync or other.sync  # one synced member makes the whole group sync
        older: list[tuple[int, str]] = []
        if sync and self.unsynced_wals:
            older, self.unsynced_wals = self.unsynced_wals, []
        return _Group(writers, size, sync, mem, self.wal, older, self.visible_seq)

    def _write(self, group: _Group) -> EngineError | None:
        """Write the group's WAL record (and sync), then fill the memtable. Leader, no mutex."""
        wal = group.wal
        try:
            if wal is not None:
                if group.older:
                    self.sync_segments(group.older)
                if group.batches:
                    wal.append(encode_group(group.batches), sync=group.sync)
                elif group.sync:
                    wal.sync()
        except OSError as exc:
            return StorageError(f"writing {wal.path if wal else 'WAL'} failed: {exc}")
        add = group.mem.add
        for seq, ops in group.batches:
            add(seq, ops)
        return None

    def _publish(self, group: _Group, error: EngineError | None) -> None:
        """Make the group visible (or fail it), settle its certifier states. Holds _mutex."""
        if error is not None:
            log.error("%s: %s; the engine is now read-only", self.path, error)
            self._env.failed(error)
            self.visible.notify_all()
        else:
            if group.batches:
                self.visible_seq = group.batches[-1][0]
                self.visible.notify_all()
                self._stats["writes"] += len(group.batches)
                self._stats["write_groups"] += 1
                self._stats["user_bytes_written"] += group.size
            if group.sync and group.wal is not None:
                self.synced_seq = max(self.synced_seq, self.visible_seq
                                      if group.batches else group.synced_to)
                self._stats["wal_syncs"] += 1
        self._finish(group.writers, error)

    def _finish(self, group: list[_Writer], error: BaseException | None) -> None:
        """Mark ``group`` (the head of the queue) done and wake its members. Holds _mutex."""
        for x in group:
            x.done = True
            x.error = error
            self.writers.popleft()
            for state in x.states:
                if error is None:
                    self._certifier.committed(state)
                else:
                    self._certifier.abort(state, "storage_error")
            for blind in x.blind:  # visible now (visible_seq is published), or lost
                self._blind.settle(blind, error is None, reason="storage_error")
            x.cv.notify()
        if self.writers:
            self.writers[0].cv.notify()
        else:
            self.idle.notify_all()

    # -- waiting ----------------------------------------------------------------------------

    def wait_idle(self) -> None:
        """Wait until no write is queued or being written. Holds _mutex."""
        while self.writers:
            self.idle.wait()

    def wait_certified(self) -> int:
        """Wait until every certified write is visible (or writes stopped); the visible sequence.

        Commits already certified are waiting only for their WAL write: a new
        transaction starts after them (at most one group commit), or it would
        read around them and conflict with them. Holds _mutex.
        """
        target = self.last_seq
        while self.visible_seq < target and not self._env.stopped():
            self.visible.wait()
        return self.visible_seq

    # -- WAL segments -----------------------------------------------------------------------

    def open_wal(self, number: int) -> None:
        """Start WAL segment ``number`` (open, before any write)."""
        self.wal = LogFile(self._fs, self.path, FileKind.WAL, number)

    def rotate_wal(self, number: int) -> None:
        """Start WAL segment ``number`` for a new memtable. Holds _mutex (no leader is writing).

        The closed segment is remembered if it holds unsynced records
        (invariant 2). Failing to create the segment stops writes.
        """
        old = self.wal
        if old is None:
            return
        try:
            self.wal = LogFile(self._fs, self.path, FileKind.WAL, number)
        except OSError as exc:
            error = StorageError(f"creating WAL segment {number} failed: {exc}")
            self._env.failed(error)
            raise error from exc
        try:
            old.close()
        except OSError as exc:
            log.warning("%s: closing %s: %s", self.path, old.path, exc)
        if old.unsynced:
            self.unsynced_wals.append((old.number, old.path))

    def forget_segments_below(self, log_number: int) -> None:
        """Segments below ``log_number`` are about to be deleted: no sync needed. Holds _mutex."""
        self.unsynced_wals = [s for s in self.unsynced_wals if s[0] >= log_number]

    def sync_segments(self, segments: list[tuple[int, str]]) -> None:
        """Sync closed WAL segments that hold unsynced records. Group leader, no mutex.

        A segment already deleted was flushed into a synced table: nothing to do.
        """
        for _, seg_path in segments:
            try:
                f = self._fs.open_append(seg_path)
            except FileNotFoundError:
                continue
            try:
                f.sync()
            finally:
                f.close()

    def close_wal(self, *, sync: bool) -> None:
        """Close the WAL at shutdown; with ``sync``, make every record durable first.

        Runs after the queue drained and no thread writes any more. A sync
        failure is logged, not raised: close must still release the store.
        """
        wal = self.wal
        if wal is None:
            return
        if not sync:
            wal.close()
            return
        try:
            self.sync_segments(self.unsynced_wals)
            self.unsynced_wals = []
            wal.sync()
            wal.close()
        except OSError as exc:
            log.error("%s: syncing the WAL on close failed: %s", self.path, exc)
