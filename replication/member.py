"""Member: the consensus module of a node process -- one replica's RaftConsensus, as a Node sees it.

In the embedded cluster every replica runs in one process and reaches the
group through :class:`~replication.raftgroup.RaftGroup`, which routes each
call to the replica it names. A node process (:mod:`replication.server`)
holds exactly one replica; this adapter gives its
:class:`~replication.node.Node` the same :class:`~replication.consensus.NodeConsensus`
interface over its own :class:`~replication.driver.RaftConsensus`, so Node
and its transaction manager are the same code in both shapes.

What a Member cannot do is look at the other replicas: ``leader_id`` is
this node's belief, ``commit_index`` what it knows committed, and a
proposal is decided when *this* node learns its fate. Every ``node``
argument must name this replica (anything else is a bug in the caller:
ValueError).

Thread-safety: as RaftConsensus (every method may be called from any thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replication.consensus import LogEntry
from replication.driver import RaftConsensus, RaftProposal
from replication.runtime import RealRuntime

__all__ = ["Member"]


class Member:
    """Node ``consensus.id``'s view of its group, through its own RaftConsensus."""

    runtime = RealRuntime()

    def __init__(self, consensus: RaftConsensus,
                 on_crash: Callable[[], None] | None = None) -> None:
        """``on_crash`` is called (once the replica has left the group) when its
        applier fails: the process should stop rather than run half a node."""
        self.consensus = consensus
        self.id = consensus.id
        self._on_crash = on_crash

    def _own(self, node: int | None) -> None:
        if node is not None and node != self.id:
            raise ValueError(f"this process holds node {self.id}, not node {node}")

    @property
    def leader_id(self) -> int | None:
        return self.consensus.leader_id

    @property
    def term(self) -> int:
        return self.consensus.term

    @property
    def commit_index(self) -> int:
        return self.consensus.committed

    def leader_ready(self, node: int) -> bool:
        self._own(node)
        return self.consensus.leader_ready()

    def next_index(self, node: int) -> int:
        self._own(node)
        return self.consensus.next_index()

    def submit(self, transaction: bytes, *, node: int | None = None,
               expect_index: int | None = None, expect_term: int | None = None,
               attachment: Any = None) -> RaftProposal:
        """Append through this node, which must lead. ``attachment`` is not kept (the
        log holds bytes; the applier decodes them)."""
        self._own(node)
        return self.consensus.submit(bytes(transaction), expect_index=expect_index,
                                     expect_term=expect_term)

    def entries_after(self, index: int, limit: int = 1000, *, node: int | None = None
                      ) -> list[LogEntry]:
        self._own(node)
        return self.consensus.entries_after(index, limit)

    def wait_committed(self, index: int, timeout: float, *, node: int | None = None) -> bool:
        self._own(node)
        return self.consensus.wait_committed(index, timeout)

    def read_index(self, node: int, timeout: float) -> int:
        self._own(node)
        return self.consensus.read_index(timeout)

    def crash(self, node: int) -> None:
        """The applier failed: stop this replica's Raft (it must not vote or lead)."""
        self._own(node)
        self.consensus.stop()
        if self._on_crash is not None:
            self._on_crash()
