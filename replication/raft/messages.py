"""Raft messages and the durable hard state: plain frozen values, no behaviour.

Every message carries ``frm`` (who sent it), ``to`` (who must handle it)
and ``term`` (the sender's term, or for vote replies the term of the vote
they answer). The term alone decides staleness: a receiver with a higher
term drops or rejects the message, a receiver with a lower term adopts the
higher one first (Raft §5.1). Node ids are positive integers.

The tags in :class:`MessageType` are what a wire codec (a later issue) will
write; they are never renumbered, new types get new numbers.

Log entries are :class:`replication.consensus.LogEntry` (index, term, payload):
the same type the durable ``NodeLog`` stores, so the driver hands entries
from a Ready to the log without conversion. An empty payload is a leader's
no-op entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from replication.consensus import LogEntry

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "LogEntry",
    "Message",
    "MessageType",
    "RequestVote",
    "RequestVoteResponse",
    "SnapshotMeta",
    "TimeoutNow",
    "entry_bytes",
]


class MessageType(IntEnum):
    """Wire tags of the messages. Never renumber; append new ones."""

    APPEND = 1
    APPEND_RESPONSE = 2
    VOTE = 3
    VOTE_RESPONSE = 4
    HEARTBEAT = 5
    HEARTBEAT_RESPONSE = 6
    SNAPSHOT = 7
    SNAPSHOT_RESPONSE = 8
    TIMEOUT_NOW = 9


def entry_bytes(entry: LogEntry) -> int:
    """The size an entry counts for in byte limits: its payload length.

    Index and term are fixed overhead; limits exist to bound the payload
    bytes in one message or in flight, so only payload bytes count.
    """
    return len(entry.payload)


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must persist before any message of the same Ready leaves.

    ``term``: the latest term this node has seen; persisting it stops a
    restarted node from voting twice in one term or following an old leader.
    ``vote``: whom this node voted for in ``term`` (None: nobody yet); at
    most one vote per term is what makes two leaders in a term impossible.
    ``commit``: the highest index known committed; not needed for safety
    (it can be relearned) but lets a restarted node apply its committed
    prefix without waiting for a leader.
    """

    term: int = 0
    vote: int | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """A snapshot as the core sees it: a position in the log plus an opaque reference.

    ``index``/``term``: the last entry the snapshot covers; the log resumes
    after it, and (index, term) is what the next append's consistency check
    compares against. ``peers``: the voter configuration at ``index``, so a
    node restored from the snapshot knows its cluster. ``data``: opaque to
    the core; the application's reference to its payload (an engine
    checkpoint that the driver streams separately), never interpreted here.
    """

    index: int = 0
    term: int = 0
    peers: tuple[int, ...] = ()
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: replicate ``entries`` after (prev_index, prev_term).

    ``prev_index``/``prev_term``: the entry just before ``entries``; the
    follower accepts only if its log has that entry (the log matching check,
    §5.3), which keeps every accepted log a prefix of the leader's.
    ``entries``: the entries to append, possibly none (then the message only
    carries ``commit`` or probes the follower's log).
    ``commit``: the leader's commit index; the follower commits up to the
    smaller of it and the last entry this message proved matching.
    """

    TYPE: ClassVar[MessageType] = MessageType.APPEND
    frm: int
    to: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[LogEntry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Follower -> leader: the outcome of an AppendEntries.

    ``index``: on success, the last index the follower now knows matches the
    leader (the leader's new match for it); on rejection, the ``prev_index``
    that was rejected, so the leader can ignore stale rejections.
    ``reject``: the consistency check failed.
    ``reject_hint``/``log_term``: fast backtracking (etcd's hint): the largest
    index at or below the rejected one whose term is <= the rejected
    prev_term, and the follower's term there. The leader skips straight to
    the first index where the logs may agree instead of stepping back one
    entry per round trip.
    """

    TYPE: ClassVar[MessageType] = MessageType.APPEND_RESPONSE
    frm: int
    to: int
    term: int
    index: int
    reject: bool = False
    reject_hint: int = 0
    log_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voter: ask for a vote (or, with ``pre_vote``, whether one would be given).

    ``term``: the term being campaigned for; for a pre-vote it is the
    candidate's term + 1, which the candidate does *not* adopt, so a node
    cut off from the cluster cannot inflate terms and disrupt a leader.
    ``last_index``/``last_term``: the candidate's last entry; voters refuse
    a candidate whose log is less up to date than theirs (§5.4.1), which is
    what gives a new leader every committed entry.
    ``pre_vote``: this is the pre-vote phase (Raft thesis §9.6).
    ``transfer``: sent because the leader asked the candidate to take over
    (TimeoutNow); voters then ignore their leader lease, which would
    otherwise make them ignore the request.
    """

    TYPE: ClassVar[MessageType] = MessageType.VOTE
    frm: int
    to: int
    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    """Voter -> candidate: the vote.

    ``term``: the term of the request when granted (for a pre-vote that is
    a future term the voter did not adopt); the voter's own term when
    refused, so a candidate behind the times learns the newer term.
    ``granted``: the vote (or would-be vote) was given.
    ``pre_vote``: answers a pre-vote request; a candidate only counts answers
    of the phase it is in.
    """

    TYPE: ClassVar[MessageType] = MessageType.VOTE_RESPONSE
    frm: int
    to: int
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: "I still lead", plus commit progress and a read-index round.

    ``commit``: min(the follower's match, the leader's commit), never more
    than the follower is known to hold, so it can commit without a check.
    ``context``: the ReadIndex request being confirmed (empty: none). A
    quorum echoing it back proves the leader still led after the read was
    recorded, which is what makes the read linearizable without a clock.
    """

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    frm: int
    to: int
    term: int
    commit: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """Follower -> leader: the heartbeat arrived.

    ``context``: echoed from the Heartbeat, an acknowledgement of that
    read-index round.
    """

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT_RESPONSE
    frm: int
    to: int
    term: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: replace your log prefix with this snapshot.

    Sent when the entries the follower needs were compacted away.
    ``snapshot``: index/term/peers and the opaque payload reference; the
    payload itself (an engine checkpoint) is streamed by the driver.
    """

    TYPE: ClassVar[MessageType] = MessageType.SNAPSHOT
    frm: int
    to: int
    term: int
    snapshot: SnapshotMeta


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Follower -> leader: the snapshot was handled.

    ``index``: the follower's last index after handling it (the snapshot's
    index if installed, its commit index if the snapshot was stale); the
    leader resumes replication from there.
    """

    TYPE: ClassVar[MessageType] = MessageType.SNAPSHOT_RESPONSE
    frm: int
    to: int
    term: int
    index: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: campaign now, your log is as up to date as mine.

    The target skips pre-vote and its election timeout, and its vote
    requests are marked ``transfer`` so voters ignore their leader lease.
    """

    TYPE: ClassVar[MessageType] = MessageType.TIMEOUT_NOW
    frm: int
    to: int
    term: int


Message = (
    AppendEntries
    | AppendEntriesResponse
    | RequestVote
    | RequestVoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)
