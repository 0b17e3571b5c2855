"""Errors of the Raft core; the root :class:`RaftError` subclasses ``ReplicationError``.

:class:`NotLeader` is :class:`replication.errors.NotLeader`, re-exported: the
core raises it with its ``leader`` hint filled in (the node it believes
leads, or None) so callers route to the leader without another lookup.
"""

from __future__ import annotations

from replication.errors import NotLeader, ReplicationError

__all__ = [
    "LogCompacted",
    "LogUnavailable",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "RaftInvariantError",
]


class RaftError(ReplicationError):
    """Root of the errors the Raft core raises on purpose."""


class ProposalDropped(RaftError):
    """The leader refused the request for now; nothing was appended.

    Raised while a leadership transfer is in progress (proposals would be
    lost with the old leader's term) and by ``read_index`` before the leader
    committed an entry of its own term (its commit index may still be
    behind the true one). Retry shortly, on the new leader if it changed.
    """

    retryable = True


class RaftInvariantError(RaftError):
    """A must-hold Raft invariant was broken: a bug, or storage that lost synced data.

    Never retryable: the node must stop rather than risk diverging.
    """


class LogCompacted(RaftError):
    """The requested index is below the log's first index (it is in a snapshot)."""


class LogUnavailable(RaftError):
    """The requested index is beyond the log's last index."""
