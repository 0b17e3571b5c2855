"""The pure Raft consensus core: values in, values out, no I/O (see :mod:`.node`).

Public names::

    RaftNode(id, peers, storage, *, rng, config) -- tick/step/propose/read_index/
        transfer_leadership/campaign -> has_ready()/ready() -> advance()
    RaftConfig, Ready, ReadState, SoftState, Status, Role
    Storage (protocol), MemoryStorage, RaftLog
    messages: AppendEntries, RequestVote, Heartbeat, InstallSnapshot, ... HardState
    errors: RaftError, NotLeader, ProposalDropped, RaftInvariantError
"""

from __future__ import annotations

from replication.raft.errors import (
    LogCompacted,
    LogUnavailable,
    NotLeader,
    ProposalDropped,
    RaftError,
    RaftInvariantError,
)
from replication.raft.log import MemoryStorage, RaftLog, Storage
from replication.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogEntry,
    Message,
    MessageType,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from replication.raft.node import RaftConfig, RaftNode, ReadState, Ready, Role, SoftState, Status

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "LogCompacted",
    "LogEntry",
    "LogUnavailable",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeader",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RaftInvariantError",
    "RaftLog",
    "RaftNode",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "Storage",
    "TimeoutNow",
]
