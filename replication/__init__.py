"""stratakv's replication layer: N = 3, 5 or 7 copies that agree through a consensus log.

Quick start::

    import replication
    with replication.open("/tmp/cluster", nodes=3) as store:
        store.put("greeting", "hello")
        assert store.get("greeting") == "hello"
        with store.transaction() as tx:
            tx.put("counter", str(int(tx.get("counter") or 0) + 1))

See :class:`KeyValueStore` for the API and its guarantees, :class:`Cluster`
for fault injection, and :class:`RaftGroup` for the consensus module (N Raft
nodes in one process, each with its durable log, speaking only by messages).

A cluster of node processes (``python -m replication up`` or ``serve``) is
reached with :func:`connect`, which returns a :class:`RemoteStore` with the
same API and guarantees.
"""

from __future__ import annotations

from typing import Any

from engine import __version__
from replication.client import RemoteStore, RemoteTransaction, connect
from replication.cluster import Cluster
from replication.consensus import ConsensusModule, LogEntry, Proposal
from replication.errors import AmbiguousCommit, NotLeader, ReplicationError, Unavailable
from replication.options import ClusterOptions
from replication.raftgroup import RaftGroup
from replication.store import KeyValueStore, StoreTransaction

__all__ = [
    "AmbiguousCommit",
    "Cluster",
    "ClusterOptions",
    "ConsensusModule",
    "KeyValueStore",
    "LogEntry",
    "NotLeader",
    "Proposal",
    "RaftGroup",
    "RemoteStore",
    "RemoteTransaction",
    "ReplicationError",
    "StoreTransaction",
    "Unavailable",
    "__version__",
    "connect",
    "open",
]


def open(path: str, nodes: int | None = None, **options: Any) -> KeyValueStore:
    """Open (creating if needed) an embedded cluster of ``nodes`` replicas under ``path``.

    ``nodes`` is 3, 5 or 7; omitted, a new cluster gets 3 and an existing one
    keeps the size its directory records.

    Returns a KeyValueStore that owns the cluster: closing the store closes it.
    Keyword settings are :class:`ClusterOptions` fields (see :meth:`Cluster.open`).
    """
    return KeyValueStore(Cluster.open(path, nodes, **options), owns_cluster=True)
