"""RaftConsensus: one node's consensus module -- a pure RaftNode, a durable NodeLog, a transport.

The driver is the thin shell around :mod:`replication.raft.node`: it owns
the node's :class:`~replication.node_log.NodeLog` (through
:class:`LogStorage`, the core's read-only view of it), feeds the core its
inputs -- ticks, messages from peers, proposals and reads -- and carries out
every :class:`~replication.raft.node.Ready` in the order the core demands::

    persist (snapshot reset, entries, term and vote; one sync)
      -> send the messages
      -> apply: note the commit index, decide proposals, answer reads
      -> advance

Invariants:

1. Messages of a Ready leave only after its entries and hard state are on
   stable storage -- except the leader's appends and heartbeats
   (``Ready.early_messages``), which promise nothing about its storage: the
   core counts the leader's own copy only at ``advance``. So the leader's
   sync and its followers' overlap (Raft dissertation §10.2.1).
2. Readies are carried out one at a time, in order, by one thread at a time
   (``_cycle_lock``); the core itself is only touched under ``_lock``, and
   never across a disk write: proposals, reads, ticks and incoming messages
   go on while a Ready is persisted, and the next Ready carries them all
   (group commit).
3. ``committed`` only grows, and only to indexes this node has persisted:
   an applier may read the log up to it.
4. Ticks come from their own thread, so a slow disk never delays an
   election timeout or a leader's check-quorum step-down (etcd issue 13527).
   Only the Ready pipeline waits for the disk.

Deterministic mode (``threads=False``): no threads at all; the owner calls
:meth:`tick` and :meth:`cycle` (see :class:`replication.raftgroup.RaftGroup`).

Node indexes are 0-based here and everywhere above; the core's ids are
index + 1 (0 means "nobody" in its hard state).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from sortedcontainers import SortedDict

from engine.fs import FileSystem
from replication.consensus import LogEntry
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.node_log import NodeLog
from replication.raft.errors import LogCompacted, LogUnavailable, ProposalDropped
from replication.raft.log import limit_bytes
from replication.raft.messages import HardState, Message, SnapshotMeta
from replication.raft.node import RaftConfig, RaftNode, Ready, Role, Status
from replication.transport import Transport

__all__ = ["LogStorage", "RaftConsensus", "RaftProposal"]

log = logging.getLogger(__name__)


class LogStorage:
    """The Raft core's read-only view of a :class:`NodeLog` (``replication.raft.log.Storage``)."""

    def __init__(self, nlog: NodeLog, peers: tuple[int, ...]) -> None:
        self._log = nlog
        self._peers = peers

    def initial_state(self) -> HardState:
        vote = self._log.vote
        return HardState(self._log.term, vote or None, 0)

    def first_index(self) -> int:
        return self._log.base_index + 1

    def last_index(self) -> int:
        return self._log.last_index

    def term(self, index: int) -> int:
        term = self._log.term_at(index)
        if term is not None:
            return term
        if index < self._log.base_index:
            raise LogCompacted(f"index {index} is compacted (log starts after "
                               f"{self._log.base_index})")
        raise LogUnavailable(f"index {index} is beyond the last index {self._log.last_index}")

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        if lo <= self._log.base_index:
            raise LogCompacted(f"index {lo} is compacted (log starts after "
                               f"{self._log.base_index})")
        if hi > self._log.last_index + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index "
                                 f"{self._log.last_index}")
        return limit_bytes(self._log.read(lo, hi - 1), max_bytes)

    def snapshot(self) -> SnapshotMeta:
        return SnapshotMeta(self._log.base_index, self._log.base_term, self._peers)


class RaftProposal:
    """A submitted entry: decided when this node learns which entry committed at its index."""

    __slots__ = ("_done", "index", "outcome", "term")

    def __init__(self, index: int, term: int) -> None:
        self.index = index
        self.term = term
        self.outcome: bool | None = None
        self._done = threading.Event()

    def decide(self, outcome: bool | None) -> None:
        self.outcome = outcome
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self.outcome is None:
            self._done.wait(timeout)
        if self.outcome is not None:
            return self.outcome
        raise AmbiguousCommit(f"entry {self.index} (term {self.term}): outcome unknown when "
                              f"the wait ended", index=self.index, term=self.term)


class _Read:
    __slots__ = ("error", "index")

    def __init__(self) -> None:
        self.index: int | None = None
        self.error: BaseException | None = None


class _StepClock:
    """Deterministic mode's clock for one wait: one tick per step."""

    __slots__ = ("_t", "tick_s")

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._t = 0.0

    def now(self) -> float:
        return self._t

    def advance(self) -> None:
        self._t += self.tick_s


class RaftConsensus:
    """Node ``node`` of an ``nodes``-node Raft group, its log in ``log_dir`` on ``fs``."""

    def __init__(self, node: int, nodes: int, fs: FileSystem, log_dir: str,
                 network: Transport, *, config: RaftConfig, rng: random.Random,
                 tick_s: float, threads: bool = True,
                 on_leader: Callable[[int, int], None] | None = None,
                 on_commit: Callable[[tuple[LogEntry, ...]], None] | None = None,
                 on_fail: Callable[[int, BaseException], None] | None = None) -> None:
        """``on_leader(node, term)`` and ``on_commit(entries)`` are told, under this node's
        lock, when it becomes leader and when it learns entries are committed;
        ``on_fail(node, error)``, holding no lock, when the node fail-stops
        because its log could not be written.

        Raises CorruptionError (and holds nothing open) if the log fails a check.
        """
        self.id = node
        self.nodes = nodes
        self.tick_s = tick_s
        self._network = network
        self._on_leader = on_leader
        self._on_commit = on_commit
        self._on_fail = on_fail
        self.log = NodeLog(fs, log_dir, node)
        peers = tuple(range(1, nodes + 1))
        self._lock = threading.Lock()  # the core and every field below
        self._changed = threading.Condition(self._lock)  # commit, reads, role moved
        self._cycle_lock = threading.Lock()  # one Ready at a time (invariant 2)
        self._raft = RaftNode(node + 1, peers, LogStorage(self.log, peers), rng=rng,
                              config=config)
        self._inbox: deque[Message] = deque()
        self.committed = self.log.base_index
        self._proposals: SortedDict[tuple[int, int], RaftProposal] = SortedDict()
        self._reads: dict[bytes, _Read] = {}
        self._read_ids = itertools.count(1)
        self.failed: BaseException | None = None
        self.last_heard: dict[int, float] = {}  # peer -> time.monotonic() of its last message
        self.syncs = 0
        self._stopped = False
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        network.attach(node, self._deliver)
        if threads:
            self._threads = [
                threading.Thread(target=self._drive, daemon=True, name=f"stratakv-raft-{node}"),
                threading.Thread(target=self._ticker, daemon=True, name=f"stratakv-tick-{node}"),
            ]
            for t in self._threads:
                t.start()

    # -- state ------------------------------------------------------------------------

    @property
    def leader_id(self) -> int | None:
        """Whom this node believes leads (itself included); None while it knows no leader."""
        with self._lock:
            lead = self._raft.lead
        return None if lead is None else lead - 1

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._raft.role == Role.LEADER

    @property
    def term(self) -> int:
        with self._lock:
            return self._raft.term

    def leader_ready(self) -> bool:
        """Leads, and committed an entry of its own term (so it knows every committed entry)."""
        with self._lock:
            r = self._raft
            return (r.role == Role.LEADER and self.committed >= r.raft_log.committed
                    and r.raft_log.term(r.raft_log.committed) == r.term)

    def next_index(self) -> int:
        with self._lock:
            self._check_leader()
            return self._raft.raft_log.last_index() + 1

    def _check_leader(self) -> None:
        """Holds _lock."""
        if self._stopped:  # crashed or failed: the group routes elsewhere
            raise NotLeader(f"node {self.id} is down")
        if self._raft.role != Role.LEADER:
            lead = self._raft.lead
            raise NotLeader(f"node {self.id} is not the leader",
                            leader=None if lead is None else lead - 1)

    # -- the consensus interface of one node -----------------------------------------

    def submit(self, payload: bytes, *, expect_index: int | None = None,
               expect_term: int | None = None) -> RaftProposal:
        """Append ``payload`` through this node, which must lead; do not wait.

        With ``expect_index``/``expect_term`` the entry goes in only at that
        index and in that term, else NotLeader. The proposal is decided when
        this node learns what committed at its index.
        """
        with self._lock:
            index, term = self._append(payload, expect_index, expect_term)
            p = RaftProposal(index, term)
            self._proposals[index, term] = p
        return p

    def append(self, payload: bytes, *, expect_index: int | None = None,
               expect_term: int | None = None) -> tuple[int, int]:
        """Like :meth:`submit` but untracked: (index, term) of the entry, for a caller that
        learns outcomes itself (``on_commit``)."""
        with self._lock:
            return self._append(payload, expect_index, expect_term)

    def _append(self, payload: bytes, expect_index: int | None, expect_term: int | None
                ) -> tuple[int, int]:
        """Holds _lock."""
        self._check_leader()
        r = self._raft
        if expect_term is not None and expect_term != r.term:
            raise NotLeader(f"term {expect_term} is over: node {self.id} leads term "
                            f"{r.term}", leader=self.id)
        if expect_index is not None and r.raft_log.last_index() + 1 != expect_index:
            raise NotLeader(f"the log moved on: next index is "
                            f"{r.raft_log.last_index() + 1}, not {expect_index}")
        try:
            index = r.propose(payload)
        except ProposalDropped as exc:
            raise NotLeader(str(exc), leader=self.id) from None
        self._wake.set()
        return index, r.term

    def propose(self, transaction: bytes) -> bool:
        """Submit and wait: True once committed, False if it certainly was not."""
        try:
            return self.submit(transaction).wait()
        except (NotLeader, Unavailable):
            return False

    def read_index(self, timeout: float, *, step: Callable[[], None] | None = None) -> int:
        """Confirm leadership with a quorum (ReadIndex); return the index to read at.

        ``step``: deterministic mode's way to wait -- called (it ticks the
        group) instead of sleeping until the read is answered or ``timeout``
        seconds of the caller's clock are gone; with it, ``timeout`` counts
        calls of ``step`` x ``tick_s``.
        """
        clock = _StepClock(self.tick_s) if step is not None else None
        now = clock.now if clock is not None else time.monotonic
        deadline = now() + timeout
        ctx = b"r%d" % next(self._read_ids)
        wait = _Read()

        def pause(left: float) -> None:
            """Let time pass (holds _changed); at most ``left`` seconds."""
            if step is None:
                self._changed.wait(left)
                return
            assert clock is not None
            self._changed.release()
            try:
                step()
                clock.advance()
            finally:
                self._changed.acquire()

        with self._changed:
            while True:
                self._check_leader()
                try:
                    self._raft.read_index(ctx)
                    break
                except ProposalDropped:  # not yet committed an entry of its term
                    left = deadline - now()
                    if left <= 0:
                        raise Unavailable(f"node {self.id} leads but has not committed "
                                          f"in its term within {timeout}s") from None
                    pause(left)
            self._reads[ctx] = wait
        self._wake.set()
        with self._changed:
            while wait.index is None and wait.error is None and not self._stopped:
                left = deadline - now()
                if left <= 0:
                    self._reads.pop(ctx, None)
                    raise Unavailable(f"node {self.id} could not confirm its leadership with "
                                      f"a quorum within {timeout}s")
                pause(left)
        if wait.error is not None:
            raise wait.error
        if wait.index is None:
            raise NotLeader(f"node {self.id} went down during a read")
        return wait.index

    def entries_after(self, index: int, limit: int = 1000) -> list[LogEntry]:
        """Committed entries with index > ``index`` that this node holds, at most ``limit``.

        Raises SnapshotNeeded if ``index + 1`` was compacted away.
        """
        hi = min(self.committed, index + limit)
        return self.log.read(index + 1, hi)

    def wait_committed(self, index: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.committed < index:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._changed.wait(left)
            return True

    def get_committed_transactions(self) -> list[bytes]:
        """Committed payloads this node holds, in log order (no-ops omitted)."""
        _, entries = self.log.prefix(self.committed)
        return [e.payload for e in entries if e.payload]

    def compact(self, upto: int) -> None:
        """Drop log entries up to ``upto`` (at most what this node knows committed).

        A rewrite that fails fail-stops the node (its log refuses writes until
        reopened), like a failed sync.
        """
        try:
            with self._lock:  # the core reads storage only under _lock: no base moves mid-call
                upto = min(upto, self.committed)
                if upto > self.log.base_index:
                    self.log.compact(upto)
        except Exception as exc:
            self._fail_if_the_log_failed(exc)

    def _fail_if_the_log_failed(self, exc: Exception) -> None:
        """After ``exc`` (holding no lock): if the log refused a write (a failed sync or
        rewrite), fail-stop this node; otherwise re-raise (a bug must not look like a disk)."""
        if self.log.failed is None:
            raise exc
        self.fail(exc)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to node ``to`` once it is caught up; NotLeader unless leading."""
        with self._lock:
            self._check_leader()
            if to != self.id:
                self._raft.transfer_leadership(to + 1)
        self._wake.set()

    def status(self) -> Status:
        """The core's status (ids are Raft ids: node index + 1)."""
        with self._lock:
            return self._raft.status()

    def forget(self, peer: int) -> None:
        """Stop counting what node ``peer`` acknowledged (its storage is to be deleted)."""
        with self._lock:
            self._raft.forget_peer(peer + 1)

    # -- the loop -----------------------------------------------------------------------

    def _deliver(self, m: Message) -> None:
        """Network handler: queue ``m`` for the driver (called from the sender's thread)."""
        self.last_heard[m.frm - 1] = time.monotonic()
        self._inbox.append(m)
        self._wake.set()

    def tick(self) -> None:
        with self._lock:
            if not self._stopped:
                self._raft.tick()
        self._wake.set()

    def _ticker(self) -> None:
        while not self._stopped:
            time.sleep(self.tick_s)
            self.tick()

    def _drive(self) -> None:
        while not self._stopped:
            self._wake.wait(self.tick_s)
            self._wake.clear()
            try:
                while self.cycle():
                    pass
            except BaseException as exc:
                self.fail(exc)
                return

    def cycle(self) -> bool:
        """Step queued messages and carry out one Ready; False if there was nothing to do
        (or the log failed a write: the node then fail-stops)."""
        try:
            return self._cycle()
        except Exception as exc:
            self._fail_if_the_log_failed(exc)
            return False

    def _cycle(self) -> bool:
        with self._cycle_lock:
            with self._lock:
                if self._stopped:
                    return False
                while self._inbox:
                    self._raft.step(self._inbox.popleft())
                if not self._raft.has_ready():
                    return False
                rd = self._raft.ready()
            for m in rd.early_messages:  # appends overlap the leader's own sync
                self._network.send(m)
            self._persist(rd)
            for m in rd.late_messages:
                self._network.send(m)
            with self._changed:
                self._apply(rd)
                self._raft.advance(rd)
                self._changed.notify_all()
            return True

    def _persist(self, rd: Ready) -> None:
        """Ready step 1: the snapshot reset, the entries, term and vote; one sync."""
        lg = self.log
        if rd.snapshot is not None:
            lg.reset(rd.snapshot.index, rd.snapshot.term)  # durable by itself
        if rd.entries:
            first = rd.entries[0].index
            if first <= lg.last_index:
                lg.truncate(first)
            lg.append(list(rd.entries))
        if rd.hard_state is not None:
            lg.set_hard_state(rd.hard_state.term, rd.hard_state.vote or 0)
        if rd.must_sync or rd.entries:
            lg.sync()
            self.syncs += 1

    def _apply(self, rd: Ready) -> None:
        """Ready step 3, minus the state machine (appliers read the log). Holds _lock."""
        if rd.snapshot is not None:
            self.committed = max(self.committed, rd.snapshot.index)
        if rd.committed_entries:
            self.committed = max(self.committed, rd.committed_entries[-1].index)
            self._decide(rd.committed_entries)
            if self._on_commit is not None:
                self._on_commit(rd.committed_entries)
        for rs in rd.read_states:
            wait = self._reads.pop(rs.context, None)
            if wait is not None:
                wait.index = rs.index
        for ctx in rd.dropped_reads:
            wait = self._reads.pop(ctx, None)
            if wait is not None:
                wait.error = NotLeader(f"node {self.id} lost leadership during a read")
        if rd.soft_state is not None:
            if rd.soft_state.role == Role.LEADER and self._on_leader is not None:
                self._on_leader(self.id, self._raft.term)
            if rd.soft_state.role != Role.LEADER:
                for wait in self._reads.values():
                    wait.error = NotLeader(f"node {self.id} lost leadership during a read")
                self._reads.clear()

    def _decide(self, committed: tuple[LogEntry, ...]) -> None:
        """Decide proposals the newly committed entries settle. Holds _lock."""
        if not self._proposals:
            return
        terms = {e.index: e.term for e in committed}
        last = committed[-1]
        for key in list(self._proposals.irange(maximum=(last.index, 1 << 62))):
            index, term = key
            p = self._proposals.pop(key)
            committed_term = terms.get(index)
            if committed_term is None:  # committed before this Ready: read the log
                committed_term = self.log.term_at(index)
            p.decide(committed_term == term)
        # An entry of a later term committed below a proposal: it can never commit.
        for key in list(self._proposals):
            if key[1] < last.term:
                self._proposals.pop(key).decide(False)

    def fail(self, exc: BaseException) -> None:
        """The pipeline failed (a disk error): fail-stop this node."""
        log.error("raft node %d stops: %r", self.id, exc)
        self.failed = exc
        self.stop()
        if self._on_fail is not None:
            self._on_fail(self.id, exc)

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the node's threads and forget its memory; the log keeps what was synced."""
        with self._changed:
            if self._stopped:
                return
            self._stopped = True
            for p in self._proposals.values():
                p.decide(None)
            self._proposals.clear()
            for wait in self._reads.values():
                wait.error = NotLeader(f"node {self.id} stopped")
            self._reads.clear()
            self._changed.notify_all()
        self._network.detach(self.id)
        self._wake.set()
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join()
        with self._cycle_lock:
            self.log.close()

    def close(self) -> None:
        """Stop, after making everything appended durable."""
        if not self._stopped and self.failed is None:
            try:
                self.log.sync()
            except OSError as exc:
                log.error("raft node %d: final sync failed: %r", self.id, exc)
        self.stop()
