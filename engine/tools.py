"""Offline inspection of a store directory: the logic behind ``python -m engine``.

What it owns: reading a store's files *as they are on disk* -- CURRENT, the
manifest, WAL segments, tables -- and turning them into data (dataclasses,
JSON-ready dicts) or text lines. Printing and argument parsing belong to
``engine/__main__.py``; this module prints nothing.

It must not touch the engine's write paths. ``engine.open()`` is never
called: recovery rewrites the manifest, truncates a torn WAL tail, flushes
replayed batches and deletes obsolete files, which is the opposite of what
an inspection tool may do.

Invariants:

1. Read-only. Store files are touched only through ``FileSystem.listdir``,
   ``exists``, ``file_size``, ``read_file`` and ``open_read``; no file is
   created, written, renamed, truncated, locked or removed, so inspecting a
   store leaves it byte-for-byte unchanged (``tests/test_cli.py`` checks
   this). :func:`store_in_use` reads ``/proc/locks`` rather than try the lock.
2. The engine's own decoders decide what is damaged (``record.read_log``,
   ``Manifest.recover``, ``wal.decode_group``, ``sstable.Table``,
   ``invariants.check_table``), so the tool calls corrupt exactly what the
   engine would refuse. The tool adds only cross-checks between files.
3. A *problem* is something that makes ``open`` fail or loses data (any
   :class:`CorruptionError`, a missing table, a torn record in a WAL segment
   that is not the newest). A *note* is harmless: a torn tail of the newest
   WAL segment, a torn last manifest edit, leftovers the next ``open``
   deletes.

A torn tail is reported in the returned data (``torn``), not logged: the
engine's log reader is pure and only recovery, which acts on it, logs it.

Thread-safety: no shared state and no threads; every function stands alone.
Inspecting a store that an engine has open is allowed and reads a moment of
it; files the engine deletes meanwhile are reported as notes, not crashes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.batch import RangeEnd
from engine.block import Block, BlockFormatError
from engine.cache import LRUCache
from engine.encoding import FileKind, Kind, RecordTag, file_name, parse_file_name
from engine.errors import CorruptionError, InvalidArgument
from engine.fs import FileSystem
from engine.invariants import VerifyReport, check_table
from engine.iterators import Cursor, LevelCursor, MemCursor, scan_items
from engine.logfile import read_log_file
from engine.manifest import CURRENT, Manifest, RecoveredState, is_current_temp, read_current
from engine.memtable import MemTable
from engine.options import Options
from engine.record import LogScan, body_records, read_log
from engine.sstable import FOOTER_SIZE, Table, TableProperties
from engine.sstable import MAGIC as TABLE_MAGIC
from engine.version import FileMeta, Version, VersionEdit
from engine.wal import Batch, decode_group

__all__ = [
    "BlockInfo",
    "FileCheck",
    "ManifestLog",
    "StoreStats",
    "StoreView",
    "TableInfo",
    "VerifyResult",
    "WalInfo",
    "dump_manifest",
    "dump_sst",
    "dump_wal",
    "human_bytes",
    "open_table",
    "open_view",
    "read_manifest_log",
    "show_bytes",
    "store_in_use",
    "store_stats",
    "table_blocks",
    "text_table",
    "verify_store_offline",
]

# Documented layouts (FORMAT.md) decoded here for display only; the engine's
# decoders have already checked the bytes (magic, CRC, version) by then.
_LOG_HEADER = struct.Struct("<B8sIBQ")  # tag, magic, format_version, kind, number
_FOOTER_HANDLES = struct.Struct("<QIQIQI")  # index, filter, properties handles
_HANDLE = struct.Struct("<QI")


# --------------------------------------------------------------------------- formatting



def whole_number(text: str) -> int:
    """An argparse type: a count >= 0 (``--limit N``), with a message naming the problem."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n

def human_bytes(n: int) -> str:
    """``n`` bytes for people: ``812 B``, ``4.0 KiB``, ``1.5 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def show_bytes(data: bytes, *, hex_: bool = False, limit: int | None = None) -> str:
    """A key or value for display: a Python bytes literal, or hex; cut after ``limit`` bytes."""
    shown = data if limit is None or len(data) <= limit else data[:limit]
    text = (shown.hex() or "(empty)") if hex_ else repr(shown)
    if len(shown) < len(data):
        text += f"... ({len(data)} bytes)"
    return text


def text_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None
               ) -> list[str]:
    """Rows aligned under ``headers``; columns whose index is in ``right`` align right."""
    right = right or set()
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _seq_range(lo: int | None, hi: int | None) -> str:
    return "-" if lo is None or hi is None else f"{lo}..{hi}"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class ManifestLog:
    """A manifest file decoded edit by edit (``dump-manifest``; the edit count in ``stats``)."""

    path: str
    file_bytes: int
    number: int | None  # from the file header; None if the file has no header
    format_version: int | None
    edits: tuple[tuple[int, VersionEdit], ...]  # (offset, edit)
    torn: str | None  # why the last edit was ignored, if it was
    valid_end: int

    @property
    def num_levels(self) -> int:
        """Levels to replay into: the default, or deeper if an edit adds a file deeper."""
        deepest = max((level for _, e in self.edits for level, _ in e.added), default=0)
        return max(Options().num_levels, deepest + 1)


def _log_header(scan: LogScan) -> tuple[int | None, int | None]:
    """(file number, format version) from a checked log header record."""
    if not scan.records:
        return None, None
    _, _, version, _, number = _LOG_HEADER.unpack(scan.records[0][1])
    return number, version


def read_manifest_log(fs: FileSystem, path: str) -> ManifestLog:
    """Decode every edit of the manifest file ``path``, as strictly as recovery does."""
    records, scan = read_log_file(fs, path, FileKind.MANIFEST, strict_tail=True)
    edits: list[tuple[int, VersionEdit]] = []
    for offset, payload in records:
        if not payload or payload[0] != RecordTag.VERSION_EDIT:
            raise CorruptionError(path, offset, "record is not a version edit")
        edits.append((offset, VersionEdit.decode(payload[1:], path=path, offset=offset)))
    number, version = _log_header(scan)
    return ManifestLog(path, fs.file_size(path), number, version, tuple(edits), scan.torn,
                       scan.valid_end)


def _store_files(fs: FileSystem, path: str) -> list[str]:
    """The directory listing of a store; InvalidArgument if ``path`` is not a store at all."""
    try:
        names = fs.listdir(path)
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such directory") from None
    except NotADirectoryError:
        raise InvalidArgument(f"{path}: not a directory (expected a store directory)") from None
    if CLUSTER_FILE in names:
        raise InvalidArgument(_cluster_message(fs, path, names))
    if CURRENT not in names and not any(parse_file_name(n) for n in names):
        raise InvalidArgument(f"{path}: not a stratakv store (no CURRENT, no store files)")
    return names


# The replication layer's names, recognised only to point the user to its
# tool: engine code never imports replication (dependencies point down).
CLUSTER_FILE = "CLUSTER"
RLOG_MAGIC = b"SKVRLOG1"


def _cluster_message(fs: FileSystem, path: str, names: list[str]) -> str:
    """What to tell a user who pointed an engine command at a cluster directory."""
    stores = []
    for node in sorted(n for n in names if n.startswith("node-")):
        try:
            stores += [fs.join(path, node, e) for e in sorted(fs.listdir(fs.join(path, node)))
                       if e.startswith("engine-")]
        except (FileNotFoundError, NotADirectoryError):
            continue
    hint = ("; its replicas' engine stores are " + ", ".join(stores)) if stores else ""
    return (f"{path} is a stratakv cluster directory (it has a CLUSTER file), not an engine "
            f"store: 'python -m replication stats {path}' shows its nodes, logs and engines"
            f"{hint}")


def _manifest_path(fs: FileSystem, path: str) -> str:
    name, _ = read_current(fs, path)
    manifest = fs.join(path, name)
    if not fs.exists(manifest):
        raise CorruptionError(fs.join(path, CURRENT), None, f"names {name}, which does not exist")
    return manifest


def _recover(fs: FileSystem, path: str) -> tuple[ManifestLog, RecoveredState]:
    """The live manifest, decoded, and the state recovery would start from."""
    log = read_manifest_log(fs, _manifest_path(fs, path))
    return log, Manifest.recover(fs, path, log.num_levels)


def _edit_lines(edit: VersionEdit, hex_: bool) -> list[str]:
    out: list[str] = []
    counters = [f"{name} {value}" for name, value in (
        ("log_number", edit.log_number), ("next_file", edit.next_file),
        ("last_sequence", edit.last_sequence)) if value is not None]
    if counters:
        out.append("  " + ", ".join(counters))
    for level, number in edit.deleted:
        out.append(f"  delete L{level} {file_name(FileKind.TABLE, number)}")
    for level, f in edit.added:
        out.append(f"  add    L{level} {file_name(FileKind.TABLE, f.number)}  "
                   f"{human_bytes(f.size)}, {_plural(f.entries, 'entry', 'entries')}, "
                   f"seq {f.min_seq}..{f.max_seq}, "
                   f"keys {show_bytes(f.smallest, hex_=hex_, limit=40)} .. "
                   f"{show_bytes(f.largest, hex_=hex_, limit=40)}")
    if not out:
        out.append("  (empty edit)")
    return out


def dump_manifest(fs: FileSystem, path: str, *, hex_: bool = False) -> Iterator[str]:
    """Lines describing every version edit of a manifest (a file, or a store directory's live one).

    Raises CorruptionError if a record is damaged (before any edit is shown:
    the log is parsed whole, as strictly as recovery does) or if an edit does
    not apply (after the lines for the edits before it).
    """
    if fs.exists(fs.join(path, CURRENT)):
        manifest = _manifest_path(fs, path)
        yield f"CURRENT names {manifest}"
    else:
        try:
            _store_files(fs, path)  # a directory: a cluster, not a store, or CURRENT lost
        except InvalidArgument as exc:
            if "not a directory" not in str(exc):
                raise
        else:
            raise CorruptionError(fs.join(path, CURRENT), None,
                                  "missing, but the directory holds store files")
        manifest = path
    log = read_manifest_log(fs, manifest)
    yield (f"manifest {manifest}: {human_bytes(log.file_bytes)}, file number {log.number}, "
           f"format version {log.format_version}, {_plural(len(log.edits), 'edit')}")
    version = Version.empty(log.num_levels)
    counters: dict[str, int | None] = {"log_number": None, "next_file": None,
                                       "last_sequence": None}
    for i, (offset, edit) in enumerate(log.edits, 1):
        yield f"edit {i} @ offset {offset}:"
        yield from _edit_lines(edit, hex_)
        try:
            version = version.apply(edit)
        except ValueError as exc:
            raise CorruptionError(manifest, offset, f"edit does not apply: {exc}") from None
        for name in counters:
            value = getattr(edit, name)
            if value is not None:
                counters[name] = value
    if log.torn is not None:
        yield (f"note: torn last edit at offset {log.valid_end} ({log.torn}); recovery "
               "ignores it")
    yield "resulting version: " + ", ".join(f"{k} {v}" for k, v in counters.items())
    if not any(version.levels):
        yield "  (no tables)"
    for level, files in enumerate(version.levels):
        if files:
            yield (f"  L{level}: {_plural(len(files), 'table')}, "
                   f"{human_bytes(sum(f.size for f in files))}: "
                   + " ".join(str(f.number) for f in files))
    try:
        version.check()
    except ValueError as exc:
        raise CorruptionError(manifest, None, f"resulting version is inconsistent: {exc}"
                              ) from None


# --------------------------------------------------------------------------- WAL


@dataclass(frozen=True, slots=True)
class WalInfo:
    """One WAL segment as found on disk."""

    number: int
    name: str
    file_bytes: int
    live: bool  # number >= the manifest's log number: recovery replays it
    batches: int = 0
    operations: int = 0
    min_seq: int | None = None
    max_seq: int | None = None
    torn: str | None = None  # reason, when the segment ends in a torn record
    valid_end: int = 0
    error: str | None = None  # CorruptionError message

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "number": self.number, "bytes": self.file_bytes,
                "live": self.live, "batches": self.batches, "operations": self.operations,
                "min_seq": self.min_seq, "max_seq": self.max_seq, "torn": self.torn,
                "valid_end": self.valid_end, "error": self.error}


def _read_wal(fs: FileSystem, path: str) -> tuple[list[tuple[int, list[Batch]]], LogScan]:
    """(offset, batches) per write group, and the scan; CorruptionError on mid-log damage."""
    records, scan = read_log_file(fs, path, FileKind.WAL)
    groups: list[tuple[int, list[Batch]]] = []
    last = 0
    for offset, payload in records:
        batches = decode_group(payload, path=path, offset=offset)
        for seq, _ in batches:
            if seq <= last:
                raise CorruptionError(path, offset, f"sequence {seq} after {last}")
            last = seq
        groups.append((offset, batches))
    return groups, scan


def _wal_info(fs: FileSystem, dirname: str, number: int, live: bool) -> WalInfo:
    name = file_name(FileKind.WAL, number)
    path = fs.join(dirname, name)
    size = fs.file_size(path)
    try:
        groups, scan = _read_wal(fs, path)
    except CorruptionError as exc:
        return WalInfo(number, name, size, live, error=str(exc))
    seqs = [seq for _, batches in groups for seq, _ in batches]
    return WalInfo(number, name, size, live,
                   batches=len(seqs),
                   operations=sum(len(ops) for _, batches in groups for _, ops in batches),
                   min_seq=seqs[0] if seqs else None, max_seq=seqs[-1] if seqs else None,
                   torn=scan.torn, valid_end=scan.valid_end)


def _op_line(key: bytes, value: bytes | None, hex_: bool, limit: int | None) -> str:
    if value is None:
        return f"    DELETE {show_bytes(key, hex_=hex_, limit=limit)}"
    if type(value) is RangeEnd:
        return (f"    DELETE_RANGE [{show_bytes(key, hex_=hex_, limit=limit)}, "
                f"{show_bytes(value, hex_=hex_, limit=limit)})")
    return (f"    PUT    {show_bytes(key, hex_=hex_, limit=limit)} : "
            f"{show_bytes(value, hex_=hex_, limit=limit)}")


def dump_wal(fs: FileSystem, path: str, *, limit: int | None = None, hex_: bool = False,
             value_limit: int | None = 100) -> Iterator[str]:
    """Lines for every write group, batch and operation of WAL segment ``path``.

    ``limit`` caps the batches shown (the summary still counts all). A torn
    tail ends the output with a note; damage followed by valid records
    raises CorruptionError after the lines for the records before it.
    """
    data = fs.read_file(path)
    try:
        first = read_log(path, data).records[:1]
    except CorruptionError:
        first = []
    if first and first[0][1].startswith(RLOG_MAGIC):
        raise InvalidArgument(
            f"{path} is a replication log segment (magic {RLOG_MAGIC.decode()}), not an engine "
            f"WAL segment: use 'python -m replication dump-rlog {path}'")
    if data.endswith(TABLE_MAGIC) and not first:
        raise InvalidArgument(f"{path} is a table, not a WAL segment: use dump-sst")
    try:
        groups, scan = _read_wal(fs, path)
    except CorruptionError as exc:
        # Show what precedes the damage, then let the caller report it.
        if exc.offset is not None and exc.offset > 0:
            yield from _dump_wal_prefix(path, data, exc.offset, limit, hex_, value_limit)
        raise
    yield from _wal_lines(path, len(data), groups, scan, limit, hex_, value_limit)


def _dump_wal_prefix(path: str, data: bytes, damage: int, limit: int | None, hex_: bool,
                     value_limit: int | None) -> Iterator[str]:
    """The lines for the records of ``data`` before offset ``damage`` (best effort)."""
    try:
        scan = read_log(path, data[:damage])
        records = body_records(path, scan, FileKind.WAL)
        groups = [(off, decode_group(p, path=path, offset=off)) for off, p in records]
    except CorruptionError:
        return
    for line in _wal_lines(path, len(data), groups, LogScan(scan.records, damage, None),
                           limit, hex_, value_limit):
        if not line.startswith("summary"):
            yield line
    yield f"(the records before offset {damage}; the damage starts there)"


def _wal_lines(path: str, size: int, groups: list[tuple[int, list[Batch]]], scan: LogScan,
               limit: int | None, hex_: bool, value_limit: int | None) -> Iterator[str]:
    number, version = _log_header(scan)
    yield (f"WAL segment {path}: {human_bytes(size)}, file number {number}, "
           f"format version {version}")
    shown = 0
    batches = operations = 0
    first = last = None
    for offset, group in groups:
        if limit is None or shown < limit:
            yield f"write group @ offset {offset}: {_plural(len(group), 'batch', 'batches')}"
        for seq, ops in group:
            batches += 1
            operations += len(ops)
            first = seq if first is None else first
            last = seq
            if limit is not None and shown >= limit:
                continue
            shown += 1
            yield f"  batch seq {seq}: {_plural(len(ops), 'op')}"
            for key, value in ops.items():
                yield _op_line(key, value, hex_, value_limit)
    if limit is not None and batches > shown:
        yield f"... {_plural(batches - shown, 'more batch', 'more batches')} not shown " \
              f"(--limit {limit})"
    yield (f"summary: {_plural(len(groups), 'write group')}, {batches} batches, "
           f"{operations} operations, sequences {_seq_range(first, last)}")
    if scan.torn is not None:
        yield (f"note: torn tail at offset {scan.valid_end} ({scan.torn}): "
               f"{size - scan.valid_end} bytes that recovery cuts off (normal after a crash "
               "in the newest segment; corruption in an older one)")


# --------------------------------------------------------------------------- tables


def open_table(fs: FileSystem, path: str) -> Table:
    """Open table ``path`` with no block cache (every read goes to the file and is checked)."""
    parsed = parse_file_name(path.rsplit("/", 1)[-1])
    number = parsed[1] if parsed is not None and parsed[0] is FileKind.TABLE else 0
    return Table(fs, path, number, LRUCache(0))


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """One data block: where it is, how big, what it holds."""

    index: int
    offset: int
    stored_bytes: int  # body as stored (compressed if lz4), without type and crc
    raw_bytes: int  # body after decompression
    entries: int
    first_key: bytes
    last_key: bytes

    @property
    def compression(self) -> str:
        return "lz4" if self.raw_bytes != self.stored_bytes else "raw"


def _block_handles(fs: FileSystem, table: Table) -> list[tuple[int, int]]:
    """The (offset, size) of every data block, from the footer and index block."""
    f = fs.open_read(table.path)
    try:
        head = f.pread(_FOOTER_HANDLES.size, f.size() - FOOTER_SIZE)
    finally:
        f.close()
    ioff, isize = _FOOTER_HANDLES.unpack(head)[:2]
    index = _decode_block(table, ioff, table.read_body(ioff, isize, "index"), "index")
    return [_HANDLE.unpack(index.value(i) or b"") for i in range(len(index))]


def _decode_block(table: Table, offset: int, body: bytes, what: str) -> Block:
    try:
        return Block(body)
    except BlockFormatError as exc:
        raise CorruptionError(table.path, offset, f"{what} block: {exc}") from None


def table_blocks(fs: FileSystem, table: Table) -> Iterator[tuple[BlockInfo, Block]]:
    """Every data block of ``table``, read and checked, with its summary."""
    for i, (offset, size) in enumerate(_block_handles(fs, table)):
        body = table.read_body(offset, size, "data")
        blk = _decode_block(table, offset, body, "data")
        n = len(blk)
        yield (BlockInfo(i, offset, size, len(body), n, blk.key(0) if n else b"",
                         blk.key(n - 1) if n else b""), blk)


def _property_lines(p: TableProperties, hex_: bool) -> list[str]:
    rows = [
        ("file_size", f"{p.file_size} ({human_bytes(p.file_size)})"),
        ("format_version", str(p.format_version)),
        ("compression", p.compression),
        ("data_blocks", str(p.data_blocks)),
        ("entries", str(p.entries)),
        ("deletions", str(p.deletions)),
        ("min_seq", str(p.min_seq)),
        ("max_seq", str(p.max_seq)),
        ("raw_key_bytes", str(p.raw_key_bytes)),
        ("raw_value_bytes", str(p.raw_value_bytes)),
        ("smallest", show_bytes(p.smallest, hex_=hex_)),
        ("largest", show_bytes(p.largest, hex_=hex_)),
    ]
    rows += [("range_tombstone", f"[{show_bytes(lo, hex_=hex_)}, {show_bytes(hi, hex_=hex_)}) "
                                 f"@ {seq}") for lo, hi, seq in p.range_tombstones]
    width = max(len(name) for name, _ in rows)
    return [f"  {name.ljust(width)}  {value}" for name, value in rows]


def dump_sst(fs: FileSystem, path: str, *, limit: int | None = None, blocks: bool = False,
             hex_: bool = False, value_limit: int | None = 100) -> Iterator[str]:
    """Lines: the table's properties, optionally a block summary, then its entries.

    ``limit`` caps the entries shown (reading stops there). Raises
    CorruptionError, after the lines already produced, at the first damage.
    """
    table = open_table(fs, path)
    try:
        yield f"table {path}"
        yield "properties:"
        yield from _property_lines(table.props, hex_)
        if blocks:
            rows = [[str(b.index), str(b.offset), str(b.stored_bytes), str(b.raw_bytes),
                     b.compression, str(b.entries), show_bytes(b.first_key, hex_=hex_, limit=32),
                     show_bytes(b.last_key, hex_=hex_, limit=32)]
                    for b, _ in table_blocks(fs, table)]
            yield f"blocks ({len(rows)}):"
            yield from ("  " + line for line in text_table(
                ["#", "offset", "stored", "raw", "type", "entries", "first key", "last key"],
                rows, right={0, 1, 2, 3, 5}))
        if limit == 0:
            return
        yield "entries:"
        shown = 0
        for _, blk in table_blocks(fs, table):
            for key, negseq, value in blk.entries(0, len(blk)):
                if limit is not None and shown >= limit:
                    yield f"... more entries not shown (--limit {limit})"
                    return
                shown += 1
                k = show_bytes(key, hex_=hex_)
                if value is None:
                    yield f"  {k} @ {-negseq} : {Kind.DELETE.name}"
                else:
                    yield (f"  {k} @ {-negseq} : {Kind.PUT.name} "
                           f"{show_bytes(value, hex_=hex_, limit=value_limit)}")
    finally:
        table.close()


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table of the live version: the manifest's record plus what the directory holds."""

    level: int
    meta: FileMeta
    name: str
    file_bytes: int | None  # None: the file is missing

    def to_json(self) -> dict[str, Any]:
        m = self.meta
        return {"level": self.level, "name": self.name, "number": m.number,
                "bytes": self.file_bytes, "manifest_bytes": m.size, "entries": m.entries,
                "min_seq": m.min_seq, "max_seq": m.max_seq,
                "smallest_hex": m.smallest.hex(), "largest_hex": m.largest.hex()}


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What ``stats`` reports, gathered without opening the store."""

    path: str
    manifest: ManifestLog
    state: RecoveredState
    tables: tuple[TableInfo, ...]
    wals: tuple[WalInfo, ...]
    other_files: tuple[tuple[str, int], ...]  # (name, bytes): CURRENT, LOCK, leftovers
    in_use: bool | None = None  # an engine holds LOCK (None: cannot tell)

    @property
    def total_bytes(self) -> int:
        return (sum(t.file_bytes or 0 for t in self.tables) + self.manifest.file_bytes
                + sum(w.file_bytes for w in self.wals) + sum(n for _, n in self.other_files))

    @property
    def last_sequence_with_wal(self) -> int:
        """The sequence recovery would reach: the manifest's, or the newest live WAL batch."""
        seqs = [w.max_seq for w in self.wals if w.live and w.max_seq is not None]
        return max([self.state.last_sequence, *seqs])

    def levels(self) -> list[tuple[int, int, int, int]]:
        """(level, files, bytes, entries) through the deepest non-empty level (at least L0)."""
        version = self.state.version
        deepest = max((lv for lv, files in enumerate(version.levels) if files), default=0)
        return [(lv, len(files), sum(f.size for f in files), sum(f.entries for f in files))
                for lv, files in enumerate(version.levels[: deepest + 1])]

    def to_json(self) -> dict[str, Any]:
        s = self.state
        return {
            "path": self.path,
            "in_use": self.in_use,
            "manifest": {"name": self.manifest.path.rsplit("/", 1)[-1],
                         "bytes": self.manifest.file_bytes, "edits": len(self.manifest.edits),
                         "torn_last_edit": self.manifest.torn},
            "log_number": s.log_number,
            "next_file": s.next_file,
            "last_sequence": s.last_sequence,
            "last_sequence_with_wal": self.last_sequence_with_wal,
            "levels": [{"level": lv, "files": n, "bytes": b, "entries": e}
                       for lv, n, b, e in self.levels()],
            "tables": [t.to_json() for t in self.tables],
            "table_bytes": sum(t.file_bytes or 0 for t in self.tables),
            "missing_tables": [t.name for t in self.tables if t.file_bytes is None],
            "wal_segments": [w.to_json() for w in self.wals],
            "wal_bytes": sum(w.file_bytes for w in self.wals),
            "other_files": [{"name": n, "bytes": b} for n, b in self.other_files],
            "total_bytes": self.total_bytes,
        }

    def lines(self, hex_: bool = False) -> list[str]:
        s = self.state
        live = [w for w in self.wals if w.live]
        table_bytes = sum(t.file_bytes or 0 for t in self.tables)
        manifest_name = self.manifest.path.rsplit("/", 1)[-1]
        in_use = {True: "yes: an engine has it open (figures may be a moment old)",
                  False: "no", None: "unknown"}[self.in_use]
        summary = [
            ("store", self.path),
            ("in use", in_use),
            ("manifest", f"{manifest_name} ({human_bytes(self.manifest.file_bytes)}, "
                         f"{_plural(len(self.manifest.edits), 'edit')})"),
            ("log number", str(s.log_number)),
            ("next file", str(s.next_file)),
            ("last sequence", f"{s.last_sequence} in tables, "
                              f"{self.last_sequence_with_wal} with the WAL"),
            ("tables", f"{_plural(len(self.tables), 'file')}, {human_bytes(table_bytes)}, "
                       f"{sum(t.meta.entries for t in self.tables)} entries"),
            ("WAL", f"{_plural(len(live), 'live segment')}, "
                    f"{sum(w.batches for w in live)} batches, "
                    f"{human_bytes(sum(w.file_bytes for w in live))}"),
            ("total", f"{human_bytes(self.total_bytes)} ({self.total_bytes} bytes)"),
        ]
        width = max(len(k) for k, _ in summary)
        out = [f"{k.ljust(width)}  {v}" for k, v in summary]
        out.append("")
        out += text_table(["level", "files", "bytes", "entries"],
                          [[f"L{lv}", str(n), human_bytes(b), str(e)]
                           for lv, n, b, e in self.levels()], right={1, 2, 3})
        if self.tables:
            out.append("")
            out += text_table(
                ["level", "table", "bytes", "entries", "sequences", "smallest", "largest"],
                [[f"L{t.level}", t.name,
                  "MISSING" if t.file_bytes is None else human_bytes(t.file_bytes),
                  str(t.meta.entries), _seq_range(t.meta.min_seq, t.meta.max_seq),
                  show_bytes(t.meta.smallest, hex_=hex_, limit=24),
                  show_bytes(t.meta.largest, hex_=hex_, limit=24)] for t in self.tables],
                right={2, 3})
        if self.wals:
            out.append("")
            newest = max((w.number for w in live), default=None)
            rows = []
            for w in self.wals:
                if not w.live:
                    state = "obsolete (deleted on open)"
                elif w.error is not None:
                    state = "CORRUPT (run verify)"
                else:
                    state = "live, newest" if w.number == newest else "live"
                    if w.torn is not None:
                        state += f", torn tail at {w.valid_end}"
                rows.append([w.name, human_bytes(w.file_bytes), str(w.batches),
                             str(w.operations), _seq_range(w.min_seq, w.max_seq), state])
            out += text_table(["WAL segment", "bytes", "batches", "ops", "sequences", "state"],
                              rows, right={1, 2, 3})
        if self.other_files:
            out.append("")
            out.append("other files: " + ", ".join(f"{n} ({human_bytes(b)})"
                                                  for n, b in self.other_files))
        return out


def store_stats(fs: FileSystem, path: str) -> StoreStats:
    """Inspect the store in ``path`` from its files, without opening (or changing) it.

    Raises InvalidArgument if ``path`` is not a store and CorruptionError if
    its CURRENT or manifest cannot be read (``verify`` says more).
    """
    names = _store_files(fs, path)
    if CURRENT not in names:
        raise CorruptionError(fs.join(path, CURRENT), None,
                              "missing, but the directory holds store files")
    manifest, state = _recover(fs, path)
    names = fs.listdir(path)  # again, after the manifest: a running engine may have moved on
    live_tables = {f.number for _, f in state.version.files()}
    tables = []
    for level, f in state.version.files():
        name = file_name(FileKind.TABLE, f.number)
        tables.append(TableInfo(level, f, name, _size_or_none(fs, fs.join(path, name))))
    wals: list[WalInfo] = []
    others: list[tuple[str, int]] = []
    manifest_name = manifest.path.rsplit("/", 1)[-1]
    for name in names:
        parsed = parse_file_name(name)
        full = fs.join(path, name)
        if name == manifest_name or (parsed is not None and parsed[0] is FileKind.TABLE
                                     and parsed[1] in live_tables):
            continue
        try:
            if parsed is not None and parsed[0] is FileKind.WAL:
                wals.append(_wal_info(fs, path, parsed[1], parsed[1] >= state.log_number))
            else:
                others.append((name, fs.file_size(full)))
        except FileNotFoundError:
            continue  # deleted by a running engine since the listing
    return StoreStats(path, manifest, state, tuple(tables), tuple(wals), tuple(others),
                      store_in_use(path))


def _size_or_none(fs: FileSystem, path: str) -> int | None:
    try:
        return fs.file_size(path)
    except FileNotFoundError:
        return None


def store_in_use(path: str) -> bool | None:
    """Whether some process holds the store's ``LOCK`` (an engine has it open).

    Read from ``/proc/locks`` (Linux), never by trying the lock: taking it,
    even briefly, could make a concurrent ``engine.open`` fail. ``None``
    when it cannot be told. Works on real paths only, not through a
    FileSystem: a lock is a property of the OS, not of the files.
    """
    try:
        st = os.stat(os.path.join(path, "LOCK"))
    except FileNotFoundError:
        return False  # no LOCK file: no engine has the store open
    except OSError:
        return None
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in text.splitlines():
        for word in line.split():
            parts = word.split(":")
            if len(parts) == 3 and all(parts):
                try:
                    ident = (int(parts[0], 16), int(parts[1], 16), int(parts[2]))
                except ValueError:
                    continue
                if ident == want:
                    return True
    return False


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True, slots=True)
class FileCheck:
    """One line of the verify report: a file, what it is, and what was found."""

    name: str
    role: str  # "CURRENT", "manifest", "table L1", "WAL live", ...
    status: str  # "ok" | "note" | "problem"
    detail: str


@dataclass(slots=True)
class VerifyResult:
    """The counters and findings of :class:`VerifyReport`, plus a line per file."""

    path: str
    report: VerifyReport = field(default_factory=VerifyReport)
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def ok_line(self, name: str, role: str, detail: str) -> None:
        self.checks.append(FileCheck(name, role, "ok", detail))

    def problem(self, name: str, role: str, message: str) -> None:
        self.report.problems.append(message)
        self.checks.append(FileCheck(name, role, "problem", message))

    def note(self, name: str, role: str, message: str) -> None:
        self.report.notes.append(message)
        self.checks.append(FileCheck(name, role, "note", message))

    def summary(self) -> str:
        r = self.report
        head = "OK" if r.ok else "CORRUPT"
        return (f"{head}: {_plural(r.tables, 'table')}, {r.blocks} blocks, {r.entries} entries, "
                f"{_plural(r.wal_segments, 'WAL segment')}, {r.wal_batches} WAL batches; "
                f"{_plural(len(r.problems), 'problem')}, {_plural(len(r.notes), 'note')}")

    def lines(self) -> list[str]:
        labels = {"ok": "ok", "note": "note", "problem": "PROBLEM"}
        rows = [[labels[c.status], c.name, c.role, c.detail] for c in self.checks]
        return [f"verify {self.path}", *text_table(["status", "file", "role", "detail"], rows),
                self.summary()]

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {"path": self.path, "ok": r.ok, "tables": r.tables, "blocks": r.blocks,
                "entries": r.entries, "wal_segments": r.wal_segments,
                "wal_batches": r.wal_batches, "problems": list(r.problems),
                "notes": list(r.notes),
                "files": [{"name": c.name, "role": c.role, "status": c.status,
                           "detail": c.detail} for c in self.checks]}


def _compare_props(p: TableProperties, m: FileMeta) -> list[str]:
    """How a table's own properties disagree with the manifest's record of it."""
    out = []
    for what, have, want in (("file size", p.file_size, m.size),
                             ("entries", p.entries, m.entries),
                             ("min_seq", p.min_seq, m.min_seq),
                             ("max_seq", p.max_seq, m.max_seq),
                             ("smallest key", p.smallest, m.smallest),
                             ("largest key", p.largest, m.largest)):
        if have != want:
            out.append(f"{what} is {have!r}, the manifest says {want!r}")
    return out


def _verify_table(fs: FileSystem, result: VerifyResult, path: str, name: str, role: str,
                  meta: FileMeta | None, last_sequence: int | None) -> None:
    try:
        table = open_table(fs, path)
    except FileNotFoundError:
        result.note(name, role, f"{path}: deleted while verifying (an engine has the store open)")
        return
    except (CorruptionError, OSError) as exc:
        result.problem(name, role, str(exc))
        return
    try:
        props = table.props
        number = table.number
    finally:
        table.close()
    r = result.report
    before, blocks, entries = len(r.problems), r.blocks, r.entries
    check_table(fs, path, number, r)
    for message in r.problems[before:]:
        result.checks.append(FileCheck(name, role, "problem", message))
    bad = len(r.problems) > before
    if meta is not None:
        for mismatch in _compare_props(props, meta):
            result.problem(name, role, str(CorruptionError(path, None, mismatch)))
            bad = True
    if last_sequence is not None and props.max_seq > last_sequence:
        result.problem(name, role, str(CorruptionError(
            path, None, f"holds sequence {props.max_seq}, beyond the manifest's last "
                        f"sequence {last_sequence}")))
        bad = True
    if not bad:
        result.ok_line(name, role, f"{r.blocks - blocks} blocks, {r.entries - entries} entries, "
                                   f"seq {props.min_seq}..{props.max_seq}")


def _still_live(fs: FileSystem, path: str, number: int) -> bool:
    """Whether table ``number`` is in the live version now (an open engine may have moved on)."""
    try:
        _, state = _recover(fs, path)
    except (CorruptionError, OSError):
        return True
    return any(f.number == number for _, f in state.version.files())


def _verify_wals(fs: FileSystem, result: VerifyResult, path: str, names: list[str],
                 state: RecoveredState | None) -> None:
    log_number = state.log_number if state is not None else 0
    numbers = sorted(p[1] for p in map(parse_file_name, names)
                     if p is not None and p[0] is FileKind.WAL)
    live = [n for n in numbers if n >= log_number]
    last = state.last_sequence if state is not None else 0
    for number in numbers:
        name = file_name(FileKind.WAL, number)
        wal_path = fs.join(path, name)
        is_live = number >= log_number
        newest = bool(live) and number == live[-1]
        role = "WAL newest" if newest else "WAL live" if is_live else "WAL obsolete"
        try:
            groups, scan = _read_wal(fs, wal_path)
        except FileNotFoundError:
            result.note(name, role, f"{wal_path}: deleted while verifying (a running engine)")
            continue
        except CorruptionError as exc:
            if is_live:
                result.problem(name, role, str(exc))
            else:
                result.note(name, role, f"{exc} (segment is obsolete: recovery ignores it and "
                                        "deletes it)")
            continue
        batches = [seq for _, group in groups for seq, _ in group]
        r = result.report
        r.wal_segments += 1
        r.wal_batches += len(batches)
        problems: list[str] = []
        notes: list[str] = []
        if scan.torn is not None:
            if newest or not is_live:
                notes.append(f"{wal_path}: torn record at offset {scan.valid_end} "
                             f"({scan.torn}); recovery cuts it off (normal after a crash)")
            else:
                problems.append(str(CorruptionError(
                    wal_path, scan.valid_end,
                    f"{scan.torn} in a WAL segment that is not the newest; open would fail")))
        if is_live and batches and batches[0] <= last:
            problems.append(str(CorruptionError(
                wal_path, None, f"sequence {batches[0]} does not follow {last} (the "
                                "manifest's last sequence or the previous segment's); "
                                "open would fail")))
        if is_live and batches:
            last = max(last, batches[-1])
        if not problems:
            seqs = _seq_range(batches[0], batches[-1]) if batches else "-"
            result.ok_line(name, role, f"{len(batches)} batches, seq {seqs}")
        for message in problems:
            result.problem(name, role, message)
        for message in notes:
            result.note(name, role, message)


def verify_store_offline(fs: FileSystem, path: str) -> VerifyResult:
    """Check CURRENT, the manifest, every live table (every block) and every WAL segment.

    Never raises for damage: every finding lands in the result. Raises
    InvalidArgument only if ``path`` is not a store directory.
    """
    names = _store_files(fs, path)
    result = VerifyResult(path)
    if store_in_use(path):
        result.note("LOCK", "lock", f"{path}: an engine has the store open; files it deletes "
                                    "while this runs are noted, and Engine.verify() is the "
                                    "race-free check of a live store")
    state: RecoveredState | None = None
    manifest_name = None
    if CURRENT not in names:
        result.problem(CURRENT, "CURRENT", f"{fs.join(path, CURRENT)}: missing, but the "
                                           "directory holds store files")
    else:
        try:
            manifest_path = _manifest_path(fs, path)
        except CorruptionError as exc:
            result.problem(CURRENT, "CURRENT", str(exc))
        else:
            manifest_name = manifest_path.rsplit("/", 1)[-1]
            result.ok_line(CURRENT, "CURRENT", f"names {manifest_name}")
            try:
                log = read_manifest_log(fs, manifest_path)
                state = Manifest.recover(fs, path, log.num_levels)
            except CorruptionError as exc:
                result.problem(manifest_name, "manifest", str(exc))
            else:
                result.ok_line(manifest_name, "manifest",
                               f"{_plural(len(log.edits), 'edit')}; "
                               f"{_plural(len(state.version.files()), 'table')}, log number "
                               f"{state.log_number}, last sequence {state.last_sequence}")
                if log.torn is not None:
                    result.note(manifest_name, "manifest",
                                f"{manifest_path}: torn last edit at offset {log.valid_end} "
                                f"({log.torn}); recovery ignores it")
    names = fs.listdir(path)  # again, after the manifest: a running engine may have moved on
    tables = sorted(p[1] for p in map(parse_file_name, names)
                    if p is not None and p[0] is FileKind.TABLE)
    if state is not None:
        referenced = set()
        for level, meta in state.version.files():
            name = file_name(FileKind.TABLE, meta.number)
            referenced.add(meta.number)
            role = f"table L{level}"
            if not fs.exists(fs.join(path, name)):
                if _still_live(fs, path, meta.number):
                    result.problem(name, role, str(CorruptionError(
                        fs.join(path, name), None, f"missing, but {manifest_name} lists it in "
                                                   f"L{level}")))
                else:
                    result.note(name, role, f"{fs.join(path, name)}: deleted while verifying "
                                            "(an engine has the store open)")
                continue
            _verify_table(fs, result, fs.join(path, name), name, role, meta,
                          state.last_sequence)
        for number in tables:
            if number not in referenced:
                name = file_name(FileKind.TABLE, number)
                result.note(name, "table unreferenced",
                            f"{fs.join(path, name)}: not in the manifest (an unfinished flush "
                            "or compaction, or one running now); open deletes it")
    else:  # the manifest is unreadable: still check every table there is
        for number in tables:
            name = file_name(FileKind.TABLE, number)
            _verify_table(fs, result, fs.join(path, name), name, "table ?", None, None)
    _verify_wals(fs, result, path, names, state)
    for name in names:
        parsed = parse_file_name(name)
        if is_current_temp(name):
            result.note(name, "temporary", f"{fs.join(path, name)}: an unfinished CURRENT "
                                           "update; open deletes it")
        elif (parsed is not None and parsed[0] is FileKind.MANIFEST and manifest_name
              and name != manifest_name):
            result.note(name, "manifest old", f"{fs.join(path, name)}: not the live manifest; "
                                              "open deletes it")
    return result


# --------------------------------------------------------------------------- get / scan


class StoreView:
    """What a store holds, read from its files without recovery (``get`` and ``scan``).

    The live version's tables plus the batches of the WAL segments recovery
    would replay, in an in-memory memtable: what ``engine.open`` would show,
    without truncating a torn tail, flushing or deleting anything. Close it
    (or use it as a context manager) to close the table files.
    """

    def __init__(self, fs: FileSystem, path: str) -> None:
        names = _store_files(fs, path)
        if CURRENT not in names:
            raise CorruptionError(fs.join(path, CURRENT), None,
                                  "missing, but the directory holds store files")
        _, state = _recover(fs, path)
        self.path = path
        self._tables: list[Table] = []
        self._l0: list[Table] = []
        self._levels: list[list[Table]] = []
        try:
            for level, files in enumerate(state.version.levels):
                opened = []
                for f in files:
                    opened.append(open_table(fs, fs.join(path, file_name(FileKind.TABLE,
                                                                         f.number))))
                    self._tables.append(opened[-1])
                if level == 0:
                    self._l0 = opened
                elif opened:
                    self._levels.append(opened)
            self._mem, self.sequence = self._replay_wal(fs, path, names, state)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _replay_wal(fs: FileSystem, path: str, names: list[str], state: RecoveredState
                    ) -> tuple[MemTable, int]:
        """The live WAL segments' batches, checked as recovery checks them, in a memtable."""
        numbers = sorted(p[1] for p in map(parse_file_name, names)
                         if p is not None and p[0] is FileKind.WAL and p[1] >= state.log_number)
        mem = MemTable(0)
        last = state.last_sequence
        for i, number in enumerate(numbers):
            wal_path = fs.join(path, file_name(FileKind.WAL, number))
            groups, scan = _read_wal(fs, wal_path)
            if scan.torn is not None and i != len(numbers) - 1:
                raise CorruptionError(wal_path, scan.valid_end,
                                      f"{scan.torn} in a WAL segment that is not the newest")
            for _, batches in groups:
                for seq, ops in batches:
                    if seq <= last:
                        raise CorruptionError(wal_path, None,
                                              f"sequence {seq} does not follow {last}")
                    mem.add(seq, ops)
                    last = seq
        return mem, last

    def scan(self, start: bytes | None = None, end: bytes | None = None
             ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) with ``start <= key < end``, ascending, as of the last write."""
        if start is not None and end is not None and start >= end:
            return iter(())
        cursors: list[Cursor] = [MemCursor(self._mem, start, end, False)] if len(self._mem) \
            else []
        cursors += [t.cursor(start, end, False) for t in self._l0]
        cursors += [LevelCursor(tables, start, end, False) for tables in self._levels]
        return scan_items(cursors, self.sequence, False)

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None if it is absent or deleted."""
        for found, value in self.scan(key, key + b"\x00"):
            return value if found == key else None
        return None

    def close(self) -> None:
        for t in self._tables:
            t.close()
        self._tables = []

    def __enter__(self) -> StoreView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_view(fs: FileSystem, path: str) -> StoreView:
    """A read-only :class:`StoreView` of the store in ``path``."""
    return StoreView(fs, path)
