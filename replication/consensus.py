"""The consensus interface the replication layer is written against.

The two methods every implementation keeps exactly are :meth:`ConsensusModule.propose` and
:meth:`ConsensusModule.get_committed_transactions`. A replicated log needs a
few more, kept small and documented here:

* ``leader_id`` -- which node currently leads (None during an election);
* ``submit`` -- the non-blocking half of ``propose``: append now, wait later.
  The leader certifies a transaction and submits it in one critical section,
  so log order equals certification order (docs/ARCHITECTURE.md, "Where
  transactions run"); ``propose`` is ``submit(...).wait()``;
* ``commit_index``, ``entries_after`` and ``wait_committed`` -- for appliers;
* ``read_index`` -- a leadership check for linearizable reads;
* ``first_index`` and ``truncate_prefix`` -- log compaction after every
  replica applied a prefix (a replica behind the prefix needs a snapshot).

Payloads are opaque bytes. An empty payload is a leader's no-op entry (Raft
commits entries of earlier terms through one); appliers skip its content
but still record its index as applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from replication.runtime import Runtime

__all__ = ["ConsensusModule", "LogEntry", "NodeConsensus", "Proposal"]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One replicated log entry.

    ``attachment`` is an in-memory convenience, never persisted or compared:
    the proposer's decoded form of the payload, shared by every simulated node
    holding this very object (after a restart it is None and nodes decode).
    """

    index: int
    term: int
    payload: bytes
    attachment: Any = field(default=None, compare=False, repr=False)


class Proposal(Protocol):
    """A submitted entry whose fate is being decided."""

    @property
    def index(self) -> int: ...

    @property
    def outcome(self) -> bool | None:
        """True committed, False lost, None not known yet (does not wait)."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """True once committed, False once it can no longer commit.

        Raises :class:`replication.errors.AmbiguousCommit` if neither is
        known when ``timeout`` expires.
        """
        ...


@runtime_checkable
class ConsensusModule(Protocol):
    """A replicated log that a group of nodes agrees on."""

    def propose(self, transaction: bytes) -> bool:
        """Block until ``transaction`` is committed: True if it was, False otherwise.

        False means it certainly was not committed (e.g. the leader failed
        and the entry was lost). When the outcome cannot be learned, raises
        AmbiguousCommit.
        """
        ...

    def get_committed_transactions(self) -> list[bytes]:
        """Committed transactions in commit order (since the last prefix truncation)."""
        ...

    @property
    def leader_id(self) -> int | None: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def first_index(self) -> int:
        """Index of the oldest entry still in the log (entries before it were truncated)."""
        ...

    def next_index(self, node: int) -> int:
        """The index the next entry submitted through leader ``node`` would get."""
        ...

    def submit(self, transaction: bytes, *, node: int | None = None,
               expect_index: int | None = None, attachment: Any = None) -> Proposal:
        """Append to the log through ``node`` (default: the leader), without waiting.

        Raises NotLeader if ``node`` does not lead or the entry would not get
        ``expect_index`` (the certifier used that index as the commit
        sequence), Unavailable if the leader cannot reach a quorum.
        """
        ...

    def entries_after(self, index: int, limit: int = 1000) -> list[LogEntry]:
        """Committed entries with index > ``index``, in order, at most ``limit``."""
        ...

    def wait_committed(self, index: int, timeout: float) -> bool:
        """Wait until commit_index >= ``index``; False on timeout."""
        ...

    def read_index(self, node: int, timeout: float) -> int:
        """Confirm ``node`` still leads (a quorum answers); return the commit index to read at.

        Raises NotLeader or Unavailable.
        """
        ...

    def truncate_prefix(self, index: int) -> None:
        """Forget committed entries up to ``index`` (every replica has applied them)."""
        ...


class NodeConsensus(Protocol):
    """What a replica (:class:`replication.node.Node`) needs of its consensus module.

    Two implementations: :class:`replication.raftgroup.RaftGroup` (every
    replica in this process; ``node`` picks one) and
    :class:`replication.member.Member` (the one replica of a node process;
    ``node`` must be its own). Indexes are 0-based node ids.
    """

    @property
    def runtime(self) -> Runtime:
        """The group's clock, waits, random ids and threads (replication.runtime)."""
        ...

    @property
    def leader_id(self) -> int | None: ...

    @property
    def term(self) -> int: ...

    @property
    def commit_index(self) -> int: ...

    def leader_ready(self, node: int) -> bool:
        """Does ``node`` lead and has it committed an entry of its own term?"""
        ...

    def next_index(self, node: int) -> int: ...

    def submit(self, transaction: bytes, *, node: int | None = None,
               expect_index: int | None = None, expect_term: int | None = None,
               attachment: Any = None) -> Proposal: ...

    def entries_after(self, index: int, limit: int = 1000, *, node: int | None = None
                      ) -> list[LogEntry]:
        """Committed entries ``node`` holds; SnapshotNeeded if ``index + 1`` was compacted."""
        ...

    def wait_committed(self, index: int, timeout: float, *, node: int | None = None) -> bool: ...

    def read_index(self, node: int, timeout: float) -> int: ...

    def crash(self, node: int) -> None:
        """Take ``node`` out of the group (its applier failed: it must not vote or lead)."""
        ...
