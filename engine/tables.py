"""The table files of one store: their paths, building one, opening one the manifest names.

Owns the step from a frozen memtable to a table file (flush and recovery
share it) and the checks a table passes before the manifest may reference
it; compaction writes its outputs through :meth:`TableFiles.builder`.

Invariants:

1. A table is built completely and synced (``TableBuilder.finish``) before
   anyone references it; with ``paranoid_checks`` it is also re-read whole
   first, so a table damaged on its way to the disk never joins the store.
2. A table opened for a manifest entry has the size that entry records, or
   the open fails with ``CorruptionError`` naming it.

Thread-safety: no state of its own beyond the shared block cache (itself
thread-safe); any thread may call any method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from engine import compaction
from engine.block import Block
from engine.cache import LRUCache
from engine.encoding import FileKind, file_name
from engine.errors import CorruptionError
from engine.fs import FileSystem
from engine.invariants import VerifyReport, check_table
from engine.memtable import Entry, MemTable
from engine.options import Options
from engine.sstable import Table, TableBuilder, TableProperties
from engine.version import FileMeta

__all__ = ["TableFiles", "meta"]


def meta(p: TableProperties) -> FileMeta:
    """The manifest's record of the table whose properties are ``p``."""
    return FileMeta(p.number, p.file_size, p.smallest, p.largest, p.min_seq, p.max_seq,
                    p.entries)


class TableFiles:
    """Paths, builders and opens of the tables in directory ``path``."""

    __slots__ = ("_fs", "_make_builder", "cache", "options", "path")

    def __init__(self, fs: FileSystem, path: str, options: Options, cache: LRUCache[Block],
                 make_builder: Callable[[int], TableBuilder] | None = None) -> None:
        """``make_builder(number)`` replaces :meth:`new_builder` for every table written
        (the engine routes it through ``Engine._new_builder``, where tests inject faults)."""
        self._fs = fs
        self.path = path
        self.options = options
        self.cache = cache
        self._make_builder = make_builder or self.new_builder

    def table_path(self, number: int) -> str:
        return self._fs.join(self.path, file_name(FileKind.TABLE, number))

    def builder(self, number: int) -> TableBuilder:
        """A builder writing the new table ``number`` (through ``make_builder``)."""
        return self._make_builder(number)

    def new_builder(self, number: int) -> TableBuilder:
        """A plain builder writing the new table ``number`` to its file."""
        return TableBuilder(self._fs.create(self.table_path(number)), number, self.options)

    def open_new(self, number: int) -> Table:
        """Open table ``number``, just written by this process."""
        return Table(self._fs, self.table_path(number), number, self.cache)

    def open_listed(self, f: FileMeta) -> Table:
        """Open the table manifest entry ``f`` names, checking it exists with its size."""
        table_path = self.table_path(f.number)
        if not self._fs.exists(table_path):
            raise CorruptionError(table_path, None, "table file referenced by the manifest "
                                                    "is missing")
        table = Table(self._fs, table_path, f.number, self.cache)
        if table.props.file_size != f.size:
            table.close()
            raise CorruptionError(table_path, None, f"size {table.props.file_size} differs "
                                                    f"from the manifest's {f.size}")
        return table

    def build(self, mem: MemTable, number: int,
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
        builder = self.builder(number)
        for start, end, seq in mem.range_tombstones:
            builder.add_range_tombstone(start, end, seq)
        add = builder.add
        for key, negseq, value in entries:
            add(key, negseq, value)
        props = builder.finish()
        self.paranoid_check(number)
        return props

    def paranoid_check(self, number: int) -> None:
        """With ``paranoid_checks``: re-read new table ``number`` whole; CorruptionError if bad.

        Runs before the manifest references the table (invariant 1).
        """
        if not self.options.paranoid_checks:
            return
        report = VerifyReport()
        path = self.table_path(number)
        check_table(self._fs, path, number, report)
        if report.problems:
            raise CorruptionError(path, None, "paranoid check of a table just written: "
                                  + "; ".join(report.problems))
