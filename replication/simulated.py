"""SimulatedConsensus: a whole Raft-like group in one process, durable and faultable.

What it models faithfully (the guarantees the replication layer relies on):

* every node keeps its own durable log (:class:`replication.log_store.NodeLog`);
  an entry is committed only when a majority of nodes stored it durably and
  it belongs to the leader's current term (Raft's commit rule; earlier-term
  entries commit through the leader's no-op);
* a leader is elected among live nodes in a partition holding a majority,
  ``election_delay`` seconds after the previous leader was lost; the winner
  has the most up-to-date log of that majority (Raft's election restriction),
  so it holds every committed entry; terms only increase;
* followers are brought in line by the consistency check: conflicting
  suffixes are truncated, missing entries sent, and a follower behind the
  leader's compacted prefix has its log reset (it then needs a state snapshot);
* a node's applier sees only entries its own log holds and knows committed.

What it simplifies: the network is the driver thread copying entries under a
lock (with optional ``latency`` per follower); votes are not messages. A
*proposal* learns its fate from the log, as a client with a request id would
after a failover: True once committed, False once it can no longer commit
(a different entry was committed at its index, or an entry of a later term
was committed before it), and AmbiguousCommit only if neither is known in
time.

Group commit and pipelining: ``submit`` only appends to the leader's log in
memory. Each node has a *replicator* (a thread, as each Raft server persists
independently) that repeatedly takes everything new for its node -- the
leader's own appends, or the entries a follower lacks -- writes it with one
sync, and records its vote; the commit index moves as soon as a quorum has
voted, while slower nodes catch up on their own.

Faults: ``crash(node)`` drops a node's memory (its unsynced entries are lost,
as on power failure), ``restart(node)`` recovers it from its log file,
``partition(nodes)``/``heal()`` cut the network, ``latency`` delays every
follower's replication step.

Threads and locks: ``_lock`` guards the group state (roles, terms, match and
commit indexes, proposals, which logs exist); ``_io[i]`` is held by whoever
writes node i's log file (its replicator, fault injection, compaction), so a
crash never races a sync. An election timer thread elects leaders. Lock
order: ``_io[i]`` before ``_lock``.

Deterministic mode (``deterministic=True``): no threads; time is a tick
count, ``tick()`` runs the election timer and then every node's replicator
once, in node order, and ``Proposal.wait`` ticks until the outcome is known.
With a seed, the same calls give the same results.
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
from replication.errors import (
    AmbiguousCommit,
    NodeDamaged,
    NotLeader,
    SnapshotNeeded,
    Unavailable,
)
from replication.log_store import NodeLog

__all__ = ["SimulatedConsensus", "SnapshotNeeded"]

log = logging.getLogger(__name__)

_MAX_DETERMINISTIC_TICKS = 200


# What a follower needs this round: (node, its log, reset to (index, term),
# truncate from index, entries to append).
_Plan = tuple[int, NodeLog, tuple[int, int] | None, int | None, list[LogEntry]]


class _Signal:
    """A binary wake-up flag on one raw lock: ``set`` is one C call and never blocks.

    Held lock = no signal pending. Cheaper than threading.Event (a Condition,
    a Python-level notify_all) on the client's submit path, where every
    proposal signals every replicator.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already signalled
            pass

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def wait(self, timeout: float) -> None:
        """Wait until signalled (consuming the signal) or ``timeout`` passes."""
        self._lock.acquire(timeout=timeout)


class _Proposal:
    __slots__ = ("_decided", "_sim", "index", "outcome", "term")

    def __init__(self, sim: SimulatedConsensus, index: int, term: int) -> None:
        self._sim = sim
        self.index = index
        self.term = term
        self.outcome: bool | None = None
        # Created by the first waiter only (most proposals are never waited on
        # directly): only this proposal's waiter wakes. Guarded by sim._lock.
        self._decided: threading.Event | None = None

    def decide(self, outcome: bool | None) -> None:
        """Record the outcome (None: the group closed undecided) and wake the waiter.

        Called with sim._lock held.
        """
        self.outcome = outcome
        if self._decided is not None:
            self._decided.set()

    def wait(self, timeout: float | None = None) -> bool:
        sim = self._sim
        if sim.deterministic:
            for _ in range(_MAX_DETERMINISTIC_TICKS):
                if self.outcome is not None:
                    return self.outcome
                sim.tick()
        elif self.outcome is None:
            with sim._lock:
                if self._decided is None:
                    self._decided = threading.Event()
                ev = self._decided
            if self.outcome is None:
                ev.wait(timeout)
        if self.outcome is not None:
            return self.outcome
        raise AmbiguousCommit(f"entry {self.index} (term {self.term}): outcome unknown "
                              f"{'after close' if sim._closed else 'when the wait timed out'}",
                              index=self.index, term=self.term)


class SimulatedConsensus:
    """A replicated log over ``nodes`` simulated nodes with durable per-node logs."""

    def __init__(self, path: str, nodes: int = 3, *, fs: FileSystem | None = None,
                 election_delay: float = 0.15, latency: float = 0.0, seed: int | None = None,
                 deterministic: bool = False,
                 damaged: dict[int, CorruptionError] | None = None) -> None:
        if nodes < 1:
            raise InvalidArgument(f"nodes must be >= 1, got {nodes}")
        if election_delay <= 0 or latency < 0:
            raise InvalidArgument("election_delay must be > 0 and latency >= 0")
        self.path = path
        self.nodes = nodes
        self.quorum = nodes // 2 + 1
        self.deterministic = deterministic
        self.election_delay = election_delay
        self.latency = latency
        self._fs = fs or OSFileSystem()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._io = [threading.Lock() for _ in range(nodes)]
        # Targeted wake-ups: each replicator has a work event, each node's
        # appliers a condition on its commit index; _cv is for leadership waits.
        self._work = [_Signal() for _ in range(nodes)]
        self._node_cv = [threading.Condition(self._lock) for _ in range(nodes)]
        self._stopped = threading.Event()
        # A replica whose log fails a check is one of the f failures the group
        # tolerates: it stays down (out of every quorum) until repaired.
        self.damaged: dict[int, CorruptionError] = dict(damaged or {})  # not even opened
        # A replica whose log failed a write (a sync or a rewrite) is down too.
        self.failures: dict[int, BaseException] = {}
        self._logs: list[NodeLog | None] = []
        try:
            for i in range(nodes):
                if i in self.damaged:
                    self._logs.append(None)
                    continue
                try:
                    self._logs.append(self._open_log(i))
                except CorruptionError as exc:
                    log.error("consensus: node %d stays down, its log is damaged: %s", i, exc)
                    self.damaged[i] = exc
                    self._logs.append(None)
            if len(self.damaged) > nodes - self.quorum:
                raise next(iter(self.damaged.values()))
        except BaseException:
            for lg in self._live_logs():
                lg.close()
            raise
        self._alive = [lg is not None for lg in self._logs]
        self._groups: list[frozenset[int]] = [frozenset(range(nodes))]
        self._term = max(lg.term for lg in self._live_logs())
        self._leader: int | None = None
        self._noop_index = 0
        self._commit = 0
        self._node_commit = [0] * nodes
        self._match = [0] * nodes
        # (index, term) -> proposal: after a failover two proposals can share an index.
        self._proposals: SortedDict[tuple[int, int], _Proposal] = SortedDict()
        self._ticks = 0
        self._leaderless_since = self.now()
        self._closed = False
        self.elections = 0
        self.syncs = 0
        self.before_tick: Callable[[], None] | None = None
        self._threads: list[threading.Thread] = []
        if not deterministic:
            self._threads.append(threading.Thread(target=self._election_timer, daemon=True,
                                                  name=f"stratakv-elections:{path}"))
            self._threads += [threading.Thread(target=self._replicator, args=(i,), daemon=True,
                                               name=f"stratakv-replicator-{i}:{path}")
                              for i in range(nodes)]
            for t in self._threads:
                t.start()

    # -- helpers ---------------------------------------------------------------------

    def _open_log(self, node: int) -> NodeLog:
        return NodeLog(self._fs, self._fs.join(self.path, f"node-{node}", "log"), node)

    def _live_logs(self) -> list[NodeLog]:
        return [lg for lg in self._logs if lg is not None]

    def _log(self, node: int) -> NodeLog:
        lg = self._logs[node]
        if lg is None:
            raise NotLeader(f"node {node} is down")
        return lg

    def now(self) -> float:
        """The group's clock: seconds, or in deterministic mode ticks x election_delay / 4.

        Everything that times out in a deterministic cluster (elections, client
        retries, transaction age) reads this clock, so a run depends only on
        its seed and calls, never on how fast the machine is.
        """
        if self.deterministic:
            return self._ticks * self.election_delay / 4
        return time.monotonic()

    def random_id(self) -> bytes:
        """16 random bytes (an id, not a secret); from the seeded generator if deterministic."""
        if self.deterministic:
            return self._rng.randbytes(16)
        return random.randbytes(16)

    def _group_of(self, node: int) -> frozenset[int]:
        return next(g for g in self._groups if node in g)

    def _reachable(self, a: int, b: int) -> bool:
        return self._alive[a] and self._alive[b] and b in self._group_of(a)

    def _has_quorum(self, node: int) -> bool:
        return self._alive[node] and sum(
            self._alive[i] for i in self._group_of(node)) >= self.quorum

    # -- the consensus interface -------------------------------------------------------

    def propose(self, transaction: bytes) -> bool:
        """Append ``transaction`` through the leader and block until its fate is known."""
        try:
            return self.submit(transaction).wait()
        except (NotLeader, Unavailable):
            return False

    def get_committed_transactions(self) -> list[bytes]:
        """Committed payloads in log order since the last prefix truncation (no-ops omitted).

        Read from the running node that knows the most of the committed log
        (the leader, normally). With the leader down, a follower may not yet
        know how far the log was committed; the list can then end early, and
        grows back once a new leader commits.
        """
        with self._lock:
            best = max((i for i in range(self.nodes) if self._logs[i] is not None),
                       key=lambda i: self._node_commit[i])
            _, entries = self._log(best).prefix(self._node_commit[best])
        return [e.payload for e in entries if e.payload]

    # -- the extras ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def first_index(self) -> int:
        with self._lock:
            bases = [lg.base_index for lg in self._live_logs()]
        return max(bases, default=0) + 1

    def log_span(self, node: int) -> tuple[int, int] | None:
        """(first, last) index held in ``node``'s log; None while the node is down."""
        with self._lock:
            lg = self._logs[self._check_node(node)]
            return None if lg is None else (lg.base_index + 1, lg.last_index)

    def node_commit_index(self, node: int) -> int:
        return self._node_commit[node]

    def committed_entries(self, node: int) -> tuple[int, list[LogEntry]]:
        """(base index, entries up to ``node``'s commit index) as ``node`` holds them."""
        with self._lock:
            lg = self._logs[node]
            if lg is None:
                return 0, []
            return lg.prefix(self._node_commit[node])


    def is_alive(self, node: int) -> bool:
        return self._alive[node]

    def leader_ready(self, node: int) -> bool:
        """Has ``node`` committed its no-op, so that it knows every committed entry?"""
        with self._lock:
            return self._leader == node and self._commit >= self._noop_index

    def next_index(self, node: int) -> int:
        """The index the next entry submitted through leader ``node`` would get."""
        with self._lock:
            if self._leader != node:
                raise NotLeader(f"node {node} is not the leader")
            return self._log(node).last_index + 1

    def submit(self, transaction: bytes, *, node: int | None = None,
               expect_index: int | None = None, expect_term: int | None = None,
               attachment: object = None) -> _Proposal:
        """Append through the leader, without waiting.

        With ``expect_index`` and ``expect_term`` the entry goes in only at
        that index and in that term, else NotLeader: a certifier that used
        the index as its commit sequence belongs to one leader's term, and an
        entry of another term would put its decisions in the wrong order.
        """
        if not isinstance(transaction, (bytes, bytearray, memoryview)):
            raise TypeError(f"transaction must be bytes-like, got {type(transaction).__name__}")
        payload = bytes(transaction)
        if not payload:
            raise InvalidArgument("an empty transaction is reserved for leader no-ops")
        with self._cv:
            if self._closed:
                raise ClosedError("consensus module is closed")
            leader = self._leader
            if leader is None:
                raise NotLeader("no leader is elected")
            if node is not None and node != leader:
                raise NotLeader(f"node {node} is not the leader (node {leader} is)",
                                leader=leader)
            if expect_term is not None and expect_term != self._term:
                raise NotLeader(f"term {expect_term} is over: node {leader} leads term "
                                f"{self._term}", leader=leader)
            if not self._has_quorum(leader):
                raise Unavailable(f"leader {leader} cannot reach a quorum of {self.quorum}")
            lg = self._log(leader)
            if expect_index is not None and lg.last_index + 1 != expect_index:
                raise NotLeader(f"the log moved on: next index is {lg.last_index + 1}, "
                                f"not {expect_index}")
            entry = LogEntry(lg.last_index + 1, self._term, payload, attachment)
            lg.append([entry])
            p = _Proposal(self, entry.index, entry.term)
            self._proposals[entry.index, entry.term] = p
        for ev in self._work:
            ev.set()
        return p

    def entries_after(self, index: int, limit: int = 1000, *, node: int | None = None
                      ) -> list[LogEntry]:
        """Committed entries after ``index`` that ``node`` (default: the leader) holds."""
        with self._lock:
            n = self._leader if node is None else node
            if n is None:
                return []
            lg = self._logs[n]
            if lg is None:
                return []
            hi = min(self._node_commit[n], index + limit)
            return lg.read(index + 1, hi)  # SnapshotNeeded if index + 1 was compacted

    def wait_committed(self, index: int, timeout: float, *, node: int | None = None) -> bool:
        if self.deterministic:
            n = self._leader if node is None else node
            return n is not None and self._node_commit[n] >= index
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                n = self._leader if node is None else node
                if n is not None and self._node_commit[n] >= index:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                (self._cv if n is None else self._node_cv[n]).wait(left)

    def read_index(self, node: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        if self.latency and not self.deterministic:  # a heartbeat round trip to the followers
            time.sleep(min(self.latency, timeout))
            if self.latency > timeout:
                raise Unavailable(f"leader {node} heard no quorum within {timeout}s")
        with self._cv:
            while True:
                if self._closed:
                    raise ClosedError("consensus module is closed")
                if self._leader != node:
                    raise NotLeader(f"node {node} is not the leader")
                if self._has_quorum(node) and self._commit >= self._noop_index:
                    return self._commit
                left = deadline - time.monotonic()
                if left <= 0 or self.deterministic:
                    raise Unavailable(f"leader {node} could not confirm its leadership with a "
                                      f"quorum within {timeout}s")
                self._cv.wait(left)

    def truncate_prefix(self, index: int) -> None:
        """Compact every running node's log up to ``index`` (or its commit index).

        A node whose log fails the rewrite leaves the group (see
        :meth:`_log_failed`); the others are compacted all the same.
        """
        for i in range(self.nodes):
            with self._io[i]:
                with self._lock:
                    lg = self._logs[i]
                    upto = min(index, self._node_commit[i])
                if lg is None:
                    continue
                try:
                    lg.compact(upto)
                except Exception:
                    if lg.failed is None:
                        raise
            if lg.failed is not None:
                self._log_failed(i, lg.failed)

    def _log_failed(self, node: int, exc: BaseException) -> None:
        """``node``'s log can no longer be written: it leaves the group like a crashed node.

        Its entries may be on disk or not; a restart recovers from what is.
        Caller holds no lock.
        """
        log.error("consensus: node %d leaves the group, its log failed: %r", node, exc)
        self.failures[node] = exc
        self.crash(node)

    def forget(self, node: int) -> None:
        """Stop counting ``node``'s stored entries toward commits (its data is to be deleted).

        A down node's synced entries still count -- they are on its disk --
        until a repair is about to delete them: then the vote must be
        withdrawn *before* the repair reads the commit index it checkpoints.
        """
        self._check_node(node)
        with self._lock:
            if self._logs[node] is not None:
                raise InvalidArgument(f"node {node} is running")
            self._match[node] = 0
    # -- fault injection -------------------------------------------------------------

    def _check_node(self, node: object) -> int:
        if type(node) is not int or not 0 <= node < self.nodes:
            raise InvalidArgument(f"node must be an int in [0, {self.nodes}), got {node!r}")
        return node

    def crash(self, node: int) -> None:
        """Stop ``node``: its memory is lost, its log file keeps what was synced."""
        self._check_node(node)
        with self._io[node], self._cv:
            lg = self._logs[node]
            if lg is None:
                return
            lg.close()
            self._logs[node] = None
            self._alive[node] = False
            self._node_commit[node] = 0
            if self._leader == node:
                self._step_down("crashed")
            log.info("consensus: node %d crashed", node)
            self._notify_all()

    def restart(self, node: int) -> None:
        """Bring ``node`` back from its log file; it catches up from the leader.

        Raises NodeDamaged (and the node stays down) if its log fails a check.
        """
        self._check_node(node)
        with self._io[node]:
            if self._logs[node] is not None:
                return
            if node in self.damaged:  # only a repair (reseed) brings a damaged node back
                raise NodeDamaged(node, self.damaged[node])
            try:
                lg = self._open_log(node)
            except CorruptionError as exc:
                self.damaged[node] = exc
                raise NodeDamaged(node, exc) from exc
            self.failures.pop(node, None)
            self._install_log(node, lg)

    def reseed(self, node: int, base_index: int, base_term: int) -> None:
        """Give down ``node`` a new, empty log starting after (base_index, base_term).

        The repair of a damaged replica: its state machine was re-seeded from
        a peer's checkpoint at ``base_index`` and the log continues from
        there. Its old log files are deleted.
        """
        self._check_node(node)
        with self._io[node]:
            if self._logs[node] is not None:
                raise InvalidArgument(f"node {node} is running: crash it before reseeding")
            log_dir = self._fs.join(self.path, f"node-{node}", "log")
            if self._fs.exists(log_dir):
                self._fs.remove_tree(log_dir)
            lg = self._open_log(node)
            lg.reset(base_index, base_term)
            with self._lock:
                lg.set_term(self._term)
            lg.sync()
            self.damaged.pop(node, None)
            self.failures.pop(node, None)
            self._install_log(node, lg)

    def term_at(self, index: int) -> int | None:
        """The term of committed entry ``index`` in the leader's log (None: not known there)."""
        with self._lock:
            if self._leader is None or index > self._commit:
                return None
            return self._log(self._leader).term_at(index)

    def _install_log(self, node: int, lg: NodeLog) -> None:
        """Make ``node`` run again with log ``lg``. Holds _io[node]."""
        with self._cv:
            self._logs[node] = lg
            self._alive[node] = True
            self._match[node] = 0
            self._node_commit[node] = 0
            self._term = max(self._term, lg.term)
            log.info("consensus: node %d runs again at index %d term %d", node,
                     lg.last_index, lg.term)
            self._notify_all()

    def partition(self, nodes: Sequence[int]) -> None:
        """Cut ``nodes`` off from the others (both sides keep running)."""
        side = frozenset(nodes)
        with self._cv:
            self._groups = [g for g in (side, frozenset(range(self.nodes)) - side) if g]
            log.info("consensus: partition %s", [sorted(g) for g in self._groups])
            self._notify_all()

    def heal(self) -> None:
        with self._cv:
            self._groups = [frozenset(range(self.nodes))]
            self._notify_all()

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    # -- elections and replication -------------------------------------------------------

    def tick(self) -> None:
        """Deterministic mode: advance logical time, elect if due, run every replicator once.

        ``before_tick``, if set, runs first: a simulation injects faults there,
        so that they land while a client is waiting for its proposal.
        """
        if self.before_tick is not None:
            self.before_tick()
        self._ticks += 1
        with self._cv:
            self._maybe_elect()
        for node in range(self.nodes):
            try:
                self._replicate_once(node)
            except Exception:
                if not self._handle_log_failure(node):
                    raise

    def _handle_log_failure(self, node: int) -> bool:
        """After a replication step of ``node`` failed: did its log fail (now handled)?"""
        lg = self._logs[node]
        if lg is None or lg.failed is None:
            return False
        self._log_failed(node, lg.failed)
        return True

    def _election_timer(self) -> None:
        step = min(0.02, self.election_delay / 4)
        while not self._stopped.wait(step):
            with self._lock:
                self._maybe_elect()

    def _replicator(self, node: int) -> None:
        work = self._work[node]
        while not self.closed:
            try:
                work.clear()  # before looking, so that a wake-up during the step is kept
                if not self._replicate_once(node):
                    work.wait(0.05)
            except Exception:
                if self._handle_log_failure(node):
                    continue  # the node is down now; its replicator idles until a restart
                log.exception("consensus: replication to node %d failed; retrying", node)
                time.sleep(0.05)

    def _has_work(self, node: int) -> bool:
        """Does ``node``'s log lag the leader's (or hold unsynced appends)? Holds _lock."""
        leader = self._leader
        lg = self._logs[node]
        if leader is None or lg is None or not self._has_quorum(leader):
            return False
        if node == leader:
            return self._match[node] < lg.last_index
        if not self._reachable(leader, node):
            return False
        return self._match[node] < self._log(leader).last_index or lg.term < self._term

    def _replicate_once(self, node: int) -> bool:
        """Bring ``node``'s log in line with the leader's, sync it, count its vote.

        Returns False when there was nothing to do.
        """
        with self._io[node]:
            with self._lock:
                if self._closed or not self._has_work(node):
                    return False
                leader = self._leader
                assert leader is not None  # _has_work checked it
                term = self._term
                llog = self._log(leader)
                nlog = self._log(node)
                plan = None if node == leader else self._plan(llog, node)
            if plan is not None:
                if self.latency and not self.deterministic:
                    time.sleep(self.latency)  # the AppendEntries round trip
                with self._lock:
                    # An election may have run meanwhile (this node may even lead
                    # now): a plan made for the old leader must not touch the log.
                    if self._leader != leader or self._term != term:
                        return True
                    _, _, reset, truncate_from, entries = plan
                    if reset is not None:
                        log.info("consensus: node %d is behind the log prefix; reset to %d",
                                 node, reset[0])
                        nlog.reset(*reset)
                    if nlog.term < term:
                        nlog.set_term(term)
                    if truncate_from is not None:
                        nlog.truncate(truncate_from)
                    if entries:
                        nlog.append(entries)
            synced = nlog.sync()
            with self._cv:
                self.syncs += 1
                if self._leader == leader and self._term == term:
                    self._match[node] = synced
                    self._advance_commit(leader, term)
            return True

    def _notify_all(self) -> None:
        """Wake every waiter and replicator: leadership or membership changed. Holds _lock."""
        self._cv.notify_all()
        for cv in self._node_cv:
            cv.notify_all()
        for ev in self._work:
            ev.set()

    def _step_down(self, why: str) -> None:
        """Caller holds _lock."""
        log.info("consensus: leader %s of term %d steps down (%s)", self._leader, self._term, why)
        self._leader = None
        self._leaderless_since = self.now()

    def _maybe_elect(self) -> None:
        """Step down a leader without a quorum; elect one when due. Holds _lock."""
        if self._leader is not None:
            if self._has_quorum(self._leader):
                return
            self._step_down("lost its quorum")
        if self.now() - self._leaderless_since < self.election_delay:
            return
        group = next((g for g in self._groups
                      if sum(self._alive[i] for i in g) >= self.quorum), None)
        if group is None:
            return
        voters = sorted(i for i in group if self._alive[i])
        best = max((self._log(i).last_term, self._log(i).last_index) for i in voters)
        winner = self._rng.choice([i for i in voters
                                   if (self._log(i).last_term, self._log(i).last_index) == best])
        self._term += 1
        for i in voters:
            self._log(i).set_term(self._term)
        self._leader = winner
        self._match = [0] * self.nodes
        lg = self._log(winner)
        noop = LogEntry(lg.last_index + 1, self._term, b"")
        lg.append([noop])
        self._noop_index = noop.index
        self.elections += 1
        log.info("consensus: node %d elected leader for term %d (log %d/%d)", winner, self._term,
                 lg.last_index, lg.last_term)
        self._notify_all()

    def _plan(self, llog: NodeLog, f: int) -> _Plan:
        """What follower ``f`` needs: (f, its log, reset, truncate_from, entries). Holds _lock."""
        flog = self._log(f)
        start = self._match[f]
        reset: tuple[int, int] | None = None
        if start == 0 or flog.term_at(start) != llog.term_at(start):
            # Consistency check: the newest index where both logs agree.
            i = min(flog.last_index, llog.last_index)
            floor = max(llog.base_index, flog.base_index)
            while i >= floor and (flog.term_at(i) is None or flog.term_at(i) != llog.term_at(i)):
                i -= 1
            if i < floor or flog.term_at(i) != llog.term_at(i):
                reset = (llog.base_index, llog.base_term)
                i = llog.base_index
            start = i
        try:
            entries = llog.read(start + 1, llog.last_index)
        except SnapshotNeeded:  # the leader's log was compacted past ``start`` meanwhile
            reset = (llog.base_index, llog.base_term)
            start = reset[0]
            entries = llog.read(start + 1, llog.last_index)
        truncate_from = start + 1 if reset is None and flog.last_index > start else None
        return f, flog, reset, truncate_from, entries

    def _advance_commit(self, leader: int, term: int) -> None:
        """Commit what a quorum holds in this term; tell nodes and proposers. Holds _lock."""
        matched = sorted(self._match, reverse=True)[self.quorum - 1]
        llog = self._log(leader)
        if matched > self._commit and llog.term_at(matched) == term:
            self._commit = matched
            self._resolve(llog)
        for f in range(self.nodes):
            if f == leader:
                known = self._commit
            elif self._logs[f] is not None and self._reachable(leader, f):
                known = max(self._node_commit[f], min(self._commit, self._match[f]))
            else:
                continue
            if known != self._node_commit[f]:
                self._node_commit[f] = known
                self._node_cv[f].notify_all()
        self._cv.notify_all()

    def _resolve(self, llog: NodeLog) -> None:
        """Decide proposals whose fate the commit index now settles. Holds _lock."""
        commit = self._commit
        committed_term = llog.term_at(commit) or 0
        for key in list(self._proposals):
            p = self._proposals[key]
            if p.index <= commit:
                p.decide(llog.term_at(p.index) == p.term)
            elif committed_term > p.term:
                p.decide(False)  # a later term committed below it: it can never commit
            else:
                continue
            del self._proposals[key]

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._notify_all()
            for p in self._proposals.values():
                p.decide(None)
            self._proposals.clear()
        self._stopped.set()
        for t in self._threads:
            t.join()
        errors: list[BaseException] = []
        for i in range(self.nodes):
            with self._io[i]:
                lg = self._logs[i]
                if lg is None:
                    continue
                try:
                    lg.sync()
                except BaseException as exc:  # close the others all the same
                    errors.append(exc)
                lg.close()
        if errors:
            raise errors[0]
