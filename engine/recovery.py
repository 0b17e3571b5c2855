"""Recovery: from the files of a store directory to the state an engine starts from.

:func:`recover` (a writable open) reads CURRENT and the manifest it names,
opens every table the manifest lists, replays the WAL segments at or after
its log number into memtables and flushes them into L0 tables, and returns
a :class:`Recovered`. What it may write: those tables, and the cut of a
torn WAL tail. Installing the new manifest and deleting what the result
does not need is the caller's next step (``Versions.start``).

:func:`load_read_only` builds the same view without writing anything (a
read-only open or ``refresh()``), retrying while a live writer changes the
files under it.

Invariants:

1. A torn record is accepted only at the tail of the newest segment that
   holds records -- or of an older one whose unsynced records a power cut
   tore before anything reached the segments after it (a synced write there
   would have synced this segment first). Anything else is
   ``CorruptionError`` with file and offset, never silently skipped.
2. Replayed sequences strictly increase across segments; the recovered last
   sequence is the newest of the manifest's and the WAL's.
3. No file number on disk is handed out again: ``next_file`` starts past
   every number in the directory, even those the manifest does not know
   (WAL segments of memtable switches, tables of an unfinished compaction;
   LevelDB's ``MarkFileNumberUsed``).
4. On failure every table opened here is closed again.

Thread-safety: runs before the engine has threads (or, read-only, under
its refresh lock); no shared state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.encoding import FileKind, file_name, parse_file_name
from engine.errors import CorruptionError, InvalidArgument, StorageError
from engine.fs import FileSystem
from engine.manifest import CURRENT, Manifest, RecoveredState
from engine.memtable import MemTable
from engine.options import Options
from engine.reads import SuperVersion
from engine.record import LogScan
from engine.sstable import Table
from engine.tables import TableFiles, meta
from engine.version import FileMeta, Version, VersionEdit
from engine.wal import Batch, replay

__all__ = ["Recovered", "load_read_only", "recover"]

log = logging.getLogger(__name__)

_READ_ONLY_ATTEMPTS = 20

Segment = tuple[str, list[Batch], LogScan]


class _StoreChanged(Exception):
    """A read-only load raced with the writer; load again."""


@dataclass(slots=True)
class Recovered:
    """What a writable engine starts from."""

    version: Version  # the manifest's version plus the tables the WAL replay flushed
    tables: dict[int, Table]  # open, one per table of ``version``
    last_seq: int  # the newest sequence in the store
    next_file: int  # the first file number free to hand out
    batches_replayed: int  # WAL batches replayed (stats: wal_batches_replayed)


def _segments(fs: FileSystem, path: str, names: list[str], log_number: int) -> list[Segment]:
    """Every WAL segment numbered ``log_number`` or later, in order, read whole."""
    wals = sorted(num for kind, num in filter(None, map(parse_file_name, names))
                  if kind is FileKind.WAL and num >= log_number)
    return [(p, *replay(fs, p)) for p in (fs.join(path, file_name(FileKind.WAL, n)) for n in wals)]


def _replay(segments: list[Segment], mem: MemTable, last_seq: int, *,
            on_torn: Callable[[str, LogScan], None] | None = None,
            on_full: Callable[[MemTable], MemTable] | None = None) -> tuple[MemTable, int]:
    """Add the batches of ``segments`` to ``mem``; the memtable and last sequence after them.

    ``on_torn(path, scan)`` handles a torn tail that invariant 1 allows;
    ``on_full(mem)`` takes a memtable that reached ``memtable_bytes`` and
    returns the next one (writable recovery flushes; read-only keeps one).
    """
    for i, (wal_path, batches, scan) in enumerate(segments):
        if scan.torn is not None:
            if any(later for _, later, _ in segments[i + 1:]):
                raise CorruptionError(wal_path, scan.valid_end,
                                      f"{scan.torn} in a WAL segment that is not the newest")
            if on_torn is not None:
                on_torn(wal_path, scan)
        for seq, ops in batches:
            if seq <= last_seq:
                raise CorruptionError(wal_path, None,
                                      f"sequence {seq} does not follow {last_seq}")
            mem.add(seq, ops)
            last_seq = seq
            if on_full is not None:
                mem = on_full(mem)
    return mem, last_seq


def _open_tables(files: TableFiles, version: Version, known: dict[int, Table]
                 ) -> dict[int, Table]:
    """Open every table of ``version`` (reusing those in ``known``: tables never change)."""
    tables: dict[int, Table] = {}
    try:
        for _, f in version.files():
            t = known.get(f.number)
            tables[f.number] = t if t is not None else files.open_listed(f)
    except BaseException:
        _close_new(tables, known)
        raise
    return tables


def _close_new(tables: dict[int, Table], known: dict[int, Table]) -> None:
    for number, t in tables.items():
        if number not in known:
            t.close()


def recover(fs: FileSystem, path: str, options: Options, files: TableFiles) -> Recovered:
    """Read the store in ``path`` for a writable open (module docstring)."""
    names = fs.listdir(path)
    if CURRENT in names:
        state = Manifest.recover(fs, path, options.num_levels)
    else:
        owned = [n for n in names if parse_file_name(n) is not None]
        if owned:
            raise CorruptionError(fs.join(path, CURRENT), None,
                                  f"missing, but the directory holds store files {owned[:3]}")
        state = RecoveredState(Version.empty(options.num_levels), 0, 1, 0, 0)
    on_disk = [num for _, num in filter(None, map(parse_file_name, names))]
    next_file = max([state.next_file, *(n + 1 for n in on_disk)])  # invariant 3
    tables = _open_tables(files, state.version, {})
    added: list[tuple[int, FileMeta]] = []

    def flush(mem: MemTable) -> None:
        nonlocal next_file
        if not len(mem) and not mem.range_tombstones:
            return
        number, next_file = next_file, next_file + 1
        props = files.build(mem, number, ())
        if props is not None:
            tables[number] = files.open_new(number)
            added.append((0, meta(props)))

    def flush_if_full(mem: MemTable) -> MemTable:
        if mem.approx_bytes < options.memtable_bytes:
            return mem
        flush(mem)
        return MemTable(0)

    def cut_torn_tail(wal_path: str, scan: LogScan) -> None:
        log.warning("%s: cutting torn tail at offset %d (%s)", wal_path, scan.valid_end,
                    scan.torn)
        fs.truncate(wal_path, scan.valid_end)

    try:
        segments = _segments(fs, path, names, state.log_number)
        mem, last_seq = _replay(segments, MemTable(0), state.last_sequence,
                                on_torn=cut_torn_tail, on_full=flush_if_full)
        if len(mem) or mem.last_seq:
            flush(mem)
        version = state.version
        if added:
            fs.sync_dir(path)
            version = version.apply(VersionEdit(added=tuple(added)))
    except BaseException:
        _close_new(tables, {})
        raise
    return Recovered(version, tables, last_seq, next_file,
                     sum(len(batches) for _, batches, _ in segments))


def load_read_only(fs: FileSystem, path: str, options: Options, files: TableFiles,
                   known: dict[int, Table]) -> tuple[SuperVersion, int, dict[int, Table]]:
    """The store as its files say now, read without writing anything (read-only open).

    A writer may be flushing, compacting or rotating the manifest while
    we read: a file that vanished under us or a log that moved on means
    "read again" (a few times, briefly backing off), not an error. Tables in
    ``known`` (the previous view's) are reused. Returns the superversion, its
    last sequence and its tables.
    """
    last: BaseException | None = None
    for attempt in range(_READ_ONLY_ATTEMPTS):
        try:
            return _load_read_only_once(fs, path, options, files, known)
        except (CorruptionError, FileNotFoundError, _StoreChanged) as exc:
            last = exc
            log.debug("%s: read-only load attempt %d: %s", path, attempt + 1, exc)
            time.sleep(0.002 * (attempt + 1))
    if isinstance(last, _StoreChanged):
        raise StorageError(f"{path}: the store kept changing during "
                           f"{_READ_ONLY_ATTEMPTS} attempts to read it") from last
    if last is None:  # pragma: no cover - the loop runs at least once
        raise StorageError(f"{path}: could not be read")
    raise last


def _load_read_only_once(fs: FileSystem, path: str, options: Options, files: TableFiles,
                         known: dict[int, Table]
                         ) -> tuple[SuperVersion, int, dict[int, Table]]:
    """One attempt of :func:`load_read_only`: manifest, tables, then WAL into memory.

    WAL segments are deleted only after the manifest moved its log
    number past them, so reading the manifest again afterwards and
    finding the same log number proves no segment we needed was deleted
    while we read. A torn tail is ignored in memory (the writer may be
    appending that record right now) and the file left as it is.
    """
    if not fs.exists(fs.join(path, CURRENT)):
        raise InvalidArgument(f"no store at {path} to open read-only (no {CURRENT} file)")
    state = Manifest.recover(fs, path, options.num_levels)
    tables = _open_tables(files, state.version, known)
    try:
        segments = _segments(fs, path, fs.listdir(path), state.log_number)
        if Manifest.recover(fs, path, options.num_levels).log_number != state.log_number:
            raise _StoreChanged("a flush moved the log number while we read")
        mem, last_seq = _replay(segments, MemTable(state.log_number), state.last_sequence)
    except BaseException:
        _close_new(tables, known)
        raise
    return SuperVersion(mem, (), state.version, tables), last_seq, tables
