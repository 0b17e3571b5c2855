"""Errors of the replication layer; the root subclasses ``engine.EngineError``.

So ``except engine.EngineError`` catches everything a store raises, while
``ReplicationError`` singles out the distributed failures. ``retryable``
says whether running the same operation again is safe and may succeed.
"""

from __future__ import annotations

from engine.errors import EngineError

__all__ = [
    "AmbiguousCommit",
    "NodeDamaged",
    "NotLeader",
    "ReplicationError",
    "SnapshotNeeded",
    "Unavailable",
]


class ReplicationError(EngineError):
    """Root of the replication layer's errors."""


class Unavailable(ReplicationError):
    """No quorum could be reached within the time allowed (more than f nodes down or cut off).

    Nothing was committed by the failed operation. Retry once nodes are back.
    """

    retryable = True


class NotLeader(ReplicationError):
    """The node that ran the operation lost leadership before it committed; nothing was.

    ``leader`` is the node believed to lead now (None if unknown), a hint
    for where to retry; from a node process, ``address`` is that node's
    ``HOST:PORT``. ``KeyValueStore`` and ``RemoteStore`` retry these on the
    new leader.
    """

    retryable = True

    def __init__(self, message: str, *, leader: int | None = None,
                 address: str | None = None) -> None:
        self.leader = leader
        self.address = address
        super().__init__(message)


class AmbiguousCommit(ReplicationError):
    """The outcome is unknown: the write reached the log but its fate was not learned in time.

    It may or may not be applied later -- whole, never in part. It is not
    retried automatically: running a write twice can break linearizability.

    The entry is identified by ``index`` and ``term`` (in Raft a log index
    and a term name one entry for ever) and carries ``txn_id``, the random id
    encoded in its payload. To resolve it, call
    ``KeyValueStore.outcome(exc)``: it waits until the log is committed at
    ``index`` and answers True if the entry committed there is this one
    (same term), False if another entry took its place. Once the log prefix
    holding ``index`` was truncated the term is no longer known and
    ``outcome`` raises Unavailable; resolve before then (the log keeps at
    least ``Cluster.max_log_entries`` entries).
    """

    retryable = False

    def __init__(self, message: str, *, index: int, term: int, txn_id: bytes = b"",
                 session: tuple[bytes, int] | None = None) -> None:
        self.index = index
        self.term = term
        self.txn_id = txn_id
        # A network client's write: its (client id, seq), which RemoteStore.outcome asks about
        # (index and term are then 0: the client never learned them).
        self.session = session
        super().__init__(message)


class SnapshotNeeded(ReplicationError):
    """A node's log starts after the entries its state machine still needs.

    ``base_index`` is the last index the log no longer holds: the node must
    install a snapshot of at least that index before it can apply the log.
    """

    def __init__(self, base_index: int) -> None:
        self.base_index = base_index
        super().__init__(f"log starts after index {base_index}: install a snapshot")


class NodeDamaged(ReplicationError):
    """A replica's stored log or engine failed a check; the node stays down until repaired.

    ``node`` is the replica and ``cause`` the :class:`engine.CorruptionError`
    that named the damaged file and offset. ``Cluster.repair(node)`` re-seeds
    it from a healthy peer.
    """

    def __init__(self, node: int, cause: BaseException) -> None:
        self.node = node
        self.cause = cause
        super().__init__(f"node {node} is damaged: {cause}; Cluster.repair({node}) re-seeds it "
                         f"from a healthy peer")
