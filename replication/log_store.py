"""One node's durable copy of the replicated log.

A node keeps its log in one segment file ``<n>.rlog`` framed like the
engine's WAL (32 KiB blocks of crc32c-checked fragments, :mod:`engine.record`)::

    segment := header record*
    header  := magic[8]="SKVRLOG1" format_version:u32 node:u32
    record  := ENTRY=1 index:u64 term:u64 payload
             | TRUNCATE=2 from_index:u64            entries >= from_index are gone
             | TERM=3 term:u64                      the node's current term (hard state)
             | BASE=4 index:u64 term:u64            the log now starts after (index, term)

Appends are buffered and made durable together by :meth:`NodeLog.sync`
(group commit: one ``write`` and one ``fdatasync`` for everything appended
since the last sync). Compacting the prefix writes a new segment that starts
with a BASE record and holds the retained entries, as ``<n>.rlog.tmp``,
syncs it, renames it into place and syncs the directory; recovery reads the
newest complete segment. A torn tail is cut off; damage followed by valid
records is :class:`engine.CorruptionError`.

Thread-safety: ``append``/``truncate``/``set_term`` and the queries may be
called from any thread (they take ``_lock`` briefly); ``sync``, ``compact``,
``reset`` and ``close`` are called by one thread at a time (the consensus
driver).
"""

from __future__ import annotations

import errno
import logging
import struct
import threading

from engine.errors import CorruptionError
from engine.fs import FileSystem, WritableFile
from engine.record import LogWriter, read_log
from replication.consensus import LogEntry

__all__ = ["NodeLog"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MAGIC = b"SKVRLOG1"
_HEADER = struct.Struct("<8sII")
_ENTRY = struct.Struct("<BQQ")
_U64 = struct.Struct("<BQ")
_BASE = struct.Struct("<BQQ")
ENTRY, TRUNCATE, TERM, BASE = 1, 2, 3, 4


class NodeLog:
    """The replicated log as one node stores it: entries after a base, plus its term."""

    def __init__(self, fs: FileSystem, dirname: str, node: int) -> None:
        self._fs = fs
        self._dir = dirname
        self._node = node
        self._lock = threading.Lock()
        self.base_index = 0  # entries <= base were compacted away
        self.base_term = 0
        self.term = 0
        self.entries: list[LogEntry] = []
        self._pending: list[bytes] = []
        self._failed: BaseException | None = None  # a sync failed: fail-stop until reopened
        fs.mkdirs(dirname)
        self._segment, self._file, self._writer = self._recover()

    # -- recovery and segments -------------------------------------------------

    def _segments(self) -> list[int]:
        out = []
        for name in self._fs.listdir(self._dir):
            if name.endswith(".rlog.tmp"):
                self._fs.remove(self._fs.join(self._dir, name))
            elif name.endswith(".rlog") and name[:-5].isdigit():
                out.append(int(name[:-5]))
        return sorted(out)

    def _path(self, number: int) -> str:
        return self._fs.join(self._dir, f"{number:06d}.rlog")

    def _recover(self) -> tuple[int, WritableFile, LogWriter]:
        segments = self._segments()
        if not segments:
            number = 1
            self._write_segment(number)
        else:
            number = segments[-1]
            for old in segments[:-1]:
                self._fs.remove(self._path(old))
            self._replay(self._path(number))
        f = self._fs.open_append(self._path(number))
        return number, f, LogWriter(f, offset=f.size())

    def _replay(self, path: str) -> None:
        scan = read_log(path, self._fs.read_file(path))
        if scan.torn is not None:
            log.warning("%s: cutting torn tail at offset %d (%s)", path, scan.valid_end,
                        scan.torn)
            self._fs.truncate(path, scan.valid_end)
        if not scan.records:
            raise CorruptionError(path, 0, "replication log segment has no header")
        offset, head = scan.records[0]
        if len(head) != _HEADER.size:
            raise CorruptionError(path, offset, "bad replication log header")
        magic, version, node = _HEADER.unpack(head)
        if magic != _MAGIC:
            raise CorruptionError(path, offset, f"bad magic {magic!r}")
        if version > FORMAT_VERSION:
            raise CorruptionError(path, offset, f"replication log format version {version} is "
                                                f"newer than supported {FORMAT_VERSION}")
        if node != self._node:
            raise CorruptionError(path, offset, f"log of node {node}, expected {self._node}")
        for offset, rec in scan.records[1:]:
            try:
                tag = rec[0]
                if tag == ENTRY:
                    _, index, term = _ENTRY.unpack_from(rec)
                    self._append_memory(LogEntry(index, term, rec[_ENTRY.size :]), path, offset)
                elif tag == TRUNCATE:
                    _, start = _U64.unpack(rec)
                    del self.entries[max(0, start - self.base_index - 1) :]
                elif tag == TERM:
                    _, self.term = _U64.unpack(rec)
                elif tag == BASE:
                    _, self.base_index, self.base_term = _BASE.unpack(rec)
                    self.entries = []
                else:
                    raise CorruptionError(path, offset, f"unknown record tag {tag}")
            except (struct.error, IndexError):
                raise CorruptionError(path, offset, "truncated replication log record") from None

    def _append_memory(self, entry: LogEntry, path: str, offset: int) -> None:
        expected = self.base_index + len(self.entries) + 1
        if entry.index != expected:
            raise CorruptionError(path, offset, f"entry {entry.index} where {expected} expected")
        self.entries.append(entry)

    def _write_segment(self, number: int) -> None:
        """Write a complete segment holding the current state, atomically."""
        path = self._path(number)
        tmp = path + ".tmp"
        f = self._fs.create(tmp)
        w = LogWriter(f)
        w.add_record(_HEADER.pack(_MAGIC, FORMAT_VERSION, self._node))
        w.add_record(_BASE.pack(BASE, self.base_index, self.base_term))
        w.add_record(_U64.pack(TERM, self.term))
        for e in self.entries:
            w.add_record(_ENTRY.pack(ENTRY, e.index, e.term) + e.payload)
        f.sync()
        f.close()
        self._fs.rename(tmp, path)
        self._fs.sync_dir(self._dir)

    # -- queries -----------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if it is not held (compacted or beyond)."""
        if index == self.base_index:
            return self.base_term
        i = index - self.base_index - 1
        if 0 <= i < len(self.entries):
            return self.entries[i].term
        return None

    def entry(self, index: int) -> LogEntry | None:
        i = index - self.base_index - 1
        return self.entries[i] if 0 <= i < len(self.entries) else None

    def slice(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries with lo <= index <= hi that are held."""
        start = max(0, lo - self.base_index - 1)
        stop = max(0, hi - self.base_index)
        with self._lock:
            return self.entries[start:stop]

    # -- changes -----------------------------------------------------------------

    def append(self, entries: list[LogEntry]) -> None:
        with self._lock:
            for e in entries:
                if e.index != self.last_index + 1:
                    raise ValueError(f"append of {e.index} after {self.last_index}")
                self.entries.append(e)
                self._pending.append(_ENTRY.pack(ENTRY, e.index, e.term) + e.payload)

    def truncate(self, from_index: int) -> None:
        """Drop entries with index >= ``from_index`` (they conflict with the leader's)."""
        with self._lock:
            if from_index <= self.base_index:
                raise ValueError(f"cannot truncate at {from_index}: base is {self.base_index}")
            del self.entries[from_index - self.base_index - 1 :]
            self._pending.append(_U64.pack(TRUNCATE, from_index))

    def set_term(self, term: int) -> None:
        with self._lock:
            self.term = term
            self._pending.append(_U64.pack(TERM, term))

    def sync(self) -> int:
        """Make every change so far durable; return the last index now on stable storage."""
        with self._lock:
            if self._failed is not None:  # never report as durable what a failed sync left
                raise OSError(errno.EIO, f"log of node {self._node}: an earlier sync failed "
                              f"({self._failed}); restart the node to recover")
            pending, self._pending = self._pending, []
            last = self.last_index
        if not pending:
            return last
        try:
            for rec in pending:
                self._writer.add_record(rec)
            self._file.sync()
        except BaseException as exc:
            with self._lock:
                self._failed = exc
            raise
        return last

    def compact(self, upto: int) -> None:
        """Drop entries <= ``upto`` (already applied everywhere that matters)."""
        self.sync()
        with self._lock:
            term = self.term_at(upto)
            if upto <= self.base_index or term is None:
                return
            self.entries = self.entries[upto - self.base_index :]
            self.base_index, self.base_term = upto, term
        self._rewrite()

    def reset(self, base_index: int, base_term: int) -> None:
        """Discard everything and start after (base_index, base_term): a snapshot install."""
        self.sync()
        with self._lock:
            self.entries = []
            self.base_index, self.base_term = base_index, base_term
        self._rewrite()

    def _rewrite(self) -> None:
        old = self._segment
        self._file.close()
        self._segment += 1
        self._write_segment(self._segment)
        self._fs.remove(self._path(old))
        self._file = self._fs.open_append(self._path(self._segment))
        self._writer = LogWriter(self._file, offset=self._file.size())

    def close(self) -> None:
        self._file.close()

