"""Cluster invariants, checked after every step of a simulation (and by tests).

Each check returns a list of violations (empty when all is well):

1. **Log agreement** (Raft's Log Matching + State Machine Safety): any two
   nodes agree on every entry both know to be committed -- same term, same
   payload -- and an entry once seen committed never changes.
2. **Replica agreement**: two replicas that applied the same log index hold
   identical data (compared by a digest of a full scan).
3. **Monotonicity**: the commit index never goes back, nor does a running
   node's applied index (a restarted node may restart lower: its engine keeps
   no WAL and replays the log).

Pure functions over a :class:`replication.Cluster`'s public state; the
:class:`Watch` keeps what must be remembered between steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import engine
from replication.cluster import Cluster

__all__ = ["Watch", "check_log_agreement", "check_replica_agreement", "digest"]


def digest(e: engine.Engine) -> str:
    """A hash of a store's whole visible content and last sequence."""
    h = hashlib.sha256(b"%d;" % e.last_sequence)
    for key, value in e.scan():
        h.update(b"%d:" % len(key) + key + b"%d:" % len(value) + value)
    return h.hexdigest()


def check_log_agreement(cluster: Cluster, seen: dict[int, tuple[int, bytes]]) -> list[str]:
    """Rule 1. ``seen`` maps index -> (term, payload hash) of committed entries seen so far."""
    problems: list[str] = []
    c = cluster.consensus
    for node in range(len(cluster.nodes)):
        _, entries = c.committed_entries(node)
        for e in entries:
            fingerprint = (e.term, hashlib.sha256(e.payload).digest())
            known = seen.setdefault(e.index, fingerprint)
            if known != fingerprint:
                problems.append(f"node {node} has entry {e.index} term {e.term} committed, "
                                f"but term {known[0]} with other content was committed there")
    return problems


def check_replica_agreement(cluster: Cluster) -> list[str]:
    """Rule 2: replicas at the same applied index hold the same data."""
    by_index: dict[int, list[tuple[int, str]]] = {}
    for node in cluster.nodes:
        e = node.engine
        if node.alive and e is not None:
            by_index.setdefault(e.last_sequence, []).append((node.id, digest(e)))
    problems = []
    for index, replicas in by_index.items():
        if len({d for _, d in replicas}) > 1:
            problems.append(f"replicas {[n for n, _ in replicas]} applied index {index} "
                            f"but hold different data")
    return problems


@dataclass
class Watch:
    """Invariant state carried across the steps of one run."""

    committed: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    commit_index: int = 0
    applied: dict[int, int] = field(default_factory=dict)

    def check(self, cluster: Cluster, *, replicas: bool = True) -> list[str]:
        """All invariants; ``replicas=False`` skips the (costly) data comparison."""
        c = cluster.consensus
        problems = check_log_agreement(cluster, self.committed)
        if c.commit_index < self.commit_index:
            problems.append(f"commit index went back from {self.commit_index} "
                            f"to {c.commit_index}")
        self.commit_index = max(self.commit_index, c.commit_index)
        for node in cluster.nodes:
            if node.alive:
                before = self.applied.get(node.id, 0)
                if node.applied < before and node.snapshots_installed == 0:
                    problems.append(f"node {node.id} applied index went back from {before} "
                                    f"to {node.applied}")
                self.applied[node.id] = node.applied
        if replicas:
            problems += check_replica_agreement(cluster)
        return problems
