"""The store's current shape: the superversion readers use, open tables, file numbers, manifest.

LevelDB's ``VersionSet`` plus the snapshot list: what flushes and
compactions change and what every read starts from.

Lock rules:

* ``_mutex`` (the engine's one mutex, passed in) guards every field: the
  ``sv`` swap, ``tables``, ``next_file``, ``manifest_last_seq``,
  ``snapshots`` and ``pinned``. Readers read ``sv`` without it (a swap is one
  reference assignment; see engine/reads.py).
* ``manifest_lock`` serialises installing a new version (manifest edit,
  then ``sv`` swap); the flush thread and the compaction thread take it,
  always *before* ``_mutex``. ``log_edit``/``install``: caller holds it.
* ``changed`` (a condition on ``_mutex``) is notified whenever ``sv``
  changes or writes are stopped: flushes, compactions, stalled writers
  and ``flush()`` wait on it.

Invariants:

1. File numbers are handed out once (``take_file_number``, holds
   ``_mutex``); recovery starts past every number on disk.
2. ``manifest_last_seq`` moves only after the edit carrying it is durable
   in the manifest (a replica truncates its log up to it).
3. A table leaves ``tables`` only when a version edit deleted it; its file is
   deleted afterwards (engine/obsolete.py), never while a version lists it.
4. A read-only engine pins, per snapshot sequence, the superversion it began
   in (``pinned``): the writer's compactions know nothing of its snapshots.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from engine.encoding import FileKind, file_name
from engine.errors import InvalidArgument
from engine.fs import FileSystem
from engine.manifest import Manifest
from engine.memtable import MemTable
from engine.obsolete import LiveFiles, ObsoleteFiles
from engine.reads import SuperVersion
from engine.recovery import Recovered
from engine.sstable import Table
from engine.tables import TableFiles
from engine.version import FileMeta, Version, VersionEdit

__all__ = ["Versions"]

_MAX_MANIFEST_BYTES = 4 << 20


class Versions:
    """The current superversion and what it is made of (lock rules: module docstring)."""

    __slots__ = ("_fs", "_mutex", "changed", "files", "log_number", "manifest",
                 "manifest_last_seq", "manifest_lock", "next_file", "obsolete", "path",
                 "pinned", "range_deletes", "read_only", "snapshots", "sv", "tables")

    def __init__(self, fs: FileSystem, path: str, mutex: threading.Lock, files: TableFiles,
                 obsolete: ObsoleteFiles, *, read_only: bool) -> None:
        self._fs = fs
        self.path = path
        self._mutex = mutex
        self.files = files
        self.obsolete = obsolete
        self.read_only = read_only
        self.changed = threading.Condition(mutex)  # versions, memtables, errors changed
        self.manifest_lock = threading.Lock()
        self.manifest: Manifest | None = None
        self.tables: dict[int, Table] = {}
        self.next_file = 1
        self.log_number = 0
        self.manifest_last_seq = 0
        self.snapshots: Counter[int] = Counter()
        self.pinned: dict[int, SuperVersion] = {}
        # True once the store may hold a range deletion: reads then take the
        # slower path that honours them (recomputed on open).
        self.range_deletes = False
        self.sv = SuperVersion(MemTable(0), (), Version.empty(1), {})

    # -- reads -----------------------------------------------------------------------------

    def sv_at(self, seq: int) -> SuperVersion:
        """The superversion a read at ``seq`` uses (a read-only engine's pinned one)."""
        return self.pinned.get(seq, self.sv) if self.pinned else self.sv

    def pin(self, seq: int) -> None:
        """Count a snapshot (or transaction) at ``seq``. Holds _mutex."""
        self.snapshots[seq] += 1
        if self.read_only:
            self.pinned.setdefault(seq, self.sv)

    def unpin(self, seq: int) -> None:
        """Release one pin of ``seq`` (takes _mutex)."""
        with self._mutex:
            self.snapshots[seq] -= 1
            if self.snapshots[seq] <= 0:
                del self.snapshots[seq]
                self.pinned.pop(seq, None)

    def snapshot_list(self) -> list[int]:
        """The pinned sequences, ascending: what flushes and compactions must keep. Holds _mutex."""
        return sorted(self.snapshots)

    # -- state -----------------------------------------------------------------------------

    def take_file_number(self) -> int:
        """A file number never used before (invariant 1). Holds _mutex (or no thread runs)."""
        number = self.next_file
        self.next_file += 1
        return number

    def publish(self, mem: MemTable, imms: tuple[MemTable, ...], version: Version) -> None:
        """Swap in the superversion of these sources and wake waiters. Holds _mutex."""
        self.sv = SuperVersion(mem, imms, version, self.tables)
        self.changed.notify_all()

    def live(self) -> LiveFiles:
        """The files the store needs now (engine/obsolete.py). Holds _mutex or manifest_lock."""
        manifest = self.manifest
        return LiveFiles(self.log_number, manifest.number if manifest is not None else 0,
                         frozenset(f.number for _, f in self.sv.version.files()),
                         self.next_file)

    def start(self, rec: Recovered, open_wal: Callable[[int], None] | None) -> None:
        """Begin a writable life from ``rec``: a WAL segment, a new manifest, a superversion.

        ``open_wal(number)`` creates the first WAL segment (None: ``wal=False``).
        The new manifest records the whole version (recovery flushed the old
        WAL into it), and every file it does not need is deleted -- before
        any thread starts, so the sweep covers the whole directory
        (engine/obsolete.py).
        """
        self.tables, self.next_file = rec.tables, rec.next_file
        version, last_seq = rec.version, rec.last_seq
        self.log_number = log_number = self.take_file_number()
        if open_wal is not None:
            open_wal(log_number)
        self.manifest_last_seq = last_seq
        self.manifest = Manifest(self._fs, self.path)
        number = self.take_file_number()
        self.manifest.install(number, version.snapshot_edit(log_number, self.next_file, last_seq))
        self.sv = SuperVersion(MemTable(log_number), (), version, self.tables)
        self.range_deletes = bool(self.sv.rts)
        self.obsolete.remove(self.live())

    def refresh(self, sv: SuperVersion, last_seq: int, tables: dict[int, Table]) -> None:
        """A read-only engine's new view (sequence published first by the caller). Holds _mutex."""
        self.manifest_last_seq = last_seq
        self.tables = tables
        self.range_deletes = self.range_deletes or sv.has_range_deletes()
        self.sv = sv

    # -- version changes (caller holds manifest_lock) ------------------------------------------

    def log_edit(self, edit: VersionEdit) -> None:
        """Durably log ``edit``, rotating the manifest when it grows. Holds manifest_lock."""
        manifest = self.manifest
        if manifest is None:  # pragma: no cover - a read-only engine edits nothing
            raise RuntimeError("no manifest to log an edit to")
        manifest.log_edit(edit)
        if edit.log_number is not None:
            self.log_number = edit.log_number
        if manifest.size > _MAX_MANIFEST_BYTES:
            with self._mutex:
                version = self.sv.version.apply(edit)
                old = manifest.number
                number = self.take_file_number()
                snap = version.snapshot_edit(self.log_number, self.next_file,
                                             max(self.manifest_last_seq, edit.last_sequence or 0))
            manifest.install(number, snap)
            with self._mutex:
                live = self.live()
            self.obsolete.remove(live, names=[file_name(FileKind.MANIFEST, old)])

    def install(self, edit: VersionEdit, new_tables: dict[int, Table] | None = None) -> None:
        """Swap in the version after ``edit`` (already logged). Holds manifest_lock."""
        with self._mutex:
            if new_tables:
                self.tables.update(new_tables)
            for _, number in edit.deleted:
                if not any(number == f.number for _, f in edit.added):
                    self.tables.pop(number, None)
            sv = self.sv
            self.publish(sv.mem, sv.imms, sv.version.apply(edit))

    def live_tables(self) -> tuple[list[tuple[FileMeta, Table]], int]:
        """Every table of the current version, open; the first WAL number recovery would replay.

        For ``verify()``, whose caller holds the compaction lock so that no
        table is deleted while it is re-read. Takes _mutex.
        """
        with self._mutex:
            sv = self.sv
            tables = [(f, self.tables[f.number]) for _, f in sv.version.files()]
            return tables, (sv.imms[-1] if sv.imms else sv.mem).wal_number

    def checkpoint(self, dest: str) -> int:
        """Link every live table into ``dest`` and write a manifest naming them; its sequence.

        ``dest`` must be new or empty (else InvalidArgument). The caller
        flushed first and holds the compaction lock (no table is deleted
        meanwhile); this takes manifest_lock, so no version changes.
        """
        fs = self._fs
        fs.mkdirs(dest)
        if fs.listdir(dest):
            raise InvalidArgument(f"checkpoint directory {dest} is not empty")
        with self.manifest_lock:
            with self._mutex:
                version = self.sv.version
                last_seq = self.manifest_last_seq
                number = self.next_file
            for _, f in version.files():
                name = file_name(FileKind.TABLE, f.number)
                fs.link_or_copy(fs.join(self.path, name), fs.join(dest, name))
            fs.sync_dir(dest)
            manifest = Manifest(fs, dest)
            manifest.install(number, version.snapshot_edit(number + 1, number + 2, last_seq))
            manifest.close()
        return last_seq

    def close(self) -> None:
        """Close the manifest and every open table (the engine is shutting down)."""
        if self.manifest is not None:
            self.manifest.close()
        for t in self.tables.values():
            t.close()
