"""What the leader knows about each follower's log, and how fast it may send to it.

A follower's :class:`Progress` is in one of three states (etcd's tracker):

* ``PROBE``: the leader does not know where the follower's log ends. It
  sends one append at a time (then pauses until a response or the next
  heartbeat response) and steps ``next`` back on rejections.
* ``REPLICATE``: the follower's log is known to match up to ``match``; the
  leader streams appends optimistically (``next`` advances on send),
  bounded by the :class:`Inflights` window.
* ``SNAPSHOT``: the entries the follower needs are compacted; a snapshot is
  on its way and nothing else is sent until it is answered (or, if the
  answer is lost, until an election timeout passes: ``state_ticks``).

Invariants: ``match < next``; ``match`` never decreases while the leader
keeps its term.

Not thread-safe: owned by the leader's :class:`RaftNode`.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(IntEnum):
    """Replication state of one follower. Never renumber."""

    PROBE = 1
    REPLICATE = 2
    SNAPSHOT = 3


class Inflights:
    """The appends sent to a follower and not yet acknowledged, bounded in count and bytes.

    Each is recorded by its last index; an acknowledgement of index i frees
    every append ending at or before i. The window keeps a slow follower
    from making the leader queue unbounded data for it.
    """

    __slots__ = ("_items", "bytes", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0 means no byte limit
        self._items: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, last_index: int, size: int) -> None:
        if self._items and last_index <= self._items[-1][0]:
            raise ValueError(f"inflight {last_index} is not after {self._items[-1][0]}")
        self._items.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Free every append whose last index is <= ``index`` (acknowledged)."""
        items = self._items
        while items and items[0][0] <= index:
            self.bytes -= items.popleft()[1]

    def free_first_one(self) -> None:
        if self._items:
            self.bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.max_count or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def reset(self) -> None:
        self._items.clear()
        self.bytes = 0


class Progress:
    """The leader's record of one follower (or of itself: then only ``match`` matters)."""

    __slots__ = ("inflights", "last_active", "match", "next", "pending_snapshot", "probe_sent",
                 "state", "state_ticks")

    def __init__(self, next_index: int, max_inflight_msgs: int, max_inflight_bytes: int) -> None:
        self.match = 0  # highest index known to be on the follower
        self.next = next_index  # index of the next entry to send
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an append is out; wait before sending another
        self.pending_snapshot = 0  # SNAPSHOT: index of the snapshot sent
        self.last_active = 0  # leader's tick count when it last heard from this node
        self.state_ticks = 0  # ticks since the last state change (snapshot timeout)
        self.inflights = Inflights(max_inflight_msgs, max_inflight_bytes)

    def __repr__(self) -> str:
        return (f"Progress({self.state.name.lower()} match={self.match} next={self.next}"
                f" inflight={len(self.inflights)})")

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        """Start probing; after a snapshot, continue right after it."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged up to ``index``; True if that raised ``match``."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at prev index ``rejected``; step ``next`` back.

        ``match_hint`` is the highest index that may still match (from the
        follower's reject hint). Returns False for a stale rejection (an
        answer to an append we already moved past), which must be ignored.
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, count: int, size: int) -> None:
        """Record an append sent with ``count`` entries ending at ``last_index``."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
        else:
            raise ValueError(f"append sent in state {self.state.name}")

    def is_paused(self) -> bool:
        """May the leader not send this follower another append right now?"""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
