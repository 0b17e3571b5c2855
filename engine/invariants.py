"""Whole-store checks shared by ``Engine.verify()``, the ``python -m engine`` tool and tests.

Each check re-reads what is on disk through the ordinary decoders -- a
:class:`~engine.errors.CorruptionError` from a decoder is a finding -- and
adds the cross-checks a decoder cannot make alone: key order across blocks,
entry counts against the properties block, size, key range and entry count
against the manifest, and a torn record only in the newest WAL segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.cache import LRUCache
from engine.encoding import FileKind, file_name, parse_file_name
from engine.errors import CorruptionError
from engine.fs import FileSystem
from engine.manifest import CURRENT, Manifest
from engine.sstable import Table
from engine.version import FileMeta
from engine.wal import replay

__all__ = ["VerifyReport", "check_table", "verify_store"]


@dataclass(slots=True)
class VerifyReport:
    """What ``verify()`` read and what it found wrong."""

    tables: int = 0
    blocks: int = 0
    entries: int = 0
    wal_segments: int = 0
    wal_batches: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"{'OK' if self.ok else 'CORRUPT'}: {self.tables} tables, {self.blocks} blocks, "
                f"{self.entries} entries, {self.wal_segments} WAL segments, "
                f"{self.wal_batches} WAL batches")
        return "\n".join([head, *(f"problem: {p}" for p in self.problems),
                          *(f"note: {n}" for n in self.notes)])


def check_table(fs: FileSystem, path: str, number: int, report: VerifyReport) -> None:
    """Open table ``path`` afresh (footer, index, filter, properties) and read every block."""
    try:
        table = Table(fs, path, number, LRUCache(0))
    except (CorruptionError, OSError) as exc:
        report.problems.append(str(exc))
        return
    try:
        _check_blocks(table, report)
    except OSError as exc:
        report.problems.append(f"{path}: read error: {exc}")
    finally:
        table.close()


def _check_blocks(table: Table, report: VerifyReport) -> None:
    """Read every block of ``table``; check key order and the entry count."""
    last: tuple[bytes, int] | None = None
    count = 0
    for i in range(table.num_blocks):
        offset = table.block_offset(i)
        try:
            blk = table.read_block_uncached(i)
        except CorruptionError as exc:
            report.problems.append(str(exc))
            return
        report.blocks += 1
        for j in range(len(blk)):
            ikey = (blk.key(j), -(blk.tags[j] >> 8))
            if last is not None and not last < ikey:
                report.problems.append(
                    f"{table.path} block at offset {offset}: entry {ikey[0]!r} out of order")
                return
            last = ikey
        count += len(blk)
    report.entries += count
    if count != table.props.entries:
        report.problems.append(
            f"{table.path}: {count} entries, properties say {table.props.entries}")
    report.tables += 1


def verify_store(fs: FileSystem, path: str, tables: list[tuple[FileMeta, Table]],
                 num_levels: int, log_number: int) -> VerifyReport:
    """Check the live version's tables, the WAL segments recovery would replay, the manifest.

    A torn tail is normal only in the newest WAL segment (it may be being
    written); in an older live segment recovery refuses it, so it is a problem.
    """
    report = VerifyReport()
    for meta, table in tables:
        check_table(fs, table.path, table.number, report)
        p = table.props
        if (p.file_size, p.smallest, p.largest, p.entries) != (
                meta.size, meta.smallest, meta.largest, meta.entries):
            report.problems.append(f"{table.path}: size, key range or entry count differ from "
                                   f"the manifest's record")
    wals = sorted(num for kind, num in filter(None, map(parse_file_name, fs.listdir(path)))
                  if kind is FileKind.WAL and num >= log_number)
    for number in wals:
        wal_path = fs.join(path, file_name(FileKind.WAL, number))
        try:
            batches, scan = replay(fs, wal_path)
        except CorruptionError as exc:
            report.problems.append(str(exc))
            continue
        except FileNotFoundError:
            continue  # deleted by a flush since the listing
        report.wal_segments += 1
        report.wal_batches += len(batches)
        if scan.torn is not None:
            if number == wals[-1]:
                report.notes.append(f"{wal_path}: incomplete record at offset {scan.valid_end} "
                                    f"({scan.torn}); normal for the segment being written")
            else:
                report.problems.append(f"{wal_path}: {scan.torn} at offset {scan.valid_end} "
                                       f"in a segment that is not the newest")
    if fs.exists(fs.join(path, CURRENT)):
        try:
            Manifest.recover(fs, path, num_levels)
        except (CorruptionError, OSError) as exc:
            report.problems.append(str(exc))
    return report
