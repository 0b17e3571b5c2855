"""RaftGroup: N Raft nodes in one process over a memory network -- a real protocol, in-process.

Each node is a :class:`~replication.driver.RaftConsensus`: a pure
:class:`~replication.raft.node.RaftNode`, its own durable log, its own
threads; the nodes speak only through messages on a
:class:`~replication.transport.memory.MemoryNetwork`. Nothing here decides
for them: who leads, what is committed and which proposal won are what the
nodes' own messages made of it. The group only routes client calls (to the
node that leads in the highest term) and injects faults -- ``crash``
(the node's memory is lost, its log keeps what was synced), ``restart``,
``partition``, ``heal``, ``set_latency``, and the repair of a damaged
node (``forget``, ``reseed``). The consensus contract suite in
``tests/test_replication.py`` runs against it.

Timing: ``election_timeout_ms`` is the election timeout, 10 ticks; the
leader heartbeats every 2 ticks. A follower campaigns after a randomised
1-2 election timeouts without a leader (pre-vote first); a leader that has
not heard from a quorum for one election timeout steps down (check-quorum).

Deterministic mode (``deterministic=True``): no threads, a tick count for a
clock; :meth:`tick` ticks every node and then runs their Ready pipelines
until no message is left in flight; ``Proposal.wait`` ticks until the fate
is known. With a seed, the same calls give the same run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from sortedcontainers import SortedDict

from engine.errors import ClosedError, CorruptionError, InvalidArgument
from engine.fs import FileSystem, OSFileSystem
from replication.consensus import LogEntry
from replication.driver import RaftConsensus, RaftProposal
from replication.errors import AmbiguousCommit, NodeDamaged, NotLeader, Unavailable
from replication.node_log import NodeLog
from replication.raft.node import RaftConfig
from replication.runtime import RealRuntime, SimulatedRuntime
from replication.transport.memory import MemoryNetwork

__all__ = ["RaftGroup"]

log = logging.getLogger(__name__)

ELECTION_TIMEOUT_TICKS = 10
HEARTBEAT_TICKS = 2
_MAX_DETERMINISTIC_TICKS = 400


class _SteppedProposal:
    """A proposal of a simulated group: waiting for it steps the simulation."""

    __slots__ = ("_inner", "_runtime")

    def __init__(self, runtime: SimulatedRuntime, inner: RaftProposal) -> None:
        self._runtime = runtime
        self._inner = inner

    @property
    def index(self) -> int:
        return self._inner.index

    @property
    def outcome(self) -> bool | None:
        return self._inner.outcome

    def wait(self, timeout: float | None = None) -> bool:
        """Step until decided, at most _MAX_DETERMINISTIC_TICKS ticks (``timeout`` is ignored:
        simulated time is not the caller's)."""
        inner = self._inner
        limit = _MAX_DETERMINISTIC_TICKS * self._runtime.tick_s
        if self._runtime.wait(lambda _: inner.outcome is not None, limit):
            assert inner.outcome is not None
            return inner.outcome
        raise AmbiguousCommit(f"entry {self.index}: outcome unknown after "
                              f"{_MAX_DETERMINISTIC_TICKS} ticks", index=inner.index,
                              term=inner.term)


class RaftGroup:
    """A replicated log over ``nodes`` Raft nodes in one process, with fault injection."""

    def __init__(self, path: str, nodes: int = 3, *, fs: FileSystem | None = None,
                 election_timeout_ms: float = 150.0, link_latency_ms: float = 0.0,
                 seed: int | None = None,
                 deterministic: bool = False,
                 damaged: dict[int, CorruptionError] | None = None) -> None:
        """Open (or create) the group's logs under ``path``.

        A node whose log fails a check on open -- or that is named in
        ``damaged`` (say, a repair that did not finish) -- stays down, out of
        every quorum, until :meth:`reseed`; more than ``nodes - quorum``
        such nodes raise the first CorruptionError.
        """
        if nodes < 1:
            raise InvalidArgument(f"nodes must be >= 1, got {nodes}")
        if not election_timeout_ms > 0 or not link_latency_ms >= 0:
            raise InvalidArgument("election_timeout_ms must be > 0 and link_latency_ms >= 0")
        self.path = path
        self.nodes = nodes
        self.quorum = nodes // 2 + 1
        self.election_timeout_ms = election_timeout_ms
        self.tick_s = election_timeout_ms / 1000 / ELECTION_TIMEOUT_TICKS
        self.propose_timeout_s = 10 * election_timeout_ms / 1000
        self._fs = fs or OSFileSystem()
        self._rng = random.Random(seed)
        # Deterministic: simulated time, the group's seeded RNG for ids, no threads.
        self.runtime: RealRuntime | SimulatedRuntime = (
            SimulatedRuntime(self.tick_s, self._rng) if deterministic else RealRuntime())
        if isinstance(self.runtime, SimulatedRuntime):
            self.runtime.step = self.tick
        self._config = RaftConfig(election_timeout_ticks=ELECTION_TIMEOUT_TICKS,
                                  heartbeat_ticks=HEARTBEAT_TICKS)
        self.network = MemoryNetwork(nodes, rng=random.Random(self._rng.random()),
                                     latency_s=link_latency_ms / 1000)
        self._lock = threading.Lock()  # _nodes
        # Proposals are the group's, as a client with a request id would track them:
        # decided by whichever node learns what committed at their index, so a
        # proposal outlives the crash of the leader that took it. _plock is a
        # leaf lock (taken under a node's lock by its on_commit callback).
        self._plock = threading.Lock()
        self._proposals: SortedDict[tuple[int, int], RaftProposal] = SortedDict()
        self.elections = 0
        self.before_tick: Callable[[], None] | None = None
        self._closed = False
        # A node whose log fails a check is one of the f failures the group
        # tolerates: it stays down until reseeded. One whose log failed a
        # write (a sync, a rewrite) is down until restarted.
        self.damaged: dict[int, CorruptionError] = dict(damaged or {})
        self.failures: dict[int, BaseException] = {}
        # (term, node) of the latest election this group saw: the route to the
        # leader without asking every node (see leader_id).
        self._elected_last: tuple[int, int] | None = None
        self._commit_high = 0  # see commit_index
        self._nodes: list[RaftConsensus | None] = [None] * nodes
        try:
            for i in range(nodes):
                if i in self.damaged:
                    continue
                try:
                    self._nodes[i] = self._open(i)
                except CorruptionError as exc:
                    log.error("raft group: node %d stays down, its log is damaged: %s", i, exc)
                    self.damaged[i] = exc
            if len(self.damaged) > nodes - self.quorum:
                raise next(iter(self.damaged.values()))
        except BaseException:
            self.close()
            raise

    def _open(self, node: int) -> RaftConsensus:
        return RaftConsensus(node, self.nodes, self._fs,
                             self._fs.join(self.path, f"node-{node}", "log"), self.network,
                             config=self._config, rng=random.Random(self._rng.random()),
                             tick_s=self.tick_s, threads=not self.deterministic,
                             on_leader=self._elected, on_commit=self._committed,
                             on_fail=self._failed)

    def _committed(self, entries: tuple[LogEntry, ...]) -> None:
        """A node learned ``entries`` are committed: decide the proposals they settle."""
        last = entries[-1]
        with self._plock:
            self._commit_high = max(self._commit_high, last.index)
            if not self._proposals:
                return
            terms = {e.index: e.term for e in entries}
            for key in list(self._proposals.irange(maximum=(last.index, 1 << 62))):
                if key[0] in terms:
                    self._proposals.pop(key).decide(terms[key[0]] == key[1])
            # An entry of a later term committed below a proposal: it can never commit.
            for key in list(self._proposals):
                if key[1] < last.term:
                    self._proposals.pop(key).decide(False)

    def _elected(self, node: int, term: int) -> None:
        log.info("raft group: node %d leads term %d", node, term)
        self.elections += 1
        with self._plock:
            if self._elected_last is None or (term, node) > self._elected_last:
                self._elected_last = (term, node)

    def _failed(self, node: int, exc: BaseException) -> None:
        """Node ``node`` fail-stopped (its log could not be written): it leaves the group."""
        log.error("raft group: node %d leaves the group, its log failed: %r", node, exc)
        self.failures[node] = exc

    # -- routing ------------------------------------------------------------------------

    def _check_node(self, node: object) -> int:
        if type(node) is not int or not 0 <= node < self.nodes:
            raise InvalidArgument(f"node must be an int in [0, {self.nodes}), got {node!r}")
        return node

    def _running(self) -> list[RaftConsensus]:
        return [n for n in self._nodes if n is not None and n.failed is None]

    def _up(self, node: int) -> RaftConsensus | None:
        """Node ``node`` if it runs (not crashed, damaged or failed), else None."""
        n = self._nodes[self._check_node(node)]
        return n if n is not None and n.failed is None else None

    def _node(self, node: int) -> RaftConsensus:
        n = self._up(node)
        if n is None:
            raise NotLeader(f"node {node} is down")
        return n

    @property
    def leader_id(self) -> int | None:
        """The running node that leads in the highest term (a deposed leader may not know yet).

        The node elected last is asked first; only when it no longer leads
        (or is down) are all the nodes asked.
        """
        hint = self._elected_last
        if hint is not None:
            n = self._up(hint[1])
            if n is not None and n.is_leader:
                return hint[1]
        best: tuple[int, int] | None = None
        for n in self._running():
            if n.is_leader:
                cand = (n.term, n.id)
                best = cand if best is None or cand > best else best
        return None if best is None else best[1]

    def _node_or_leader(self, node: int | None) -> RaftConsensus | None:
        """Node ``node`` (default: the leader), or None while it is down or none leads."""
        if node is not None:
            return self._nodes[self._check_node(node)]
        lid = self.leader_id
        return None if lid is None else self._nodes[lid]

    def _leader(self) -> RaftConsensus:
        lid = self.leader_id
        if lid is None:
            raise NotLeader("no leader is elected")
        return self._node(lid)

    @property
    def term(self) -> int:
        """The leader's term (the highest term of a running node while there is none)."""
        lid = self.leader_id
        if lid is not None:
            return self._node(lid).term
        return max((n.term for n in self._running()), default=0)

    @property
    def commit_index(self) -> int:
        """The highest index any node of the group has learned is committed.

        Committed entries stay committed, so this never goes back -- although a
        new leader may learn it only once its own no-op commits, and a node
        that knew it may have crashed since.
        """
        with self._plock:
            return self._commit_high

    @property
    def first_index(self) -> int:
        return max((n.log.base_index for n in self._running()), default=0) + 1

    @property
    def closed(self) -> bool:
        return self._closed

    def node_commit_index(self, node: int) -> int:
        n = self._nodes[self._check_node(node)]
        return 0 if n is None else n.committed

    def log_span(self, node: int) -> tuple[int, int] | None:
        """(first, last) index held in ``node``'s log; None while the node is down."""
        n = self._up(node)
        return None if n is None else (n.log.base_index + 1, n.log.last_index)

    def committed_entries(self, node: int) -> tuple[int, list[LogEntry]]:
        """(base index, entries up to ``node``'s commit index) as ``node`` holds them."""
        n = self._up(node)
        return (0, []) if n is None else n.log.prefix(n.committed)

    def term_at(self, index: int) -> int | None:
        """The term of committed entry ``index`` in the leader's log (None: not known there)."""
        lid = self.leader_id
        n = None if lid is None else self._nodes[lid]
        if n is None or index > n.committed:
            return None
        return n.log.term_at(index)

    def is_alive(self, node: int) -> bool:
        return self._up(node) is not None

    def leader_ready(self, node: int) -> bool:
        n = self._up(node)
        return n is not None and n.leader_ready()

    @property
    def deterministic(self) -> bool:
        return self.runtime.deterministic

    # -- the consensus interface ------------------------------------------------------------

    def propose(self, transaction: bytes) -> bool:
        """Submit through the leader and block until the entry's fate is known.

        A leader cut off from its quorum cannot know at once that it no
        longer leads: its proposals wait, at most ``propose_timeout_s``
        (ten election timeouts), and then raise AmbiguousCommit.
        """
        try:
            return self.submit(transaction).wait(self.propose_timeout_s)
        except (NotLeader, Unavailable):
            return False

    def get_committed_transactions(self) -> list[bytes]:
        """Committed payloads (no-ops omitted) since the last truncation, from the leader.

        With no leader, from the running node that knows the most (it may not
        yet know how far the log was committed: the list can end early).
        """
        lid = self.leader_id
        running = self._running()
        if lid is not None:
            return self._node(lid).get_committed_transactions()
        if not running:
            return []
        return max(running, key=lambda n: n.committed).get_committed_transactions()

    def next_index(self, node: int) -> int:
        return self._node(node).next_index()

    def submit(self, transaction: bytes, *, node: int | None = None,
               expect_index: int | None = None, expect_term: int | None = None,
               attachment: object = None) -> RaftProposal | _SteppedProposal:
        """Append through ``node`` (default: the leader) without waiting.

        ``attachment`` is accepted for the interface and not kept: every
        node decodes the payload it holds.
        """
        if not isinstance(transaction, (bytes, bytearray, memoryview)):
            raise TypeError(f"transaction must be bytes-like, got {type(transaction).__name__}")
        payload = bytes(transaction)
        if not payload:
            raise InvalidArgument("an empty transaction is reserved for leader no-ops")
        if self._closed:
            raise ClosedError("consensus module is closed")
        n = self._leader() if node is None else self._node(node)
        index, term = n.append(payload, expect_index=expect_index, expect_term=expect_term)
        p = RaftProposal(index, term)
        with self._plock:
            self._proposals[index, term] = p
            for other in self._running():  # committed before it was registered?
                held = other.log.term_at(index) if other.committed >= index else None
                if held is not None:
                    self._proposals.pop((index, term)).decide(held == term)
                    break
        if isinstance(self.runtime, SimulatedRuntime):  # it leaves the leader at the next tick
            return _SteppedProposal(self.runtime, p)
        return p

    def entries_after(self, index: int, limit: int = 1000, *, node: int | None = None
                      ) -> list[LogEntry]:
        """Committed entries after ``index`` that ``node`` (default: the leader) holds."""
        n = self._node_or_leader(node)
        return [] if n is None else n.entries_after(index, limit)

    def wait_committed(self, index: int, timeout: float, *, node: int | None = None) -> bool:
        """Wait until ``node`` (default: whichever leads, as that changes) knows ``index``
        committed; simulated, without stepping (the caller drives time)."""
        deadline = time.monotonic() + timeout
        while True:
            n = self._node_or_leader(node)
            left = deadline - time.monotonic()
            if n is not None and n.wait_committed(index, max(0.0, min(left, 0.05))):
                return True
            if left <= 0 or self._closed:
                return False
            if n is None:
                time.sleep(min(left, 0.005))

    def read_index(self, node: int, timeout: float) -> int:
        n = self._node(node)
        if isinstance(self.runtime, SimulatedRuntime):  # the driver steps the group to wait
            return n.read_index(min(timeout, _MAX_DETERMINISTIC_TICKS * self.tick_s),
                                step=self.tick)
        return n.read_index(timeout)

    def truncate_prefix(self, index: int) -> None:
        """Compact every running node's log up to ``index`` (at most what it knows committed)."""
        for n in self._running():
            n.compact(index)

    # -- fault injection -------------------------------------------------------------------

    def crash(self, node: int) -> None:
        """Stop ``node``: its memory is lost, its log file keeps what was synced."""
        self._check_node(node)
        with self._lock:
            n, self._nodes[node] = self._nodes[node], None
        if n is not None:
            n.stop()
            log.info("raft group: node %d crashed", node)

    def restart(self, node: int) -> None:
        """Bring ``node`` back from its log file; it catches up from the leader.

        Raises NodeDamaged (and the node stays down) if its log fails a
        check, or was found damaged before: only :meth:`reseed` brings such
        a node back.
        """
        self._check_node(node)
        with self._lock:
            old = self._nodes[node]
            if old is not None and old.failed is None:
                return
            if node in self.damaged:
                raise NodeDamaged(node, self.damaged[node])
        if old is not None:
            old.stop()
        try:
            n = self._open(node)
        except CorruptionError as exc:
            with self._lock:
                self._nodes[node] = None
                self.damaged[node] = exc
            raise NodeDamaged(node, exc) from exc
        with self._lock:
            self._nodes[node] = n
            self.failures.pop(node, None)
        log.info("raft group: node %d restarted at index %d term %d", node, n.log.last_index,
                 n.log.term)

    def forget(self, node: int) -> None:
        """Stop counting down ``node``'s stored entries toward commits (they are to be deleted).

        A down node's synced entries still count -- they are on its disk --
        until a repair is about to delete them: then the leader must forget
        them *before* the repair reads the commit index it checkpoints.
        Raises NotLeader if no node leads (the repair needs one anyway).
        """
        self._check_node(node)
        if self.is_alive(node):
            raise InvalidArgument(f"node {node} is running")
        self.network.purge(node)  # its last acknowledgements must not arrive after this
        self._leader().forget(node)

    def reseed(self, node: int, base_index: int, base_term: int) -> None:
        """Give down ``node`` a new, empty log starting after (base_index, base_term), and
        start it.

        The repair of a damaged replica: its state machine was re-seeded from
        a checkpoint at ``base_index`` and its log continues from there. Its
        old log files are deleted. It joins in the leader's term having voted
        for that leader -- the one vote of that term that cannot elect
        anyone else -- so the vote its deleted log held is never cast twice.
        """
        self._check_node(node)
        if self.is_alive(node):
            raise InvalidArgument(f"node {node} is running: crash it before reseeding")
        leader = self._leader()
        term = leader.term
        log_dir = self._fs.join(self.path, f"node-{node}", "log")
        if self._fs.exists(log_dir):
            self._fs.remove_tree(log_dir)
        lg = NodeLog(self._fs, log_dir, node)
        try:
            lg.reset(base_index, base_term)
            lg.set_hard_state(term, leader.id + 1)
            lg.sync()
        finally:
            lg.close()
        with self._lock:
            self.damaged.pop(node, None)
        self.restart(node)

    def partition(self, nodes: Sequence[int]) -> None:
        """Cut ``nodes`` off from the others (both sides keep running)."""
        self.network.partition(nodes)

    def heal(self) -> None:
        self.network.heal()

    def set_latency(self, seconds: float) -> None:
        self.network.set_latency(seconds)

    # -- deterministic driving ----------------------------------------------------------------

    def tick(self) -> None:
        """Deterministic mode: one tick on every node, then run every pipeline until quiet.

        ``before_tick``, if set, runs first (a simulation injects faults there).
        """
        if self.before_tick is not None:
            self.before_tick()
        if isinstance(self.runtime, SimulatedRuntime):
            self.runtime.advance()
        for n in self._running():
            n.tick()
        self._settle()

    def _settle(self) -> None:
        """Run the nodes' Ready pipelines, in node order, until no message is in flight."""
        for _ in range(1000):
            if not any([n.cycle() for n in self._running()]):
                return
        raise RuntimeError("the raft group did not settle: messages keep flowing")

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for n in self._nodes:
            if n is not None:
                n.close()
        self.network.close()
        with self._plock:
            for p in self._proposals.values():
                p.decide(None)
            self._proposals.clear()
