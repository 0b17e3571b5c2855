"""The Engine: recovery, the write path (group commit), the read paths, background work.

Data flow::

    put/batch/commit --> writer queue --> WAL record (one per group) --> memtable --> visible
                                                                           | full
                                                           immutable memtable --flush--> L0 table
                                                                                  compaction
                                                                           L0 --> L1 --> ... Ln

Threads and locks:

* ``_mutex`` guards the writer queue, sequence allocation, the certifier,
  snapshots, file-number allocation and the swap of ``_sv``. Held briefly,
  never across WAL I/O.
* The writer at the head of the queue is the *leader*: it takes every queued
  batch, writes them as one WAL record with one sync outside the mutex,
  inserts them into the memtable, then publishes ``_visible_seq`` and wakes
  the others (LevelDB's writer queue). Only the leader writes the WAL and
  the active memtable.
* ``_manifest_lock`` serialises installing a new version (manifest edit +
  ``_sv`` swap); the flush thread and the compaction thread take it, always
  before ``_mutex``.
* Readers take no lock: they read ``_visible_seq`` and then ``_sv`` (an
  immutable bundle of memtable, immutable memtables and tables), in that
  order, and filter by sequence -- every entry with a sequence <= the
  visible one is in that bundle, and a batch is either wholly visible or not.
* A read-only engine (``read_only=True``) has no threads, WAL, manifest
  writer or LOCK: ``refresh()`` loads a new view under ``_refresh_lock`` and
  publishes ``_visible_seq`` *before* ``_sv`` (a reader between the two sees
  the older view at the newer sequence: the older state, consistently).
  Snapshots and transactions pin the view they began in (``_ro_svs``), as
  the writer's compactions know nothing of them.

Invariants:

1. Sequences are allocated in queue order, under ``_mutex``; WAL order,
   memtable order and visibility order equal allocation order.
2. A write is acknowledged only after its WAL record was written (and synced
   if it asked for it: ``sync=True``, or the default ``sync="always"``). A
   group holding any such write is synced as a whole; before a synced
   group, closed WAL segments still holding unsynced records
   (``_unsynced_wals``) are synced first, so a durable write always has a
   durable past (``_synced_seq`` is the last durable sequence).
3. A WAL segment is deleted only after the manifest durably records a table
   holding all of its batches (``log_number`` moved past it).
4. A table file is deleted only after the manifest no longer references it;
   readers holding an old version keep its open file.
5. A range tombstone (``delete_range``) hides, at every sequence >= its own,
   every older version of its keys in every source; reads honour the
   tombstones of the whole superversion once ``_range_deletes`` is set, and
   only a compaction of every table into the bottom level may drop one (with
   the versions it hides), once no snapshot predates it.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from engine import compaction
from engine.batch import (
    Buffer,
    RangeEnd,
    WriteBatch,
    check_bound,
    check_key,
    check_keys,
    check_sync,
    check_value,
    range_of,
    scan_bounds,
)
from engine.block import Block
from engine.bloom import key_hash, key_hashes
from engine.cache import LRUCache
from engine.encoding import CLUSTER_DESCRIPTOR, FileKind, file_name, parse_file_name
from engine.errors import (
    ClosedError,
    CorruptionError,
    EngineError,
    InvalidArgument,
    ReadOnlyError,
    StorageError,
)
from engine.fs import FileSystem, OSFileSystem
from engine.invariants import VerifyReport, check_table, verify_store
from engine.iterators import Cursor, LevelCursor, MemCursor, scan_items
from engine.logfile import LogFile
from engine.manifest import CURRENT, Manifest, RecoveredState, is_current_temp
from engine.memtable import Entry, MemTable
from engine.options import Options
from engine.retry import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_RETRIES,
    run_with_retries,
)
from engine.ssi import SERIALIZATION_REASONS, BlindWrite, BlindWrites, Certifier, TxnState
from engine.sstable import Table, TableBuilder, TableProperties
from engine.txn import Transaction
from engine.version import FileMeta, Version, VersionEdit
from engine.wal import encode_group, replay

__all__ = ["Engine", "Snapshot"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The counters of stats() (Engine.stats documents them); all start at zero.
STATS_COUNTERS = (
    "writes", "write_groups", "user_bytes_written", "wal_syncs", "wal_batches_replayed",
    "stall_l0_slowdown", "stall_l0_stop", "stall_memtable", "flushes", "bytes_flushed",
    "compactions", "trivial_moves", "bytes_compacted_in", "bytes_compacted_out",
)
_ROLLBACK_REASONS = ("rollback", "refused", "storage_error")

_MAX_GROUP_BYTES = 1 << 20
_READ_ONLY_ATTEMPTS = 20
_MAX_MANIFEST_BYTES = 4 << 20


Ops = dict[bytes, bytes | None]


class _StoreChanged(Exception):
    """A read-only load raced with the writer; load again."""


class _Writer:
    """A queued write: one or more (sequence, ops) batches, and what the certifier must settle.

    ``states`` is a transaction's certifier state, ``blind`` the handles of
    its batches as blind writes (:class:`engine.ssi.BlindWrites`); the group
    that writes it settles both under ``_mutex``.
    """

    __slots__ = ("batches", "blind", "cv", "done", "error", "nbytes", "states", "sync")

    def __init__(self, batches: list[tuple[int, Ops]], nbytes: int,
                 cv: threading.Condition, sync: bool) -> None:
        self.batches = batches
        self.nbytes = nbytes
        self.cv = cv
        self.sync = sync  # the group that writes this one must fsync
        self.states: list[TxnState] = []
        self.blind: list[BlindWrite] = []
        self.done = False
        self.error: BaseException | None = None


class _SuperVersion:
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
        self.rts = tuple(rt for imm in imms for rt in imm.range_tombstones) + tuple(
            rt for _, f in version.files() for rt in tables[f.number].props.range_tombstones)


def _meta(p: TableProperties) -> FileMeta:
    return FileMeta(p.number, p.file_size, p.smallest, p.largest, p.min_seq, p.max_seq,
                    p.entries)


class _LocalTransactions:
    """The transaction backend of a standalone engine: its certifier, its WAL.

    Certification happens under the engine mutex, in the same critical
    section that queues the commit's batch, so certification order is
    sequence order (ssi.py invariant 1).
    """

    __slots__ = ("_engine", "options")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.options = engine.options

    def read(self, state: TxnState, key: bytes) -> bytes | None:
        e = self._engine
        with e._mutex:
            e._certifier.on_read(state, key, time.monotonic())
        return e._get_at(key, state.snapshot)

    def read_many(self, state: TxnState, keys: list[bytes]) -> list[bytes | None]:
        e = self._engine
        with e._mutex:
            now = time.monotonic()
            for key in keys:
                e._certifier.on_read(state, key, now)
        return e._get_many_at(keys, state.snapshot)

    def scan(self, state: TxnState, lo: bytes | None, hi: bytes | None, reverse: bool
             ) -> Iterator[tuple[bytes, bytes]]:
        e = self._engine
        with e._mutex:
            e._certifier.on_scan(state, lo, hi, time.monotonic())
        return e._scan_at(lo, hi, reverse, state.snapshot)

    def commit(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int
               ) -> int | None:
        return self.commit_sync(state, ops, nbytes, None)

    def commit_sync(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int,
                    sync: bool | None) -> int | None:
        """:meth:`commit` with a per-commit ``sync=`` (None: the store's default)."""
        e = self._engine
        try:
            if ops:
                durable = e._default_sync if sync is None else e._sync_arg(sync)
                return e._write(ops, nbytes, txn=state, sync=durable, what="commit")
            with e._mutex:
                e._certifier.commit_empty(state, time.monotonic())
            return None
        except BaseException:
            # Refused before certification (closed or read-only engine): forget
            # it, or it would pin the certifier's state. A no-op if it failed later.
            with e._mutex:
                e._certifier.abort(state, "refused")
            raise
        finally:
            e._release_snapshot(state.snapshot)

    def rollback(self, state: TxnState) -> None:
        e = self._engine
        with e._mutex:
            e._certifier.abort(state)
        e._release_snapshot(state.snapshot)


class Snapshot:
    """A consistent, read-only view of the store at one sequence number.

    Holding a snapshot keeps compaction from discarding the versions it sees;
    release it (or use it as a context manager) when done.
    """

    __slots__ = ("_engine", "_released", "sequence")

    def __init__(self, engine: Engine, sequence: int) -> None:
        self._engine = engine
        self.sequence = sequence
        self._released = False

    def get(self, key: Buffer) -> bytes | None:
        self._check()
        return self._engine._get_at(check_key(key, self._engine.options), self.sequence)

    def multi_get(self, keys: Iterable[Buffer]) -> list[bytes | None]:
        """The values of ``keys`` in this snapshot, in order (see :meth:`Engine.multi_get`)."""
        ks = check_keys(keys, self._engine.options)
        self._check()
        return self._engine._get_many_at(ks, self.sequence)

    def scan(self, start: Buffer | None = None, end: Buffer | None = None, *,
             reverse: bool = False, prefix: Buffer | None = None
             ) -> Iterator[tuple[bytes, bytes]]:
        """The snapshot's pairs in ``[start, end)`` or with ``prefix`` (see :meth:`Engine.scan`)."""
        lo, hi = scan_bounds(start, end, prefix, self._engine.options)
        self._check()
        return self._engine._scan_at(lo, hi, reverse, self.sequence)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._release_snapshot(self.sequence)

    def _check(self) -> None:
        if self._released:
            raise ClosedError("snapshot was released")

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class BatchContext(WriteBatch):
    """``with db.batch() as b:`` -- a WriteBatch written atomically on clean exit."""

    __slots__ = ("_engine", "_sync")

    def __init__(self, engine: Engine, sync: bool | None = None) -> None:
        super().__init__(engine.options)
        self._engine = engine
        self._sync = sync

    def __enter__(self) -> BatchContext:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self._engine.write(self, sync=self._sync)


class Engine:
    """An embedded LSM key-value store in one directory. Thread-safe."""

    def __init__(self, path: str, options: Options | None = None,
                 fs: FileSystem | None = None, *, read_only: bool = False) -> None:
        if type(read_only) is not bool:
            raise TypeError(f"read_only must be True or False, got {type(read_only).__name__}")
        self.options = (options or Options()).validate()
        self.path = path
        self._fs = fs or OSFileSystem()
        self._mutex = threading.Lock()
        self._bg_cv = threading.Condition(self._mutex)  # versions, memtables, errors changed
        self._idle_cv = threading.Condition(self._mutex)  # the writer queue became empty
        self._visible_cv = threading.Condition(self._mutex)  # _visible_seq moved
        self._manifest_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._writers: deque[_Writer] = deque()
        self._snapshots: Counter[int] = Counter()
        self._cache: LRUCache[Block] = LRUCache(self.options.block_cache_bytes)
        self._tables: dict[int, Table] = {}
        self._pointers: dict[int, bytes] = {}
        self._bg_error: EngineError | None = None
        self._closed = False
        self._rejecting_writes = False  # close() started: no new writes
        self._closing = False  # background threads must stop
        self._stats: Counter[str] = Counter()
        self._certifier = Certifier(self.options.isolation, self.options.max_txn_age_s)
        self._blind = BlindWrites(self._certifier)  # writes outside transactions (_mutex)
        self._default_sync = self.options.sync == "always"
        # Closed WAL segments holding records written without a sync: a synced
        # write syncs them first, so that it never survives a crash that
        # loses an earlier write (a durable write implies a durable prefix).
        self._unsynced_wals: list[tuple[int, str]] = []
        self._transactions = _LocalTransactions(self)
        if self._fs.exists(self._fs.join(path, CLUSTER_DESCRIPTOR)):
            raise InvalidArgument(f"{path} holds a replicated cluster, not an engine store: "
                                  f"open it with replication.open")
        self._read_only = read_only
        # True once the store may hold a range deletion: reads then take the
        # slower path that honours them (recomputed on open).
        self._range_deletes = False
        # Read-only engines: the superversion each pinned sequence (snapshot,
        # transaction) reads, kept across refresh() -- the writer's compactions
        # do not know our snapshots, so an old sequence must read old tables.
        self._ro_svs: dict[int, _SuperVersion] = {}
        self._refresh_lock = threading.Lock()
        if read_only:
            sv, last_seq, self._tables = self._read_only_state()
            self._last_seq = self._visible_seq = self._manifest_last_seq = last_seq
            self._synced_seq = last_seq
            self._wal: LogFile | None = None
            self._sv = sv
            self._range_deletes = bool(sv.rts or sv.mem.range_tombstones)
            return
        self._fs.mkdirs(path)
        self._lock = self._fs.lock(self._fs.join(path, "LOCK"))
        try:
            self._recover()
        except BaseException:
            self._lock.release()
            for t in self._tables.values():
                t.close()
            raise
        self._flush_thread = threading.Thread(target=self._flush_loop, daemon=True,
                                              name=f"stratakv-flush:{path}")
        self._compact_thread = threading.Thread(target=self._compaction_loop, daemon=True,
                                                name=f"stratakv-compact:{path}")
        self._flush_thread.start()
        self._compact_thread.start()

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        fs, path, opts = self._fs, self.path, self.options
        names = fs.listdir(path)
        if CURRENT in names:
            state = Manifest.recover(fs, path, opts.num_levels)
        else:
            owned = [n for n in names if parse_file_name(n) is not None]
            if owned:
                raise CorruptionError(fs.join(path, CURRENT), None,
                                      f"missing, but the directory holds store files {owned[:3]}")
            state = RecoveredState(Version.empty(opts.num_levels), 0, 1, 0, 0)
        version = state.version
        # Numbers taken since the last edit that logged next_file (WAL segments
        # of memtable switches, tables of an unfinished compaction) are on disk
        # but not in the manifest: never hand them out again (LevelDB's
        # MarkFileNumberUsed).
        on_disk = [num for _, num in filter(None, map(parse_file_name, names))]
        self._next_file = max([state.next_file, *(n + 1 for n in on_disk)])
        for _, f in version.files():
            self._tables[f.number] = self._open_table(f)
        last_seq = state.last_sequence
        wals = sorted(num for kind, num in filter(None, map(parse_file_name, names))
                      if kind is FileKind.WAL and num >= state.log_number)
        edit_added: list[tuple[int, FileMeta]] = []
        mem = MemTable(0)
        replayed = [(p, *replay(fs, p))
                    for p in (fs.join(path, file_name(FileKind.WAL, n)) for n in wals)]
        for i, (wal_path, batches, scan) in enumerate(replayed):
            if scan.torn is not None:
                # A torn tail is expected only in the newest segment -- or in an
                # older one whose unsynced records (sync=False) a power cut tore
                # before anything reached the segments after it: a synced write
                # there would have synced this segment first.
                if any(later for _, later, _ in replayed[i + 1:]):
                    raise CorruptionError(wal_path, scan.valid_end,
                                          f"{scan.torn} in a WAL segment that is not the newest")
                log.warning("%s: cutting torn tail at offset %d (%s)", wal_path,
                            scan.valid_end, scan.torn)
                fs.truncate(wal_path, scan.valid_end)
            for seq, ops in batches:
                if seq <= last_seq:
                    raise CorruptionError(wal_path, None,
                                          f"sequence {seq} does not follow {last_seq}")
                mem.add(seq, ops)
                last_seq = seq
                if mem.approx_bytes >= opts.memtable_bytes:
                    edit_added += self._flush_during_recovery(mem)
                    mem = MemTable(0)
            self._stats["wal_batches_replayed"] += len(batches)
        if len(mem) or mem.last_seq:
            edit_added += self._flush_during_recovery(mem)
        if edit_added:
            fs.sync_dir(path)
            version = version.apply(VersionEdit(added=tuple(edit_added)))
        self._last_seq = self._visible_seq = last_seq
        self._manifest_last_seq = last_seq
        self._synced_seq = last_seq  # every write up to here is on stable storage
        log_number = self._log_number = self._take_file_number()
        self._wal = LogFile(fs, path, FileKind.WAL, log_number) if opts.wal else None
        self._manifest = Manifest(fs, path)
        manifest_number = self._take_file_number()
        self._manifest.install(manifest_number,
                               version.snapshot_edit(log_number, self._next_file, last_seq))
        self._sv = _SuperVersion(MemTable(log_number), (), version, self._tables)
        self._range_deletes = bool(self._sv.rts)
        self._delete_obsolete(version, log_number, manifest_number)

    def _read_only_state(self) -> tuple[_SuperVersion, int, dict[int, Table]]:
        """The store as its files say now, read without writing anything (read-only open).

        A writer may be flushing, compacting or rotating the manifest while
        we read: a file that vanished under us or a log that moved on means
        "read again" (a few times, briefly backing off), not an error.
        """
        last: BaseException | None = None
        for attempt in range(_READ_ONLY_ATTEMPTS):
            try:
                return self._read_only_state_once()
            except (CorruptionError, FileNotFoundError, _StoreChanged) as exc:
                last = exc
                log.debug("%s: read-only load attempt %d: %s", self.path, attempt + 1, exc)
                time.sleep(0.002 * (attempt + 1))
        if isinstance(last, _StoreChanged):
            raise StorageError(f"{self.path}: the store kept changing during "
                               f"{_READ_ONLY_ATTEMPTS} attempts to read it") from last
        if last is None:  # pragma: no cover - the loop runs at least once
            raise StorageError(f"{self.path}: could not be read")
        raise last

    def _read_only_state_once(self) -> tuple[_SuperVersion, int, dict[int, Table]]:
        """One attempt of :meth:`_read_only_state`: manifest, tables, then WAL into memory.

        WAL segments are deleted only after the manifest moved its log
        number past them, so reading the manifest again afterwards and
        finding the same log number proves no segment we needed was deleted
        while we read. A torn tail is ignored in memory (the writer may be
        appending that record right now) and the file left as it is.
        """
        fs, path, opts = self._fs, self.path, self.options
        if not fs.exists(fs.join(path, CURRENT)):
            raise InvalidArgument(f"no store at {path} to open read-only (no {CURRENT} file)")
        state = Manifest.recover(fs, path, opts.num_levels)
        known = self._tables
        tables: dict[int, Table] = {}
        try:
            for _, f in state.version.files():
                t = known.get(f.number)  # tables are immutable: an open one is reused
                tables[f.number] = t if t is not None else self._open_table(f)
            wals = sorted(num for kind, num in filter(None, map(parse_file_name,
                                                                fs.listdir(path)))
                          if kind is FileKind.WAL and num >= state.log_number)
            replayed = [(p, *replay(fs, p))
                        for p in (fs.join(path, file_name(FileKind.WAL, n)) for n in wals)]
            if Manifest.recover(fs, path, opts.num_levels).log_number != state.log_number:
                raise _StoreChanged("a flush moved the log number while we read")
        except BaseException:
            for number, t in tables.items():
                if number not in known:
                    t.close()
            raise
        mem = MemTable(state.log_number)
        last_seq = state.last_sequence
        for i, (wal_path, batches, scan) in enumerate(replayed):
            if scan.torn is not None and any(later for _, later, _ in replayed[i + 1:]):
                raise CorruptionError(wal_path, scan.valid_end,
                                      f"{scan.torn} in a WAL segment that is not the newest")
            for seq, ops in batches:
                if seq <= last_seq:
                    raise CorruptionError(wal_path, None,
                                          f"sequence {seq} does not follow {last_seq}")
                mem.add(seq, ops)
                last_seq = seq
        return _SuperVersion(mem, (), state.version, tables), last_seq, tables

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
        self._check_open()
        with self._refresh_lock:
            sv, last_seq, tables = self._read_only_state()
            with self._mutex:
                self._check_open()
                # Sequence first, then tables: a lock-free reader between the two
                # reads the newer sequence in the older view -- the older state,
                # consistently -- never an old sequence in tables compacted since.
                self._last_seq = self._visible_seq = self._manifest_last_seq = last_seq
                self._synced_seq = last_seq
                self._tables = tables
                self._range_deletes = self._range_deletes or bool(sv.rts
                                                                   or sv.mem.range_tombstones)
                self._sv = sv
                self._stats["refreshes"] += 1

    def _flush_during_recovery(self, mem: MemTable) -> list[tuple[int, FileMeta]]:
        if not len(mem) and not mem.range_tombstones:
            return []
        number = self._take_file_number()
        props = self._build_table(mem, number, ())
        if props is None:
            return []
        self._tables[number] = Table(self._fs, self._table_path(number), number, self._cache)
        return [(0, _meta(props))]

    def _open_table(self, f: FileMeta) -> Table:
        table_path = self._fs.join(self.path, file_name(FileKind.TABLE, f.number))
        if not self._fs.exists(table_path):
            raise CorruptionError(table_path, None, "table file referenced by the manifest "
                                                    "is missing")
        table = Table(self._fs, table_path, f.number, self._cache)
        if table.props.file_size != f.size:
            table.close()
            raise CorruptionError(table_path, None, f"size {table.props.file_size} differs "
                                                    f"from the manifest's {f.size}")
        return table

    def _take_file_number(self) -> int:
        number = self._next_file
        self._next_file += 1
        return number

    def _delete_obsolete(self, version: Version, log_number: int, manifest_number: int) -> None:
        live = {f.number for _, f in version.files()}
        for name in self._fs.listdir(self.path):
            parsed = parse_file_name(name)
            if parsed is None:
                if not is_current_temp(name):  # an unfinished CURRENT update is garbage
                    continue
            else:
                kind, number = parsed
                if ((kind is FileKind.WAL and number >= log_number)
                        or (kind is FileKind.TABLE and number in live)
                        or (kind is FileKind.MANIFEST and number == manifest_number)
                        or number >= self._next_file):
                    continue
            log.info("%s: deleting obsolete file %s", self.path, name)
            self._fs.remove(self._fs.join(self.path, name))

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
        self._write({k: v}, len(k) + len(v), what="put",
                    sync=self._default_sync if sync is None else self._sync_arg(sync))

    def delete(self, key: Buffer, *, sync: bool | None = None) -> None:
        """Remove ``key`` (a no-op if absent); durable when it returns (``sync=`` as in put)."""
        k = check_key(key, self.options)
        self._write({k: None}, len(k), what="delete",
                    sync=self._default_sync if sync is None else self._sync_arg(sync))

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
        durable = self._default_sync if sync is None else self._sync_arg(sync)
        if self._read_only:
            self._check_writable("delete_range")
        self._range_deletes = True  # before the write can become visible
        self._write({lo: RangeEnd(hi)}, len(lo) + len(hi), sync=durable, what="delete_range")

    def batch(self, *, sync: bool | None = None) -> BatchContext:
        """A batch to fill inside ``with``; written atomically when the block exits cleanly.

        ``sync=`` overrides the store's default for this batch (see :meth:`put`).
        """
        if sync is not None:
            self._sync_arg(sync)
        if self._read_only:
            self._check_writable("batch")
        self._check_open()
        return BatchContext(self, sync)

    def write(self, batch: WriteBatch, *, sync: bool | None = None) -> None:
        """Apply every operation of ``batch`` atomically (``sync=`` as in :meth:`put`)."""
        if not isinstance(batch, WriteBatch):
            raise TypeError(f"batch must be a WriteBatch, got {type(batch).__name__}")
        durable = self._default_sync if sync is None else self._sync_arg(sync)
        if self._read_only:
            self._check_writable("write")
        if batch.ops:
            self._write(dict(batch.ops), batch.byte_size, sync=durable, what="write")

    def sync(self) -> None:
        """Make every write acknowledged so far durable (one fdatasync of the WAL).

        Goes through the writer queue like a write, so it also covers the
        writes queued ahead of it, and it syncs older WAL segments that
        still hold unsynced records. With ``wal=False`` it flushes the
        memtables to tables instead.
        """
        if self._read_only:
            self._check_writable("sync")
        if self._wal is None:
            self.flush()
            return
        self._enqueue([], 0, None, sync=True, what="sync")

    def _sync_arg(self, sync: object) -> bool:
        """Check an explicit ``sync=`` argument (True or False) for this engine."""
        if check_sync(sync) and self._wal is None and not self._read_only:
            raise InvalidArgument("sync=True needs the write-ahead log; this engine has "
                                  "wal=False (its durability comes from elsewhere)")
        return bool(sync)

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
        items: list[tuple[int | None, Ops]] = []
        nbytes = 0
        for sequence, batch in entries:
            if not isinstance(batch, WriteBatch):
                raise TypeError(f"batch must be a WriteBatch, got {type(batch).__name__}")
            if type(sequence) is not int:
                raise TypeError(f"sequence must be an int, got {type(sequence).__name__}")
            if not 0 < sequence < 1 << 56:
                raise InvalidArgument(f"sequence must be in [1, 2**56), got {sequence}")
            items.append((sequence, dict(batch.ops)))
            nbytes += batch.byte_size
        return self._enqueue(items, nbytes, None, sync=self._default_sync, what="apply")

    def _write(self, ops: Ops, nbytes: int, *, txn: TxnState | None = None,
               sync: bool, what: str = "write") -> int:
        """Write ``ops`` as one batch at the next sequence; return that sequence."""
        return self._enqueue([(None, ops)], nbytes, txn, sync=sync, what=what)

    def _enqueue(self, items: list[tuple[int | None, Ops]], nbytes: int,
                 txn: TxnState | None, *, sync: bool, what: str = "write") -> int:
        """Queue batches (None: next sequence), group-commit, return the last sequence or 0.

        With ``txn`` (one item), the transaction is certified in the same
        critical section that allocates its sequence. With ``sync`` the group
        that writes these batches fsyncs. No items at all is a sync barrier
        (:meth:`sync`): it joins a group like a write and makes it sync.
        """
        w = _Writer([], nbytes, threading.Condition(self._mutex), sync)
        with self._mutex:
            self._check_writable(what)
            now = time.monotonic()
            last = self._last_seq
            for sequence, ops in items:
                if sequence is not None and sequence <= last:
                    continue  # already applied: idempotent replay
                seq = last + 1 if sequence is None else sequence
                if txn is not None:
                    self._certifier.certify(txn, ops, seq, now)
                    w.states.append(txn)
                elif ops:
                    w.blind.append(self._submit_blind_write(ops, seq, now))
                w.batches.append((seq, ops))
                last = seq
            if not w.batches and items:
                return 0
            self._last_seq = last
            self._writers.append(w)
            while not w.done and self._writers[0] is not w:
                w.cv.wait()
            if w.done:
                if w.error is not None:
                    raise w.error
                return last
            try:
                self._make_room()
            except BaseException as exc:
                self._finish_group([w], exc)
                raise
            group = [w]
            size = w.nbytes
            sync = w.sync
            for other in self._writers:
                if other is w:
                    continue
                if size + other.nbytes > _MAX_GROUP_BYTES:
                    break
                group.append(other)
                size += other.nbytes
                sync = sync or other.sync  # one synced member makes the whole group sync
            mem, wal = self._sv.mem, self._wal
            older: list[tuple[int, str]] = []
            if sync and self._unsynced_wals:
                older, self._unsynced_wals = self._unsynced_wals, []
            synced_to = self._visible_seq
        error: EngineError | None = None
        batches = [b for x in group for b in x.batches]
        try:
            if wal is not None:
                if older:
                    self._sync_segments(older)
                if batches:
                    wal.append(encode_group(batches), sync=sync)
                elif sync:
                    wal.sync()
        except OSError as exc:
            error = StorageError(f"writing {wal.path if wal else 'WAL'} failed: {exc}")
        else:
            for seq, ops in batches:
                mem.add(seq, ops)
        with self._mutex:
            if error is not None:
                log.error("%s: %s; the engine is now read-only", self.path, error)
                self._bg_error = error
                self._visible_cv.notify_all()
            else:
                if batches:
                    self._visible_seq = batches[-1][0]
                    self._visible_cv.notify_all()
                    self._stats["writes"] += len(batches)
                    self._stats["write_groups"] += 1
                    self._stats["user_bytes_written"] += size
                if sync and wal is not None:
                    self._synced_seq = max(self._synced_seq, self._visible_seq
                                           if batches else synced_to)
                    self._stats["wal_syncs"] += 1
            self._finish_group(group, error)
        if error is not None:
            raise error
        return last

    def _submit_blind_write(self, ops: Ops, seq: int, now: float) -> BlindWrite:
        """Hand a write outside transactions to the blind-write registry. Holds _mutex."""
        rng = range_of(ops)
        if rng is None:
            return self._blind.submit(seq, ops, now)
        return self._blind.submit(seq, (), now, ranges=(rng,))

    def _sync_segments(self, segments: list[tuple[int, str]]) -> None:
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

    def _finish_group(self, group: list[_Writer], error: BaseException | None) -> None:
        """Mark ``group`` (the head of the queue) done and wake its members. Holds _mutex."""
        for x in group:
            x.done = True
            x.error = error
            self._writers.popleft()
            for state in x.states:
                if error is None:
                    self._certifier.committed(state)
                else:
                    self._certifier.abort(state, "storage_error")
            for blind in x.blind:  # visible now (_visible_seq is published), or lost
                self._blind.settle(blind, error is None, reason="storage_error")
            x.cv.notify()
        if self._writers:
            self._writers[0].cv.notify()
        else:
            self._idle_cv.notify_all()

    def _make_room(self) -> None:
        """Ensure the memtable can take a write, switching or stalling. Leader holds _mutex."""
        opts = self.options
        delayed = False
        while True:
            if self._bg_error is not None:
                raise self._bg_error
            sv = self._sv
            l0 = len(sv.version.levels[0])
            if not delayed and l0 >= opts.l0_slowdown_trigger:
                self._stats["stall_l0_slowdown"] += 1
                self._mutex.release()
                try:
                    time.sleep(0.001)
                finally:
                    self._mutex.acquire()
                delayed = True
            elif sv.mem.approx_bytes < opts.memtable_bytes:
                return
            elif len(sv.imms) >= opts.max_immutable_memtables:
                self._stats["stall_memtable"] += 1
                log.info("%s: write stall: %d memtables waiting to be flushed", self.path,
                         len(sv.imms))
                self._bg_cv.wait()
            elif l0 >= opts.l0_stop_trigger:
                self._stats["stall_l0_stop"] += 1
                log.info("%s: write stall: %d L0 files (stop trigger %d)", self.path, l0,
                         opts.l0_stop_trigger)
                self._bg_cv.wait()
            else:
                self._switch_memtable()
                return

    def _switch_memtable(self) -> None:
        """Freeze the memtable and start a new WAL segment. Holds _mutex."""
        number = self._take_file_number()
        old = self._wal
        if old is not None:
            try:
                self._wal = LogFile(self._fs, self.path, FileKind.WAL, number)
            except OSError as exc:
                self._bg_error = StorageError(f"creating WAL segment {number} failed: {exc}")
                raise self._bg_error from exc
            try:
                old.close()
            except OSError as exc:
                log.warning("%s: closing %s: %s", self.path, old.path, exc)
            if old.unsynced:
                self._unsynced_wals.append((old.number, old.path))
        sv = self._sv
        self._sv = _SuperVersion(MemTable(number), (sv.mem, *sv.imms), sv.version, self._tables)
        self._bg_cv.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"engine at {self.path} is closed")

    def _check_writable(self, what: str = "write") -> None:
        if self._read_only:
            raise ReadOnlyError(f"{what}: the engine at {self.path} was opened read_only=True")
        if self._closed or self._rejecting_writes:
            raise ClosedError(f"engine at {self.path} is closed")
        if self._bg_error is not None:
            raise self._bg_error

    # ------------------------------------------------------------------ reads

    def get(self, key: Buffer) -> bytes | None:
        """The current value of ``key``, or None."""
        if type(key) is not bytes or len(key) > self.options.max_key_bytes:
            key = check_key(key, self.options)
        if self._closed:
            raise ClosedError(f"engine at {self.path} is closed")
        seq = self._visible_seq
        if self._range_deletes:
            return self._lookup_ranged(self._sv, key, seq)
        return self._lookup(self._sv, key, seq)

    def _sv_at(self, seq: int) -> _SuperVersion:
        """The superversion a read at ``seq`` uses (a read-only engine's pinned one)."""
        return self._ro_svs.get(seq, self._sv) if self._ro_svs else self._sv

    def _get_at(self, key: bytes, seq: int) -> bytes | None:
        self._check_open()
        if self._range_deletes:
            return self._lookup_ranged(self._sv_at(seq), key, seq)
        return self._lookup(self._sv_at(seq), key, seq)

    def _get_many_at(self, keys: list[bytes], seq: int) -> list[bytes | None]:
        self._check_open()
        sv = self._sv_at(seq)
        if self._range_deletes:
            return [self._lookup_ranged(sv, k, seq) for k in keys]
        return self._lookup_many(sv, keys, seq)

    @staticmethod
    def _range_tombstones(sv: _SuperVersion, seq: int) -> list[tuple[bytes, bytes, int]]:
        """The range deletions a reader at ``seq`` must honour (the live memtable's included)."""
        return [rt for rt in (*sv.rts, *sv.mem.range_tombstones) if rt[2] <= seq]

    @staticmethod
    def _lookup_ranged(sv: _SuperVersion, key: bytes, seq: int) -> bytes | None:
        """:meth:`_lookup` honouring range deletions (a version older than one covering it is gone).
        """
        hit = Engine._lookup_version(sv, key, seq)
        if hit is None or hit[1] is None:
            return None
        found_seq = hit[0]
        for start, end, t in (*sv.rts, *sv.mem.range_tombstones):
            if found_seq < t <= seq and start <= key < end:
                return None
        return hit[1]

    @staticmethod
    def _lookup_version(sv: _SuperVersion, key: bytes, seq: int
                        ) -> tuple[int, bytes | None] | None:
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

    @staticmethod
    def _lookup(sv: _SuperVersion, key: bytes, seq: int) -> bytes | None:
        """The value of ``key`` at ``seq``: :meth:`_lookup_version`'s walk, kept apart on
        purpose -- it is every ``get``'s hot path and builds no (sequence, value) pair.
        Keep the two in step."""
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
        self._check_open()
        seq = self._visible_seq
        if self._range_deletes:
            sv = self._sv
            return [self._lookup_ranged(sv, k, seq) for k in ks]
        return self._lookup_many(self._sv, ks, seq)

    @staticmethod
    def _lookup_many(sv: _SuperVersion, keys: list[bytes], seq: int) -> list[bytes | None]:
        """:meth:`_lookup` of every key of ``keys`` at ``seq``, one pass per source.

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
        self._check_open()
        return self._scan_at(lo, hi, reverse, self._visible_seq)

    def _scan_at(self, start: Buffer | None, end: Buffer | None, reverse: bool, seq: int
                 ) -> Iterator[tuple[bytes, bytes]]:
        lo = None if start is None else check_key(start, self.options)
        hi = None if end is None else check_key(end, self.options)
        sv = self._sv_at(seq)
        if lo is not None and hi is not None and lo >= hi:
            return iter(())
        rts = self._range_tombstones(sv, seq) if self._range_deletes else []
        return scan_items(self._cursors(sv, lo, hi, reverse), seq, reverse, self._check_open,
                          rts)

    @staticmethod
    def _cursors(sv: _SuperVersion, lo: bytes | None, hi: bytes | None, reverse: bool
                 ) -> list[Cursor]:
        # An empty memtable has nothing for this scan even if written to later:
        # the scan's sequence was read first, and writes become visible only
        # after they are in the memtable.
        cursors: list[Cursor] = [MemCursor(sv.mem, lo, hi, reverse)] if len(sv.mem) else []
        cursors += [MemCursor(imm, lo, hi, reverse) for imm in sv.imms]
        for t in sv.l0:
            p = t.props
            if (lo is None or p.largest >= lo) and (hi is None or p.smallest < hi):
                cursors.append(t.cursor(lo, hi, reverse))
        cursors += [LevelCursor(tables, lo, hi, reverse, largest) for largest, tables in sv.levels]
        return cursors

    def snapshot(self) -> Snapshot:
        """Pin the current state for consistent reads until released."""
        with self._mutex:
            self._check_open()
            seq = self._visible_seq
            self._snapshots[seq] += 1
            if self._read_only:
                self._ro_svs.setdefault(seq, self._sv)
        return Snapshot(self, seq)

    def _release_snapshot(self, seq: int) -> None:
        with self._mutex:
            self._snapshots[seq] -= 1
            if self._snapshots[seq] <= 0:
                del self._snapshots[seq]
                self._ro_svs.pop(seq, None)

    @property
    def last_sequence(self) -> int:
        """Sequence number of the newest visible write (the last applied index)."""
        return self._visible_seq

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
            return max(self._synced_seq, self._manifest_last_seq)
        return self._manifest_last_seq

    # ------------------------------------------------------------------ transactions

    def begin(self, *, read_only: bool = False, sync: bool | None = None) -> Transaction:
        """Start a transaction reading the current state (see :class:`engine.txn.Transaction`).

        ``read_only=True`` forbids writes and lets the certifier use the
        read-only refinement, which aborts fewer transactions. ``sync=``
        overrides the store's durability for its commit (see :meth:`put`).
        """
        if sync is not None:
            self._sync_arg(sync)
        with self._mutex:
            if read_only or self._read_only:  # a read-only engine refuses writes at commit
                self._check_open()
            else:
                self._check_writable("begin")
            # Commits already certified are waiting only for their WAL write:
            # start after them (at most one group commit), or this transaction
            # would read around them and conflict with them.
            target = self._last_seq
            while self._visible_seq < target and self._bg_error is None:
                self._visible_cv.wait()
            seq = self._visible_seq
            now = time.monotonic()
            self._certifier.expire(now)
            # Writes queued while nothing was tracked were not recorded; those
            # this snapshot cannot see must be, before it reads.
            self._blind.on_begin(seq, now)
            state = self._certifier.begin(seq, now, read_only=read_only)
            self._snapshots[seq] += 1
            if self._read_only:
                self._ro_svs.setdefault(seq, self._sv)
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

    # ------------------------------------------------------------------ background work

    def _flush_loop(self) -> None:
        while True:
            with self._mutex:
                while not self._closing and not self._sv.imms and self._bg_error is None:
                    self._bg_cv.wait()
                if self._closing or self._bg_error is not None:
                    return
            try:
                self._flush_oldest()
            except BaseException as exc:
                self._background_failed("flush", exc)
                return

    def _flush_oldest(self) -> None:
        with self._mutex:
            imm = self._sv.imms[-1]
            number = self._take_file_number()
            snapshots = sorted(self._snapshots)
        props = self._build_table(imm, number, snapshots)
        table: Table | None = None
        if props is not None:
            self._fs.sync_dir(self.path)
            table = Table(self._fs, self._table_path(number), number, self._cache)
        with self._manifest_lock:
            with self._mutex:
                imms = self._sv.imms
                log_number = imms[-2].wal_number if len(imms) > 1 else self._sv.mem.wal_number
                last_seq = max(self._manifest_last_seq, imm.last_seq)
                edit = VersionEdit(log_number=log_number, next_file=self._next_file,
                                   last_sequence=last_seq,
                                   added=((0, _meta(props)),) if props is not None else ())
            self._log_edit(edit)
            with self._mutex:
                # Only now, with the edit synced, may persisted_sequence trust it:
                # a replica's log is truncated up to that sequence.
                self._manifest_last_seq = last_seq
                if props is not None and table is not None:
                    self._tables[number] = table
                    self._stats["flushes"] += 1
                    self._stats["bytes_flushed"] += props.file_size
                sv = self._sv
                self._sv = _SuperVersion(sv.mem, sv.imms[:-1], sv.version.apply(edit),
                                         self._tables)
                self._bg_cv.notify_all()
        with self._mutex:  # segments about to be deleted need no sync any more
            self._unsynced_wals = [s for s in self._unsynced_wals if s[0] >= log_number]
        for name in self._fs.listdir(self.path):
            parsed = parse_file_name(name)
            if parsed is not None and parsed[0] is FileKind.WAL and parsed[1] < log_number:
                self._fs.remove(self._fs.join(self.path, name))

    def _log_edit(self, edit: VersionEdit) -> None:
        """Durably log ``edit``, rotating the manifest when it grows. Holds _manifest_lock."""
        self._manifest.log_edit(edit)
        if edit.log_number is not None:
            self._log_number = edit.log_number
        if self._manifest.size > _MAX_MANIFEST_BYTES:
            with self._mutex:
                version = self._sv.version.apply(edit)
                old = self._manifest.number
                number = self._take_file_number()
                snap = version.snapshot_edit(self._log_number, self._next_file,
                                             max(self._manifest_last_seq,
                                                 edit.last_sequence or 0))
            self._manifest.install(number, snap)
            self._fs.remove(self._fs.join(self.path, file_name(FileKind.MANIFEST, old)))

    def _table_path(self, number: int) -> str:
        return self._fs.join(self.path, file_name(FileKind.TABLE, number))

    def _new_builder(self, number: int) -> TableBuilder:
        return TableBuilder(self._fs.create(self._table_path(number)), number, self.options)

    def _build_table(self, mem: MemTable, number: int,
                     snapshots: list[int] | tuple[()]) -> TableProperties | None:
        """Write a frozen memtable as table ``number`` (None if it is empty).

        Without live snapshots only each key's newest version can be read, so
        that is all a flush writes; otherwise the compaction drop rule decides
        (tombstones are always kept: older data may sit in tables below).
        """
        if not len(mem) and not mem.range_tombstones:
            return None
        entries: Iterable[Entry] = (mem.newest_entries() if not snapshots else
                                    compaction.keep_versions(mem.entries(), snapshots, False))
        builder = self._new_builder(number)
        for start, end, seq in mem.range_tombstones:
            builder.add_range_tombstone(start, end, seq)
        add = builder.add
        for key, negseq, value in entries:
            add(key, negseq, value)
        props = builder.finish()
        self._paranoid_check(number)
        return props

    def _paranoid_check(self, number: int) -> None:
        """With ``paranoid_checks``: re-read new table ``number`` whole; CorruptionError if bad.

        Runs before the manifest references the table, so a table damaged on
        its way to the disk (or written wrongly) never becomes part of the store.
        """
        if not self.options.paranoid_checks:
            return
        report = VerifyReport()
        path = self._table_path(number)
        check_table(self._fs, path, number, report)
        if report.problems:
            raise CorruptionError(path, None, "paranoid check of a table just written: "
                                  + "; ".join(report.problems))

    def _compaction_loop(self) -> None:
        while True:
            with self._mutex:
                while (not self._closing and self._bg_error is None
                       and compaction.pick(self._sv.version, self.options, self._pointers) is None):
                    self._bg_cv.wait()
                if self._closing or self._bg_error is not None:
                    return
            try:
                with self._compaction_lock:
                    with self._mutex:
                        task = compaction.pick(self._sv.version, self.options, self._pointers)
                    if task is not None:
                        self._run_compaction(task)
            except BaseException as exc:
                self._background_failed("compaction", exc)
                return

    def _run_compaction(self, task: compaction.CompactionTask) -> None:
        """Execute ``task`` and install its result. Holds _compaction_lock."""
        log.debug("%s: compacting %d+%d files L%d->L%d (%s)", self.path, len(task.inputs),
                  len(task.overlaps), task.level, task.output_level, task.reason)
        deleted = tuple((task.level, f.number) for f in task.inputs) + tuple(
            (task.output_level, f.number) for f in task.overlaps)
        if task.trivial_move:
            edit = VersionEdit(deleted=deleted, added=((task.output_level, task.inputs[0]),))
            with self._manifest_lock:
                self._log_edit(edit)
                self._install(edit)
            self._stats["trivial_moves"] += 1
            return
        with self._mutex:
            snapshots = sorted(self._snapshots)
            tables = dict(self._tables)

        def new_builder() -> TableBuilder:
            with self._mutex:
                number = self._take_file_number()
            return self._new_builder(number)

        # Range deletions (and what they cover) may be dropped only when the
        # compaction sees every table of the store: the data they hide may be anywhere.
        everything = task.bottommost and {f.number for _, f in self._sv.version.files()} == {
            f.number for f in (*task.inputs, *task.overlaps)}
        outputs = compaction.run(task, tables, snapshots, new_builder,
                                 self.options.target_file_bytes,
                                 apply_range_tombstones=everything)
        for p in outputs:
            self._paranoid_check(p.number)
        if outputs:
            self._fs.sync_dir(self.path)
        new_tables = {p.number: Table(self._fs, self._table_path(p.number), p.number, self._cache)
                      for p in outputs}
        with self._manifest_lock:
            with self._mutex:
                edit = VersionEdit(next_file=self._next_file, deleted=deleted,
                                   added=tuple((task.output_level, _meta(p)) for p in outputs))
            self._log_edit(edit)
            self._install(edit, new_tables)
        if task.level > 0:
            self._pointers[task.level] = max(f.largest for f in task.inputs)
        self._stats["compactions"] += 1
        self._stats["bytes_compacted_in"] += task.input_bytes
        self._stats["bytes_compacted_out"] += sum(p.file_size for p in outputs)
        for _, number in deleted:
            self._fs.remove(self._table_path(number))
            self._cache.erase_file(number)

    def _install(self, edit: VersionEdit, new_tables: dict[int, Table] | None = None) -> None:
        """Swap in the version after ``edit``. Holds _manifest_lock."""
        with self._mutex:
            if new_tables:
                self._tables.update(new_tables)
            for _, number in edit.deleted:
                if not any(number == f.number for _, f in edit.added):
                    self._tables.pop(number, None)
            sv = self._sv
            self._sv = _SuperVersion(sv.mem, sv.imms, sv.version.apply(edit), self._tables)
            self._bg_cv.notify_all()

    def _background_failed(self, what: str, exc: BaseException) -> None:
        log.error("%s: background %s failed: %r; writes are stopped", self.path, what, exc)
        with self._mutex:
            if self._bg_error is None:
                if isinstance(exc, EngineError):
                    self._bg_error = exc
                else:
                    self._bg_error = StorageError(f"background {what} failed: {exc!r}")
            self._bg_cv.notify_all()

    # ------------------------------------------------------------------ maintenance

    def flush(self) -> None:
        """Write the memtable to a table and wait until every memtable is flushed."""
        with self._mutex:
            self._check_writable("flush")
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Freeze the memtable and wait for every frozen one to reach a table. Holds _mutex."""
        # Wait for the queue to drain: no leader may be writing the memtable we freeze.
        while self._writers:
            self._idle_cv.wait()
        if len(self._sv.mem) or self._sv.mem.last_seq > self._manifest_last_seq:
            self._switch_memtable()
        while self._sv.imms and self._bg_error is None:
            self._bg_cv.wait()
        if self._bg_error is not None:
            raise self._bg_error

    def compact(self) -> None:
        """Flush, compact every level down, then rewrite the bottom level if it holds garbage.

        Afterwards each key lives in one level, and with no snapshot held no
        tombstone or overwritten version is left.
        """
        if self._read_only:
            self._check_writable("compact")
        self.flush()
        with self._compaction_lock:
            with self._mutex:
                total = sum(f.size for _, f in self._sv.version.files())
            # Push everything down to the first level whose target holds it all,
            # so that afterwards background compaction has nothing left to do.
            home = next((lv for lv in range(1, self.options.num_levels)
                         if compaction.level_target_bytes(self.options, lv) >= total),
                        self.options.num_levels - 1)
            for level in range(self.options.num_levels - 1):
                with self._mutex:
                    version = self._sv.version
                    deeper = any(version.levels[level + 1:])
                task = (compaction.pick_level(version, level) if deeper or level < home
                        else None)
                if task is not None:
                    self._run_compaction(task)
            with self._mutex:
                version = self._sv.version
                tables = dict(self._tables)
            task = compaction.pick_bottom_rewrite(version,
                                                  lambda f: tables[f.number].props.has_garbage)
            if task is not None:
                self._run_compaction(task)

    def checkpoint(self, dest: str) -> int:
        """Write a consistent copy of the store into the new or empty directory ``dest``.

        Flushes the memtable, then hard-links (or copies) every live table
        and writes a manifest naming them. Returns the checkpoint's last
        sequence: the copy holds exactly the writes up to it. Used to bring
        a replica that fell behind the replication log back in one step.
        """
        if self._read_only:
            self._check_writable("checkpoint")
        self.flush()
        fs = self._fs
        fs.mkdirs(dest)
        if fs.listdir(dest):
            raise InvalidArgument(f"checkpoint directory {dest} is not empty")
        with self._compaction_lock, self._manifest_lock:
            with self._mutex:
                version = self._sv.version
                last_seq = self._manifest_last_seq
                number = self._next_file
            for _, f in version.files():
                name = file_name(FileKind.TABLE, f.number)
                fs.link_or_copy(self._fs.join(self.path, name), fs.join(dest, name))
            fs.sync_dir(dest)
            manifest = Manifest(fs, dest)
            manifest.install(number, version.snapshot_edit(number + 1, number + 2, last_seq))
            manifest.close()
        return last_seq

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
        with self._mutex:
            sv = self._sv
            levels = [{"files": len(files), "bytes": sum(f.size for f in files)}
                      for files in sv.version.levels]
            out: dict[str, Any] = dict.fromkeys(STATS_COUNTERS, 0)
            out.update(self._stats)
            out.update(
                last_sequence=self._visible_seq,
                memtable_bytes=sv.mem.approx_bytes,
                immutable_memtables=len(sv.imms),
                levels=levels,
                table_bytes=sum(lv["bytes"] for lv in levels),
                snapshots=sum(self._snapshots.values()),
                block_cache_bytes=self._cache.used_bytes,
                block_cache_hits=self._cache.hits,
                block_cache_misses=self._cache.misses,
                block_cache_rejected=self._cache.rejected,
                table_index_filter_bytes=sum(t.memory_bytes for t in self._tables.values()),
                txn_commits=self._certifier.commits,
                txn_aborts={**dict.fromkeys(sorted(SERIALIZATION_REASONS), 0),
                            **self._certifier.aborts},
                txn_rollbacks={**dict.fromkeys(_ROLLBACK_REASONS, 0),
                               **self._certifier.rollbacks},
                certifier=self._certifier.tracked(),
                background_error=str(self._bg_error) if self._bg_error else None,
                read_only=self._read_only,
            )
        return out

    def verify(self) -> VerifyReport:
        """Read and check every table block, the WAL and the manifest; return a report."""
        self._check_open()
        with self._compaction_lock:  # no table is deleted while it is re-read by path
            with self._mutex:
                sv = self._sv
                tables = [(f, self._tables[f.number]) for _, f in sv.version.files()]
                log_number = (sv.imms[-1] if sv.imms else sv.mem).wal_number
            return verify_store(self._fs, self.path, tables, self.options.num_levels, log_number)

    def close(self) -> None:
        """Finish queued writes, stop background work, sync the WAL, release the directory."""
        if self._read_only:
            self._close_read_only()
            return
        with self._mutex:
            if self._closed or self._rejecting_writes:
                return
            self._rejecting_writes = True
            while self._writers:  # background threads keep running: a stalled leader needs them
                self._idle_cv.wait()
            if self._wal is None:  # nothing else keeps the memtable: flush it
                try:
                    self._flush_locked()
                except EngineError as exc:
                    log.error("%s: flushing on close failed: %s", self.path, exc)
            self._closing = True
            self._bg_cv.notify_all()
        self._flush_thread.join()
        with self._compaction_lock:
            pass
        self._compact_thread.join()
        try:
            if self._wal is not None:
                self._sync_segments(self._unsynced_wals)
                self._unsynced_wals = []
                self._wal.sync()
                self._wal.close()
        except OSError as exc:
            log.error("%s: syncing the WAL on close failed: %s", self.path, exc)
        self._manifest.close()
        with self._mutex:
            self._closed = True
        for t in self._tables.values():
            t.close()
        self._lock.release()

    def _close_read_only(self) -> None:
        """A read-only engine has no threads, log or lock: close its tables."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
        with self._refresh_lock:
            for t in self._tables.values():
                t.close()

    def simulate_crash(self) -> None:
        """Drop the engine as a killed process would: for tests and simulated clusters.

        No flush, no sync, no waiting for queued writes (they fail with
        ClosedError): what was written to the WAL is on disk as the OS has it,
        the memtable is gone. Background work stops after its current step, and
        the directory is released so the store can be reopened in-process.
        """
        if self._read_only:
            self._close_read_only()
            return
        with self._mutex:
            if self._closed or self._closing:
                return
            self._rejecting_writes = self._closing = True
            self._bg_error = ClosedError(f"engine at {self.path} crashed (simulated)")
            self._bg_cv.notify_all()
            self._visible_cv.notify_all()
        self._flush_thread.join()
        self._compact_thread.join()
        with self._mutex:
            while self._writers:  # a leader mid-write finishes; the rest see the error
                self._idle_cv.wait()
            self._closed = True
        if self._wal is not None:
            self._wal.close()
        self._manifest.close()
        for t in self._tables.values():
            t.close()
        self._lock.release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Engine {self.path!r} seq={self._visible_seq}>"
