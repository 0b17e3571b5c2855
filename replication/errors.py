"""Errors of the replication layer; the root subclasses ``engine.EngineError``.

So ``except engine.EngineError`` catches everything a store raises, while
``ReplicationError`` singles out the distributed failures. ``retryable``
says whether running the same operation again is safe and may succeed.
"""

from __future__ import annotations

from engine.errors import EngineError

__all__ = ["AmbiguousCommit", "NotLeader", "ReplicationError", "Unavailable"]


class ReplicationError(EngineError):
    """Root of the replication layer's errors."""


class Unavailable(ReplicationError):
    """No quorum could be reached within the time allowed (more than f nodes down or cut off).

    Nothing was committed by the failed operation. Retry once nodes are back.
    """

    retryable = True


class NotLeader(ReplicationError):
    """The node that ran the operation lost leadership before it committed; nothing was.

    ``KeyValueStore.run_transaction`` retries these on the new leader.
    ``leader`` is a hint: the node believed to lead now, or None if unknown
    (the Raft core fills it in so a caller can redirect without a lookup).
    """

    retryable = True

    def __init__(self, message: str = "", leader: int | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class AmbiguousCommit(ReplicationError):
    """The outcome is unknown: the write reached the log but its fate was not learned in time.

    It may or may not be applied later. Not retried automatically: blindly
    running a write twice can break linearizability; read back to find out.
    """

    retryable = False
