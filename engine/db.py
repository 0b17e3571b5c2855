"""The Engine: the façade of the embedded store, and the map of the modules behind it.

Data flow::

    put/batch/commit --> commit pipeline --> WAL record (one per group) --> memtable --> visible
                         (engine/commit.py)                                   | full
                                                  immutable memtable --flush--> L0 table
                                                  (engine/background.py)        compaction
                                                                   L0 --> L1 --> ... Ln

Who owns what (each module's docstring has its invariants and lock rules):

* ``commit.py`` -- :class:`~engine.commit.CommitPipeline`: sequences, the
  writer queue, the WAL, group commit, publishing ``visible_seq``; it
  reaches the rest only through a :class:`~engine.commit.CommitEnv`.
* ``versions.py`` -- the current superversion, open tables, file numbers,
  the manifest, snapshot pins.
* ``reads.py`` -- lookups and scans over a superversion; ``Reader`` and
  ``Snapshot``.
* ``background.py`` -- flush and compaction threads, write stalls, memtable
  switches; ``tables.py`` builds and opens table files; ``obsolete.py``
  deletes every file the live set no longer needs.
* ``recovery.py`` -- from the files on disk to a recovered state.
* ``lifecycle.py`` -- open/closing/closed, the start-up (recovery, or a
  read-only view), the error that stopped writes, the one teardown behind
  ``close()`` and ``simulate_crash()``.
* ``local.py`` -- the transaction backend (certifier + pipeline).
* ``stats.py`` -- ``stats()``.

Locks: one engine mutex ``_mutex`` shared by all of them (held briefly,
never across I/O); ``Versions.manifest_lock`` and
``Background.compaction_lock`` are taken before it, never after. Readers
take no lock: they read ``visible_seq`` and then the superversion.

A read-only engine (``read_only=True``) has no threads, WAL, manifest writer
or LOCK: ``refresh()`` loads a new view under ``Lifecycle.refresh_lock`` and
publishes the sequence *before* the superversion (a reader between the two
sees the older view at the newer sequence: the older state, consistently).
Snapshots and transactions pin the view they began in (``Versions.pinned``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from engine.background import Background
from engine.batch import (
    BatchContext,
    Buffer,
    RangeEnd,
    SyncPolicy,
    WriteBatch,
    check_bound,
    check_entries,
    check_key,
    check_keys,
    check_value,
    scan_bounds,
)
from engine.block import Block
from engine.cache import LRUCache
from engine.commit import CommitEnv, CommitPipeline, Ops
from engine.encoding import FileKind as FileKind  # re-exported: engine.db.FileKind
from engine.encoding import file_name as file_name  # re-exported: engine.db.file_name
from engine.errors import ClosedError, InvalidArgument
from engine.fs import FileSystem, OSFileSystem
from engine.invariants import VerifyReport, verify_store
from engine.lifecycle import Lifecycle
from engine.local import LocalTransactions as _LocalTransactions
from engine.obsolete import ObsoleteFiles
from engine.options import Options
from engine.reads import Reader, Snapshot, SuperVersion, lookup, lookup_ranged
from engine.retry import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_RETRIES,
    run_with_retries,
)
from engine.ssi import Certifier, TxnState
from engine.sstable import Table, TableBuilder
from engine.stats import collect
from engine.tables import TableFiles
from engine.txn import Transaction
from engine.versions import Versions

__all__ = ["BatchContext", "Engine", "Snapshot"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Engine:
    """An embedded LSM key-value store in one directory. Thread-safe."""

    def __init__(self, path: str, options: Options | None = None,
                 fs: FileSystem | None = None, *, read_only: bool = False) -> None:
        if type(read_only) is not bool:
            raise TypeError(f"read_only must be True or False, got {type(read_only).__name__}")
        self.options = opts = (options or Options()).validate()
        self.path = path
        self._fs = fs = fs or OSFileSystem()
        self._read_only = read_only
        self._mutex = threading.Lock()
        self._stats: Counter[str] = Counter()
        self._cache: LRUCache[Block] = LRUCache(opts.block_cache_bytes)
        self._files = TableFiles(fs, path, opts, self._cache,
                                 make_builder=lambda number: self._new_builder(number))
        self._versions = v = Versions(fs, path, self._mutex, self._files,
                                      ObsoleteFiles(fs, path, self._cache), read_only=read_only)
        self._lifecycle = life = Lifecycle(path, self._mutex, v.changed, read_only=read_only)
        self._certifier = Certifier(opts.isolation, opts.max_txn_age_s)
        self._background = bg = Background(fs, path, opts, self._mutex, v, life, self._stats)
        env = CommitEnv(check_writable=life.check_writable, make_room=bg.make_room,
                        failed=life.stop_writes, stopped=lambda: life.error is not None)
        self._commit = CommitPipeline(fs, path, self._mutex, env, self._certifier, self._stats)
        self._reader = Reader(opts, v, life.check_open)
        self._sync = SyncPolicy(opts, read_only=read_only)  # what sync= means here
        self._transactions = _LocalTransactions(opts, self._mutex, self._certifier, self._reader,
                                                self._commit, v, life, self._sync.durable)
        life.start_up(fs, opts, self._files, self._commit, v, bg, self._stats)

    # -- internals the tests look at, under the names they had before the split -------------

    @property
    def _sv(self) -> SuperVersion:
        return self._versions.sv

    @property
    def _tables(self) -> dict[int, Table]:
        return self._versions.tables

    @property
    def _writers(self) -> deque[Any]:
        return self._commit.writers

    def _new_builder(self, number: int) -> TableBuilder:
        """The builder of every table this engine writes (a seam for fault-injection tests)."""
        return self._files.new_builder(number)

    def _switch_memtable(self) -> None:
        """Freeze the memtable as a full one would. Caller holds ``_mutex``."""
        self._background.switch_memtable()

    # ------------------------------------------------------------------ writes

    def put(self, key: Buffer, value: Buffer, *, sync: bool | None = None) -> None:
        """Set ``key`` to ``value``; durable when it returns (per ``Options.sync``).

        ``sync=True`` makes this write durable (fdatasync) before returning
        whatever the store's default, and with it every write acknowledged
        before it; ``sync=False`` only hands it to the OS (it survives
        ``kill -9``, maybe not a power cut). None: the store's ``sync`` option.
        """
        k = check_key(key, self.options)
        v = check_value(value, self.options)
        self._write({k: v}, len(k) + len(v), sync=self._sync.durable(sync), what="put")

    def delete(self, key: Buffer, *, sync: bool | None = None) -> None:
        """Remove ``key`` (a no-op if absent); durable when it returns (``sync=`` as in put)."""
        k = check_key(key, self.options)
        self._write({k: None}, len(k), sync=self._sync.durable(sync), what="delete")

    def delete_range(self, start: Buffer, end: Buffer, *, sync: bool | None = None) -> None:
        """Remove every key in ``[start, end)``, atomically, with one write (a range tombstone).

        O(1) writes whatever the range holds: one WAL record and one entry
        in the memtable, carried into tables by flushes and compactions,
        honoured by every read (gets, multi_get, scans, snapshots taken
        after it; a snapshot taken before still sees the keys) and dropped
        with the data it covers by a full ``compact()`` once no snapshot
        predates it. Durable like :meth:`put` (``sync=`` likewise). While
        transactions run, every key of the range counts as written by it,
        so a concurrent transaction that read one conflicts. ``start >= end``
        is InvalidArgument.
        """
        lo = check_bound(start, "start", self.options)
        hi = check_bound(end, "end", self.options)
        if not lo < hi:
            raise InvalidArgument(f"delete_range needs start < end, got {lo!r} >= {hi!r}")
        durable = self._sync.durable(sync)
        self._lifecycle.refuse_read_only("delete_range")
        self._versions.range_deletes = True  # before the write can become visible
        self._write({lo: RangeEnd(hi)}, len(lo) + len(hi), sync=durable, what="delete_range")

    def batch(self, *, sync: bool | None = None) -> BatchContext:
        """A batch to fill inside ``with``; written atomically when the block exits cleanly.

        ``sync=`` overrides the store's default for this batch (see :meth:`put`).
        """
        if sync is not None:
            self._sync.check(sync)
        self._lifecycle.refuse_read_only("batch")
        self._lifecycle.check_open()
        return BatchContext(self.options, lambda b, s: self.write(b, sync=s), sync)

    def write(self, batch: WriteBatch, *, sync: bool | None = None) -> None:
        """Apply every operation of ``batch`` atomically (``sync=`` as in :meth:`put`)."""
        if not isinstance(batch, WriteBatch):
            raise TypeError(f"batch must be a WriteBatch, got {type(batch).__name__}")
        durable = self._sync.durable(sync)
        self._lifecycle.refuse_read_only("write")
        if batch.ops:
            self._write(dict(batch.ops), batch.byte_size, sync=durable, what="write")

    def sync(self) -> None:
        """Make every write acknowledged so far durable (one fdatasync of the WAL).

        Goes through the writer queue like a write, so it also covers the
        writes queued ahead of it, and it syncs older WAL segments that
        still hold unsynced records. With ``wal=False`` it flushes the
        memtables to tables instead.
        """
        self._lifecycle.refuse_read_only("sync")
        if self._commit.wal is None:
            self.flush()
            return
        self._commit.commit([], 0, None, sync=True, what="sync")

    def apply(self, batch: WriteBatch, sequence: int) -> bool:
        """Apply ``batch`` at ``sequence`` chosen by the caller (a replication log index).

        Idempotent: a sequence <= :attr:`last_sequence` is ignored and
        ``False`` returned. Sequences may skip numbers. The last applied
        sequence survives restart, even for an empty batch.
        """
        return self.apply_many([(sequence, batch)]) != 0

    def apply_many(self, entries: Sequence[tuple[int, WriteBatch]]) -> int:
        """Apply several (sequence, batch) pairs, in order, with one WAL write.

        Each batch keeps its own sequence and its atomicity; pairs at or below
        :attr:`last_sequence` are skipped. Returns the last sequence applied
        (0 if every pair was skipped). A replica's applier uses it to apply a
        run of committed log entries at once.
        """
        items, nbytes = check_entries(entries)
        return self._commit.commit(items, nbytes, None, sync=self._sync.default, what="apply")

    def _write(self, ops: Ops, nbytes: int, *, txn: TxnState | None = None,
               sync: bool, what: str = "write") -> int:
        """Write ``ops`` as one batch at the next sequence; return that sequence."""
        return self._commit.commit([(None, ops)], nbytes, txn, sync=sync, what=what)

    # ------------------------------------------------------------------ reads

    def get(self, key: Buffer) -> bytes | None:
        """The current value of ``key``, or None."""
        if type(key) is not bytes or len(key) > self.options.max_key_bytes:
            key = check_key(key, self.options)
        if self._lifecycle.closed:
            raise ClosedError(f"engine at {self.path} is closed")
        seq = self._commit.visible_seq  # before the superversion (engine/reads.py)
        v = self._versions
        if v.range_deletes:
            return lookup_ranged(v.sv, key, seq)
        return lookup(v.sv, key, seq)

    def multi_get(self, keys: Iterable[Buffer]) -> list[bytes | None]:
        """The current values of ``keys``, in the order given (None where absent).

        All keys are read at one sequence -- a consistent view, as if taken
        from one snapshot -- and duplicates are allowed. The distinct keys are
        sorted and each memtable, level and table is visited once per call,
        each table's filter probed and each data block fetched once per batch
        (RocksDB's MultiGet): that saves per-call work, not per-key work
        (measured about 1.1x a loop of :meth:`get`; README, Performance).
        Every key is checked before anything is read: a bad one raises
        TypeError or InvalidArgument naming its position (``keys[i]``).
        """
        ks = check_keys(keys, self.options)
        return self._reader.get_many_at(ks, self._commit.visible_seq)

    def scan(self, start: Buffer | None = None, end: Buffer | None = None, *,
             reverse: bool = False, prefix: Buffer | None = None
             ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``start <= key < end`` in key order (descending if reverse).

        ``prefix=p`` instead scans the keys that start with ``p``: the range
        ``[p, successor(p))``, where the successor drops trailing 0xff bytes
        and increments the last byte (a prefix of only 0xff bytes has no
        upper bound). Giving ``prefix`` with ``start`` or ``end`` raises
        InvalidArgument. The iterator reads a consistent view as of the
        call, whatever is written meanwhile.
        """
        lo, hi = scan_bounds(start, end, prefix, self.options)
        self._lifecycle.check_open()
        return self._reader.scan_at(lo, hi, reverse, self._commit.visible_seq)

    def snapshot(self) -> Snapshot:
        """Pin the current state for consistent reads until released."""
        with self._mutex:
            self._lifecycle.check_open()
            seq = self._commit.visible_seq
            self._versions.pin(seq)
        return Snapshot(self._reader, seq, self._versions.unpin)

    @property
    def last_sequence(self) -> int:
        """Sequence number of the newest visible write (the last applied index)."""
        return self._commit.visible_seq

    @property
    def persisted_sequence(self) -> int:
        """Every write up to this sequence survives a power failure.

        With ``sync="always"`` that is every acknowledged write (unless some
        were written with ``sync=False``); with ``sync="none"`` it is the last
        synced write (``sync=True``, :meth:`sync`) or what flushes have put
        into synced tables; with ``wal=False`` only the latter. A replica may
        forget log entries up to here, not beyond.
        """
        if self.options.wal:
            return max(self._commit.synced_seq, self._versions.manifest_last_seq)
        return self._versions.manifest_last_seq

    def refresh(self) -> None:
        """Catch a read-only engine up with what the writer has handed to the OS.

        Re-reads the manifest, opens new tables and replays the WAL into a
        new memtable, then switches to the new view; snapshots and
        transactions already open keep reading the view they started with.
        Tables the writer has deleted since stay readable through the file
        descriptors held open for older views until those are released
        (POSIX unlink semantics). Only for engines opened ``read_only=True``.
        """
        if not self._read_only:
            raise InvalidArgument("refresh() is for engines opened read_only=True; a writable "
                                  "engine always reads its latest state")
        self._lifecycle.check_open()
        self._lifecycle.load_view(self._fs, self.options, self._files, self._commit,
                                  self._versions, self._stats)

    # ------------------------------------------------------------------ transactions

    def begin(self, *, read_only: bool = False, sync: bool | None = None) -> Transaction:
        """Start a transaction reading the current state (see :class:`engine.txn.Transaction`).

        ``read_only=True`` forbids writes and lets the certifier use the
        read-only refinement, which aborts fewer transactions. ``sync=``
        overrides the store's durability for its commit (see :meth:`put`).
        It starts after every commit already certified (at most one group
        commit away), so it does not read around them.
        """
        if sync is not None:
            self._sync.check(sync)
        state = self._transactions.begin(read_only=read_only)
        return Transaction(self._transactions, state, sync=sync)

    def transaction(self, *, read_only: bool = False, sync: bool | None = None) -> Transaction:
        """A transaction as a context manager: commits on clean exit, rolls back otherwise.

        ``sync=`` overrides the store's durability for the commit (see :meth:`put`).
        """
        return self.begin(read_only=read_only, sync=sync)

    def run_transaction(self, fn: Callable[[Transaction], T], *,
                        max_retries: int = DEFAULT_MAX_RETRIES,
                        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
                        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
                        read_only: bool = False) -> T:
        """Run ``fn(tx)`` and commit, retrying SerializationFailure with jittered backoff.

        The loop is :func:`engine.retry.run_with_retries`: at most
        ``max_retries`` retries (default ``DEFAULT_MAX_RETRIES``, 30), each
        after a random wait of up to ``min(backoff_max, backoff_base *
        2**retry)`` seconds; then the last SerializationFailure is
        re-raised. Any other exception rolls back and propagates at once.
        """
        return run_with_retries(lambda: self.begin(read_only=read_only), fn,
                                max_retries=max_retries, backoff_base_s=backoff_base,
                                backoff_max_s=backoff_max)

    # ------------------------------------------------------------------ maintenance

    def flush(self) -> None:
        """Write the memtable to a table and wait until every memtable is flushed."""
        with self._mutex:
            self._lifecycle.check_writable("flush")
            self._background.flush_locked()

    def compact(self) -> None:
        """Flush, compact every level down, then rewrite the bottom level if it holds garbage.

        Afterwards each key lives in one level, and with no snapshot held no
        tombstone or overwritten version is left.
        """
        self._lifecycle.refuse_read_only("compact")
        self.flush()
        self._background.compact_all()

    def checkpoint(self, dest: str) -> int:
        """Write a consistent copy of the store into the new or empty directory ``dest``.

        Flushes the memtable, then hard-links (or copies) every live table
        and writes a manifest naming them. Returns the checkpoint's last
        sequence: the copy holds exactly the writes up to it. Used to bring
        a replica that fell behind the replication log back in one step.
        """
        self._lifecycle.refuse_read_only("checkpoint")
        self.flush()
        with self._background.compaction_lock:
            return self._versions.checkpoint(dest)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, every key always present (zero until something happens).

        Counters since open (ints):

        * ``writes``, ``write_groups``, ``user_bytes_written`` -- batches
          committed, WAL records (group commits) they took, key+value bytes;
        * ``wal_syncs`` -- write groups made durable with a sync (all of them
          with ``sync="always"``; only those with a ``sync=True`` write, or
          ``sync()`` calls, otherwise);
        * ``wal_batches_replayed`` -- batches recovered from the WAL by open;
        * ``stall_l0_slowdown``, ``stall_l0_stop``, ``stall_memtable`` --
          writes delayed 1 ms by L0 files, stopped by L0 files, stopped by
          memtables waiting to flush;
        * ``flushes``, ``bytes_flushed`` -- memtables written to L0 tables;
        * ``compactions``, ``trivial_moves``, ``bytes_compacted_in``,
          ``bytes_compacted_out`` -- (``bytes_flushed + bytes_compacted_out``
          over ``user_bytes_written`` is the write amplification);
        * ``block_cache_hits``, ``block_cache_misses``, ``block_cache_rejected``
          (a miss not admitted by the full cache, NOTES.md);
        * ``txn_commits``; ``txn_aborts`` -- a dict with every
          :class:`SerializationFailure` reason as a key; ``txn_rollbacks`` -- a
          dict with ``rollback`` (explicit or on exception), ``refused``
          (commit refused before certification: engine closed or read-only)
          and ``storage_error`` always present, plus any reason a replicated
          node adds (``lost``, ``not_submitted``).

        Sizes now: ``last_sequence``, ``memtable_bytes`` (estimated heap),
        ``immutable_memtables``, ``levels`` (per level ``files`` and
        ``bytes``), ``table_bytes``, ``snapshots`` (open snapshots),
        ``block_cache_bytes``, ``table_index_filter_bytes`` (index and filters
        held in memory), ``certifier`` (sizes of the SSI state), and
        ``background_error`` (the message of the failure that stopped writes,
        or None), ``read_only`` (opened with ``read_only=True``).
        """
        v = self._versions
        with self._mutex:
            return collect(self._stats, last_sequence=self._commit.visible_seq, sv=v.sv,
                           snapshots=v.snapshots, tables=v.tables, cache=self._cache,
                           certifier=self._certifier, error=self._lifecycle.error,
                           read_only=self._read_only)

    def verify(self) -> VerifyReport:
        """Read and check every table block, the WAL and the manifest; return a report."""
        self._lifecycle.check_open()
        with self._background.compaction_lock:  # no table is deleted while it is re-read
            tables, log_number = self._versions.live_tables()
            return verify_store(self._fs, self.path, tables, self.options.num_levels, log_number)

    def close(self) -> None:
        """Finish queued writes, stop background work, sync the WAL, release the directory."""
        self._teardown(crash=False)

    def simulate_crash(self) -> None:
        """Drop the engine as a killed process would: for tests and simulated clusters.

        No flush, no sync, no waiting for queued writes (they fail with
        ClosedError): what was written to the WAL is on disk as the OS has it,
        the memtable is gone. Background work stops after its current step, and
        the directory is released so the store can be reopened in-process.
        """
        self._teardown(crash=True)

    def _teardown(self, *, crash: bool) -> None:
        """The one teardown (engine/lifecycle.py) behind close() and simulate_crash()."""
        if self._read_only:
            self._lifecycle.close_read_only(self._versions)
            return
        self._lifecycle.shut_down(crash=crash, pipeline=self._commit,
                                  background=self._background, versions=self._versions)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Engine {self.path!r} seq={self._commit.visible_seq}>"
