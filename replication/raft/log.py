"""The Raft log: a stable part behind :class:`Storage` plus an unstable tail in memory.

::

      snapshot        stable (Storage)             unstable (memory)
    ... ≤ base ] [ first_index .. offset-1 ] [ offset .. last_index ]
                       applied ≤ committed ≤ last_index

* The stable part is whatever the driver already persisted: entries after a
  snapshot (``first_index`` .. ``last_index``) and the snapshot's (index,
  term). The core only reads it, through the :class:`Storage` protocol; the
  driver writes it from each Ready, and the application compacts it.
* The unstable part holds entries (and at most one incoming snapshot) the
  core accepted but the driver has not persisted yet; ``stable_to`` drops
  what a Ready persisted. Unstable entries win over stable ones at the same
  index (they replaced a conflicting stable suffix that is not yet
  truncated on disk).

Invariants (violations raise :class:`RaftInvariantError`):

1. ``snapshot index ≤ applied ≤ committed ≤ last_index``.
2. A committed entry is never truncated or replaced.
3. ``maybe_append`` truncates only at the first entry whose *term*
   conflicts (§5.3); entries that match are kept, even when the message
   carries fewer entries than the log holds (a delayed, shorter append must
   not cut off entries a newer append added).

Not thread-safe: owned by one :class:`RaftNode`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from replication.raft.errors import LogCompacted, LogUnavailable, RaftInvariantError
from replication.raft.messages import HardState, LogEntry, SnapshotMeta, entry_bytes

__all__ = ["MemoryStorage", "RaftLog", "Storage", "Unstable", "limit_bytes"]

log = logging.getLogger(__name__)

NO_LIMIT = 1 << 62


def limit_bytes(entries: list[LogEntry], max_bytes: int) -> list[LogEntry]:
    """The longest prefix of ``entries`` within ``max_bytes`` payload bytes, at least one."""
    total = 0
    for i, e in enumerate(entries):
        total += entry_bytes(e)
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class Storage(Protocol):
    """The persisted part of a node's log, read by the core (etcd's Storage).

    Index arguments follow the log's numbering. ``term(first_index() - 1)``
    is the snapshot's term (the entry just before the first one held).
    """

    def initial_state(self) -> HardState:
        """The hard state last persisted (zeros for a new node)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry held (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (the snapshot index if none)."""
        ...

    def term(self, index: int) -> int:
        """Term of entry ``index``, for first_index()-1 <= index <= last_index().

        Raises LogCompacted below that range, LogUnavailable above it.
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        """Entries lo <= index < hi, at most ``max_bytes`` payload bytes but at least one.

        Raises LogCompacted if lo < first_index(), LogUnavailable if hi > last_index()+1.
        """
        ...

    def snapshot(self) -> SnapshotMeta:
        """The most recent snapshot (index 0 and the initial peers if none)."""
        ...


class MemoryStorage:
    """A :class:`Storage` in memory, for tests and the simulation.

    Writes are the driver's side: ``append`` (overwriting any suffix the new
    entries replace), ``set_hard_state``, ``apply_snapshot``; and the
    application's: ``compact`` (drop entries up to an applied index, keeping
    a snapshot reference in their place). Everything stored here counts as
    durable: a simulated crash keeps exactly this object.
    """

    def __init__(self, peers: tuple[int, ...] = ()) -> None:
        self._hard_state = HardState()
        self._snapshot = SnapshotMeta(peers=tuple(peers))
        self._entries: list[LogEntry] = []  # entries after the snapshot, contiguous

    # -- Storage protocol --------------------------------------------------------

    def initial_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._snapshot.index + 1

    def last_index(self) -> int:
        return self._snapshot.index + len(self._entries)

    def term(self, index: int) -> int:
        base = self._snapshot.index
        if index < base:
            raise LogCompacted(f"index {index} is compacted (snapshot at {base})")
        if index > self.last_index():
            raise LogUnavailable(f"index {index} is beyond the last index {self.last_index()}")
        if index == base:
            return self._snapshot.term
        return self._entries[index - base - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        base = self._snapshot.index
        if lo <= base:
            raise LogCompacted(f"index {lo} is compacted (snapshot at {base})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        return limit_bytes(self._entries[lo - base - 1 : hi - base - 1], max_bytes)

    def snapshot(self) -> SnapshotMeta:
        return self._snapshot

    # -- writes ------------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def append(self, entries: list[LogEntry] | tuple[LogEntry, ...]) -> None:
        """Persist ``entries``; any held entries at or after the first new index are replaced."""
        if not entries:
            return
        first = entries[0].index
        base = self._snapshot.index
        if first > self.last_index() + 1:
            raise RaftInvariantError(f"append at {first} leaves a gap after {self.last_index()}")
        if first <= base:
            raise RaftInvariantError(f"append at {first} overwrites the snapshot at {base}")
        del self._entries[first - base - 1 :]
        self._entries.extend(entries)

    def apply_snapshot(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing one)."""
        if snapshot.index < self._snapshot.index:
            raise RaftInvariantError(f"snapshot {snapshot.index} is older than the stored "
                                     f"{self._snapshot.index}")
        self._snapshot = snapshot
        self._entries = []

    def compact(self, index: int, data: bytes = b"") -> SnapshotMeta:
        """Drop entries up to ``index`` (applied by the application), keeping a snapshot.

        ``data`` is the application's reference to its checkpoint at
        ``index``. Returns the new snapshot metadata.
        """
        base = self._snapshot.index
        if index <= base:
            return self._snapshot
        if index > self.last_index():
            raise ValueError(f"cannot compact to {index}: last index is {self.last_index()}")
        self._snapshot = SnapshotMeta(index, self.term(index), self._snapshot.peers, data)
        del self._entries[: index - base]
        return self._snapshot


class Unstable:
    """Entries (and at most one snapshot) accepted but not yet persisted.

    ``offset`` is the index of ``entries[0]`` (the next index to persist).
    """

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: list[LogEntry] = []
        self.snapshot: SnapshotMeta | None = None

    def maybe_first_index(self) -> int | None:
        return self.snapshot.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.index if self.snapshot is not None else None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        i = index - self.offset
        return self.entries[i].term if i < len(self.entries) else None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) were persisted; forget them.

        Ignored if the entry at ``index`` has since been replaced (its term
        differs): the persisted one is about to be overwritten anyway.
        """
        if index < self.offset or self.maybe_term(index) != term:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snapshot: SnapshotMeta) -> None:
        self.offset = snapshot.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[LogEntry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable and a stable suffix; the driver's
            # append of these entries overwrites that suffix on disk.
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[LogEntry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """A node's view of the log: storage + unstable, with commit and applied indexes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        self.unstable = Unstable(storage.last_index() + 1)
        self.committed = first - 1
        self.applied = first - 1

    def __repr__(self) -> str:
        return (f"RaftLog(first={self.first_index()}, last={self.last_index()}, "
                f"committed={self.committed}, applied={self.applied}, "
                f"unstable_offset={self.unstable.offset})")

    # -- positions ---------------------------------------------------------------

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def term(self, index: int) -> int | None:
        """Term of entry ``index``; None if it is compacted away or beyond the log."""
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        try:
            return self.storage.term(index)
        except (LogCompacted, LogUnavailable):
            return None

    def last_term(self) -> int:
        t = self.term(self.last_index())
        if t is None:
            raise RaftInvariantError(f"no term for the last index {self.last_index()}")
        return t

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Is a log ending at (last_index, term) at least as up to date as ours? (§5.4.1)"""
        my_term = self.last_term()
        return term > my_term or (term == my_term and last_index >= self.last_index())

    # -- reading entries -----------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int = NO_LIMIT) -> list[LogEntry]:
        """Entries lo <= index < hi within ``max_bytes`` (at least one if lo < hi)."""
        if lo < self.first_index():
            raise LogCompacted(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        if lo >= hi:
            return []
        out: list[LogEntry] = []
        offset = self.unstable.offset
        if lo < offset:
            out = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(out) < min(hi, offset) - lo:  # the byte limit cut it short
                return out
        if hi > offset:
            out = out + self.unstable.slice(max(lo, offset), hi)
        return limit_bytes(out, max_bytes)

    def entries_from(self, lo: int, max_bytes: int) -> list[LogEntry]:
        """Entries from ``lo`` to the end within ``max_bytes``; LogCompacted if lo is gone."""
        if lo > self.last_index():
            return []
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def unstable_entries(self) -> list[LogEntry]:
        return list(self.unstable.entries)

    def has_next_committed(self) -> bool:
        return self.committed + 1 > max(self.applied + 1, self.first_index())

    def next_committed_entries(self) -> list[LogEntry]:
        """Committed entries not yet applied (those after a pending snapshot)."""
        lo = max(self.applied + 1, self.first_index())
        if self.committed + 1 <= lo:
            return []
        return self.slice(lo, self.committed + 1)

    # -- changing the log ------------------------------------------------------------

    def find_conflict(self, entries: list[LogEntry] | tuple[LogEntry, ...]) -> int:
        """Index of the first entry that is not in our log with the same term; 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                if e.index <= self.last_index():
                    log.info("conflict at index %d: existing term %s, new term %d",
                             e.index, self.term(e.index), e.term)
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (or the compaction edge).

        Used for fast backtracking: entries above it cannot match an entry of
        ``term`` at ``index`` on the other side.
        """
        index = min(index, self.last_index())
        while index > 0:
            t = self.term(index)
            if t is None or t <= term:
                return index
            index -= 1
        return 0

    def maybe_append(self, prev_index: int, prev_term: int, committed: int,
                     entries: list[LogEntry] | tuple[LogEntry, ...]) -> int | None:
        """Accept a leader's append if our log holds (prev_index, prev_term).

        Returns the last index the message proved matching (prev_index +
        len(entries)), or None when the consistency check fails. Truncates
        only from the first entry whose term conflicts; matching entries and
        entries past the message's end are kept.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftInvariantError(f"entry {conflict} conflicts with the committed prefix "
                                         f"(commit {self.committed})")
            self.append(list(entries[conflict - prev_index - 1 :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: list[LogEntry]) -> int:
        """Append (replacing any suffix from entries[0].index); returns the last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after - 1 < self.committed:
            raise RaftInvariantError(f"append at {after} would overwrite committed entries "
                                     f"(commit {self.committed})")
        if after > self.last_index() + 1:
            raise RaftInvariantError(f"append at {after} leaves a gap after {self.last_index()}")
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def commit_to(self, index: int) -> None:
        """Raise the commit index to ``index`` (never lowers it)."""
        if index <= self.committed:
            return
        if index > self.last_index():
            raise RaftInvariantError(f"commit {index} is beyond the last index "
                                     f"{self.last_index()}")
        self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if it is newer and of ``term`` (the leader's own, §5.4.2)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise RaftInvariantError(f"applied {index} outside [{self.applied}, "
                                     f"{self.committed}]")
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the log by ``snapshot`` (pending until the driver persists it)."""
        log.info("restoring log from snapshot at %d/%d", snapshot.index, snapshot.term)
        self.committed = snapshot.index
        self.unstable.restore(snapshot)
