"""One node's durable copy of the replicated log.

A node keeps its log in one segment file ``<n>.rlog`` framed like the
engine's WAL (32 KiB blocks of crc32c-checked fragments, :mod:`engine.record`)::

    segment := header record*
    header  := magic[8]="SKVRLOG1" format_version:u32 node:u32
    record  := ENTRY=1 index:u64 term:u64 payload
             | TRUNCATE=2 from_index:u64            entries >= from_index are gone
             | TERM=3 term:u64                      the node's current term (hard state)
             | BASE=4 index:u64 term:u64            the log now starts after (index, term)
             | VOTE=5 vote:u64                      whom the node voted for in its term
                                                    (a Raft id >= 1; 0: nobody); since v2

A TERM record clears the vote (a new term has none yet); a VOTE record
after it names the candidate. Version 1 files (no VOTE records) read as
"no vote": they were written by a consensus whose votes were not messages.

Appends are buffered and made durable together by :meth:`NodeLog.sync`
(group commit: one ``write`` and one ``fdatasync`` for everything appended
since the last sync). Compacting the prefix writes a new segment that starts
with a BASE record and holds the retained entries, as ``<n>.rlog.tmp``,
syncs it, renames it into place and syncs the directory; recovery reads the
newest complete segment. A torn tail is cut off; damage followed by valid
records is :class:`engine.CorruptionError`.

Locks (the invariants every method keeps):

1. ``_lock`` owns the in-memory log -- ``_base_index``, ``_base_term``,
   ``_term``, ``_vote``, ``_entries`` -- and the queue of records not yet written,
   ``_pending``. Every read and every write of them holds it, so a reader
   never sees entries of one base with the index of another, and a record
   is either in ``_pending`` or already part of a segment, never both.
2. ``_file_lock`` owns the open segment (``_segment``, ``_file``,
   ``_writer``) and ``_failed``; ``sync``, ``compact``, ``reset`` and
   ``close`` hold it for their file I/O, so none of them can write a
   segment another is replacing. Lock order: ``_file_lock`` before
   ``_lock``; file I/O never happens under ``_lock``, so appends (a
   leader's submit path) never wait for a disk.
3. A rewrite (``compact``/``reset``) takes the whole state *and* empties
   ``_pending`` in one ``_lock`` section, then writes that state: changes
   made after it are queued and go to the new segment on the next sync.
   (It once iterated the live entry list while appends went on, so an entry
   appended during the rewrite was written twice and the log would not
   reopen: "entry N where N+1 expected".)

Every method may be called from any thread.
"""

from __future__ import annotations

import errno
import logging
import struct
import threading
from typing import NamedTuple

from engine.errors import CorruptionError
from engine.fs import FileSystem, WritableFile, atomic_write
from engine.record import LogWriter, read_log
from replication.consensus import LogEntry
from replication.errors import SnapshotNeeded

__all__ = ["NodeLog"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_MAGIC = b"SKVRLOG1"
_HEADER = struct.Struct("<8sII")
_ENTRY = struct.Struct("<BQQ")
_U64 = struct.Struct("<BQ")
_BASE = struct.Struct("<BQQ")
ENTRY, TRUNCATE, TERM, BASE, VOTE = 1, 2, 3, 4, 5


class _State(NamedTuple):
    """A log's whole state, as a new segment records it."""

    base_index: int
    base_term: int
    term: int
    vote: int
    entries: list[LogEntry]


class NodeLog:
    """The replicated log as one node stores it: entries after a base, plus term and vote."""

    def __init__(self, fs: FileSystem, dirname: str, node: int) -> None:
        self._fs = fs
        self._dir = dirname
        self._node = node
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._base_index = 0  # entries <= base were compacted away
        self._base_term = 0
        self._term = 0
        self._vote = 0  # 0: no vote in this term
        self._entries: list[LogEntry] = []
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
        """Read the newest segment (single-threaded: the log is not shared yet)."""
        segments = self._segments()
        if not segments:
            number = 1
            self._write_segment(number, self._state())
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
                    expected = self._base_index + len(self._entries) + 1
                    if index != expected:
                        raise CorruptionError(path, offset,
                                              f"entry {index} where {expected} expected")
                    self._entries.append(LogEntry(index, term, rec[_ENTRY.size :]))
                elif tag == TRUNCATE:
                    _, start = _U64.unpack(rec)
                    del self._entries[max(0, start - self._base_index - 1) :]
                elif tag == TERM:
                    _, self._term = _U64.unpack(rec)
                    self._vote = 0
                elif tag == VOTE:
                    _, self._vote = _U64.unpack(rec)
                elif tag == BASE:
                    _, self._base_index, self._base_term = _BASE.unpack(rec)
                    self._entries = []
                else:
                    raise CorruptionError(path, offset, f"unknown record tag {tag}")
            except (struct.error, IndexError):
                raise CorruptionError(path, offset, "truncated replication log record") from None

    def _state(self) -> _State:
        """What a new segment holds. Holds _lock."""
        return _State(self._base_index, self._base_term, self._term, self._vote,
                      list(self._entries))

    def _write_segment(self, number: int, state: _State) -> None:
        """Write a complete segment holding ``state``, atomically. Holds _file_lock, not _lock."""
        base_index, base_term, term, vote, entries = state
        records = [_HEADER.pack(_MAGIC, FORMAT_VERSION, self._node),
                   _BASE.pack(BASE, base_index, base_term), _U64.pack(TERM, term)]
        if vote:
            records.append(_U64.pack(VOTE, vote))
        records += [_ENTRY.pack(ENTRY, e.index, e.term) + e.payload for e in entries]
        path = self._path(number)

        def write(f: WritableFile) -> None:
            w = LogWriter(f)
            for rec in records:
                w.add_record(rec)

        atomic_write(self._fs, path, write)

    # -- queries -----------------------------------------------------------------

    @property
    def base_index(self) -> int:
        """Entries up to here were compacted away (0: none)."""
        with self._lock:
            return self._base_index

    @property
    def base_term(self) -> int:
        with self._lock:
            return self._base_term

    @property
    def term(self) -> int:
        """The node's current term (its hard state)."""
        with self._lock:
            return self._term

    @property
    def vote(self) -> int:
        """Whom the node voted for in its current term (a Raft id >= 1; 0: nobody)."""
        with self._lock:
            return self._vote

    @property
    def last_index(self) -> int:
        with self._lock:
            return self._base_index + len(self._entries)

    @property
    def last_term(self) -> int:
        with self._lock:
            return self._entries[-1].term if self._entries else self._base_term

    @property
    def failed(self) -> BaseException | None:
        """The error of a failed sync or rewrite; the log refuses writes until reopened."""
        return self._failed

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if it is not held (compacted or beyond)."""
        with self._lock:
            if index == self._base_index:
                return self._base_term
            i = index - self._base_index - 1
            return self._entries[i].term if 0 <= i < len(self._entries) else None

    def entry(self, index: int) -> LogEntry | None:
        with self._lock:
            i = index - self._base_index - 1
            return self._entries[i] if 0 <= i < len(self._entries) else None

    def read(self, lo: int, hi: int) -> list[LogEntry]:
        """The entries with lo <= index <= hi that are held, starting exactly at ``lo``.

        Raises SnapshotNeeded if ``lo`` was compacted away: the caller would
        otherwise get entries with a gap before them.
        """
        with self._lock:
            if lo > hi:
                return []
            if lo <= self._base_index:
                raise SnapshotNeeded(self._base_index)
            return self._entries[lo - self._base_index - 1 : max(0, hi - self._base_index)]

    def prefix(self, hi: int) -> tuple[int, list[LogEntry]]:
        """(base index, the held entries up to ``hi``), read together."""
        with self._lock:
            return self._base_index, self._entries[: max(0, hi - self._base_index)]

    # -- changes -----------------------------------------------------------------

    def append(self, entries: list[LogEntry]) -> None:
        with self._lock:
            for e in entries:
                last = self._base_index + len(self._entries)
                if e.index != last + 1:
                    raise ValueError(f"append of {e.index} after {last}")
                self._entries.append(e)
                self._pending.append(_ENTRY.pack(ENTRY, e.index, e.term) + e.payload)

    def truncate(self, from_index: int) -> None:
        """Drop entries with index >= ``from_index`` (they conflict with the leader's)."""
        with self._lock:
            if from_index <= self._base_index:
                raise ValueError(f"cannot truncate at {from_index}: base is {self._base_index}")
            del self._entries[from_index - self._base_index - 1 :]
            self._pending.append(_U64.pack(TRUNCATE, from_index))

    def set_term(self, term: int) -> None:
        """Enter ``term`` (with no vote yet); durable at the next sync."""
        with self._lock:
            self._term = term
            self._vote = 0
            self._pending.append(_U64.pack(TERM, term))

    def set_hard_state(self, term: int, vote: int) -> None:
        """Record term and vote (Raft's hard state); durable, together, at the next sync."""
        with self._lock:
            if term != self._term:
                self._term = term
                self._vote = 0
                self._pending.append(_U64.pack(TERM, term))
            if vote != self._vote:
                self._vote = vote
                self._pending.append(_U64.pack(VOTE, vote))

    def _check_failed(self) -> None:
        """Refuse to write after a failed sync. Holds _file_lock."""
        if self._failed is not None:  # never report as durable what a failed sync left
            raise OSError(errno.EIO, f"log of node {self._node}: an earlier sync failed "
                          f"({self._failed}); restart the node to recover")

    def sync(self) -> int:
        """Make every change so far durable; return the last index now on stable storage."""
        with self._file_lock:
            self._check_failed()
            with self._lock:
                pending, self._pending = self._pending, []
                last = self._base_index + len(self._entries)
            if not pending:
                return last
            try:
                for rec in pending:
                    self._writer.add_record(rec)
                self._file.sync()
            except BaseException as exc:
                self._failed = exc
                raise
            return last

    def compact(self, upto: int) -> None:
        """Drop entries <= ``upto`` (already applied everywhere that matters)."""
        with self._file_lock:
            self._check_failed()
            with self._lock:
                term = self._term_at_locked(upto)
                if upto <= self._base_index or term is None:
                    return
                self._entries = self._entries[upto - self._base_index :]
                self._base_index, self._base_term = upto, term
                state = self._state()
                self._pending = []  # all of it is in ``state`` (invariant 3)
            self._rewrite(state)

    def reset(self, base_index: int, base_term: int) -> None:
        """Discard everything and start after (base_index, base_term): a snapshot install."""
        with self._file_lock:
            self._check_failed()
            with self._lock:
                self._entries = []
                self._base_index, self._base_term = base_index, base_term
                state = self._state()
                self._pending = []
            self._rewrite(state)

    def _term_at_locked(self, index: int) -> int | None:
        if index == self._base_index:
            return self._base_term
        i = index - self._base_index - 1
        return self._entries[i].term if 0 <= i < len(self._entries) else None

    def _rewrite(self, state: _State) -> None:
        """Replace the segment by a new one holding ``state``. Holds _file_lock."""
        old = self._segment
        try:
            self._write_segment(old + 1, state)
            self._file.close()
            self._fs.remove(self._path(old))
            self._file = self._fs.open_append(self._path(old + 1))
        except BaseException as exc:
            # What is in memory may now be on disk nowhere: fail-stop (restart recovers).
            self._failed = exc
            raise
        self._segment = old + 1
        self._writer = LogWriter(self._file, offset=self._file.size())

    def close(self) -> None:
        with self._file_lock:
            self._file.close()
