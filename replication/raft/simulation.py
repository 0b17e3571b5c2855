"""A seeded, deterministic simulation of N Raft cores over a faulty in-memory network.

One ``random.Random(seed)`` drives everything (TigerBeetle's VOPR idea):
the workload (proposals, reads, transfers, compactions), the network (per
message drop, duplicate, delay, reorder; partitions) and crashes. A crash
keeps only the node's :class:`MemoryStorage` (what its driver persisted
from Readies, including the hard state) and its applied index (the state
machine is durable, as the engine is); everything else is lost. A crash may
also strike between persisting a Ready and sending its messages.

After every call into a node the simulation checks:

1. election safety: at most one leader per term;
2. log matching: every persisted entry (index, term) has one payload and
   one previous term across all nodes (by induction, equal (index, term)
   means equal prefixes);
3. leader completeness: a new leader of term T holds every entry committed
   by the leader of an earlier term;
4. state-machine safety: every node applies, at each index, the entry that
   was committed there, in index order;
5. durability: after a crash, every committed entry is still persisted on a
   quorum (in its log, or covered by its snapshot);
6. linearizable reads: a ReadState's index covers every entry committed
   before the read was requested;

and, at the end, liveness: with the network healed and every node up, a
leader is elected and every node applies everything committed (plus a new
entry) within ``liveness_ticks``.

Pure and replayable: the same seed and options give the same run. On a
failure :class:`SimulationFailure` carries the seed and the last events.
``main(argv)`` is the command-line entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import logging
import random
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from replication.raft.errors import NotLeader, ProposalDropped
from replication.raft.log import MemoryStorage
from replication.raft.messages import LogEntry, Message
from replication.raft.node import RaftConfig, RaftNode, Ready, Role

__all__ = ["SimConfig", "SimResult", "Simulation", "SimulationFailure", "main", "run"]

_SIM_RAFT = RaftConfig(election_timeout_ticks=10, heartbeat_ticks=2, max_append_bytes=64,
                       max_inflight_msgs=4)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of one simulated run; probabilities are per message or per step."""

    nodes: int = 3
    steps: int = 300
    drop: float = 0.05  # a message is lost (each link gets its own rate in [0, 2*drop])
    dup: float = 0.02  # a message is delivered twice
    reorder: float = 0.05  # a message gets an extra delay (overtaken by later ones)
    max_delay_ticks: int = 2  # base delivery delay is 1..this
    partition_rate: float = 0.01  # start a partition (when none)
    heal_rate: float = 0.05  # end the partition
    crash_rate: float = 0.005  # crash a node (at most f down at a time)
    restart_rate: float = 0.05  # restart a crashed node
    propose_rate: float = 0.3
    read_rate: float = 0.05
    transfer_rate: float = 0.003
    compact_rate: float = 0.05
    liveness_ticks: int = 300
    raft: RaftConfig = field(default=_SIM_RAFT)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        for name in ("drop", "dup", "reorder", "partition_rate", "heal_rate", "crash_rate",
                     "restart_rate", "propose_rate", "read_rate", "transfer_rate",
                     "compact_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_delay_ticks < 1:
            raise ValueError(f"max_delay_ticks must be >= 1, got {self.max_delay_ticks}")


class SimulationFailure(AssertionError):
    """An invariant broke; the message has the seed and the last events."""

    def __init__(self, seed: int, reason: str, events: list[str]) -> None:
        self.seed = seed
        self.reason = reason
        self.events = events
        tail = "\n".join(events)
        super().__init__(f"seed {seed}: {reason}\nlast events:\n{tail}")


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a successful run did."""

    seed: int
    steps: int
    committed: int  # entries committed (including no-ops)
    elections: int  # distinct leader terms
    crashes: int
    snapshots: int  # snapshots installed by followers
    reads: int  # read states confirmed
    liveness_ticks: int  # ticks the final convergence took


@dataclass(frozen=True, slots=True)
class _Committed:
    term: int
    payload: bytes
    commit_term: int  # term of the leader that committed it


class _SimNode:
    __slots__ = ("applied", "id", "incarnation", "leader_term", "raft", "storage")

    def __init__(self, id: int, peers: tuple[int, ...]) -> None:
        self.id = id
        self.storage = MemoryStorage(peers)
        self.raft: RaftNode | None = None
        self.applied = 0  # the durable state machine's applied index
        self.incarnation = 0
        self.leader_term = 0  # term in which we last saw this node lead


class Simulation:
    """N nodes, one seeded network, invariant checks after every call."""

    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config if config is not None else SimConfig()
        self.rng = random.Random(seed)
        self.peers = tuple(range(1, self.cfg.nodes + 1))
        self.nodes = {i: _SimNode(i, self.peers) for i in self.peers}
        self.now = 0
        self._seq = 0
        self._net: list[tuple[int, int, Message]] = []
        self._cut: set[tuple[int, int]] = set()
        # Each directed link has its own loss rate around the configured one.
        self._link_drop = {(a, b): min(1.0, self.cfg.drop * self.rng.uniform(0.0, 2.0))
                           for a in self.peers for b in self.peers if a != b}
        self._events: deque[tuple[int, str, object]] = deque(maxlen=80)
        self._leaders: dict[int, int] = {}  # term -> leader
        self._committed: list[_Committed] = []  # index i at position i - 1
        self._registry: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._reads: dict[bytes, int] = {}  # context -> committed index when requested
        self._next_value = 0
        self.crashes = self.snapshots = self.read_count = 0
        for n in self.nodes.values():
            self._start(n)

    # -- failure reporting ---------------------------------------------------------

    def _event(self, kind: str, obj: object = None) -> None:
        self._events.append((self.now, kind, obj))

    def fail(self, reason: str) -> SimulationFailure:
        lines = [f"t={t} {k}" + ("" if o is None else f" {o}") for t, k, o in self._events]
        return SimulationFailure(self.seed, reason, lines)

    # -- nodes -------------------------------------------------------------------

    def _start(self, n: _SimNode) -> None:
        n.incarnation += 1
        rng = random.Random(self.rng.getrandbits(64))
        n.raft = RaftNode(n.id, self.peers, n.storage, rng=rng, config=self.cfg.raft,
                          applied=n.applied)
        self._event("start", n.id)

    def _crash(self, n: _SimNode) -> None:
        n.raft = None
        self.crashes += 1
        self._event("crash", n.id)
        self._check_durable()

    def live(self) -> list[_SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def leader(self) -> _SimNode | None:
        """The live leader with the highest term, if any."""
        best: _SimNode | None = None
        for n in self.live():
            r = n.raft
            if r is not None and r.role == Role.LEADER and (
                    best is None or best.raft is None or r.term > best.raft.term):
                best = n
        return best

    # -- checks after each call ----------------------------------------------------

    def _after(self, n: _SimNode) -> None:
        r = n.raft
        if r is None or r.role != Role.LEADER:
            return
        seen = self._leaders.setdefault(r.term, n.id)
        if seen != n.id:
            raise self.fail(f"two leaders in term {r.term}: {seen} and {n.id}")
        if n.leader_term != r.term:
            n.leader_term = r.term
            self._event("leader", (n.id, r.term))
            self._check_leader_complete(n, r)
        lg = r.raft_log
        mark = len(self._committed)
        if lg.committed > mark:
            for e in lg.slice(mark + 1, lg.committed + 1):
                self._committed.append(_Committed(e.term, e.payload, r.term))
            self._event("commit", (n.id, lg.committed))

    def _check_leader_complete(self, n: _SimNode, r: RaftNode) -> None:
        lg = r.raft_log
        base = lg.first_index() - 1
        for index, c in enumerate(self._committed, start=1):
            if c.commit_term >= r.term or index < base:
                continue
            if lg.term(index) != c.term:
                raise self.fail(f"leader {n.id} of term {r.term} lacks committed entry "
                                f"{index}/{c.term} (has term {lg.term(index)})")

    def _check_durable(self) -> None:
        quorum = len(self.peers) // 2 + 1
        for index, c in enumerate(self._committed, start=1):
            holders = 0
            for n in self.nodes.values():
                st = n.storage
                if index < st.first_index() - 1 or (
                        index <= st.last_index() and st.term(index) == c.term):
                    holders += 1
            if holders < quorum:
                raise self.fail(f"committed entry {index}/{c.term} is persisted on only "
                                f"{holders} nodes")

    def _check_entries(self, n: _SimNode, entries: tuple[LogEntry, ...]) -> None:
        st = n.storage
        prev_term = st.term(entries[0].index - 1)
        for e in entries:
            key = (e.index, e.term)
            seen = self._registry.setdefault(key, (e.payload, prev_term))
            if seen != (e.payload, prev_term):
                raise self.fail(f"log matching: node {n.id} persists {e.index}/{e.term} "
                                f"{e.payload!r} after term {prev_term}, elsewhere {seen}")
            prev_term = e.term

    def _check_applied(self, n: _SimNode, index: int, term: int, payload: bytes) -> None:
        if index > len(self._committed):
            raise self.fail(f"node {n.id} applies {index}, beyond anything a leader committed "
                            f"({len(self._committed)})")
        c = self._committed[index - 1]
        if (c.term, c.payload) != (term, payload):
            raise self.fail(f"node {n.id} applies {index}/{term} {payload!r}; committed was "
                            f"{c.term} {c.payload!r}")

    # -- network -----------------------------------------------------------------

    def _send(self, m: Message) -> None:
        cfg, rng = self.cfg, self.rng
        link = (m.frm, m.to)
        if link in self._cut or (cfg.drop and rng.random() < self._link_drop[link]):
            self._event("drop", m)
            return
        copies = 2 if rng.random() < cfg.dup else 1
        for _ in range(copies):
            delay = rng.randint(1, cfg.max_delay_ticks)
            if rng.random() < cfg.reorder:
                delay += rng.randint(1, 5)
            self._seq += 1
            heapq.heappush(self._net, (self.now + delay, self._seq, m))

    def _deliver_due(self) -> None:
        net = self._net
        while net and net[0][0] <= self.now:
            _, _, m = heapq.heappop(net)
            n = self.nodes[m.to]
            if n.raft is None or (m.frm, m.to) in self._cut:
                continue
            self._event("deliver", m)
            n.raft.step(m)
            self._after(n)

    # -- ready handling --------------------------------------------------------------

    def _handle_ready(self, n: _SimNode) -> None:
        r = n.raft
        if r is None or not r.has_ready():
            return
        rd = r.ready()
        self._after(n)
        for m in rd.early_messages:  # a leader's appends leave while it writes
            self._send(m)
        if rd.early_messages and self.rng.random() < self.cfg.crash_rate * 0.2 \
                and self._may_crash():
            self._event("crash after the early sends, before persist", n.id)
            self._crash(n)
            return
        self._persist(n, rd)
        if self.rng.random() < self.cfg.crash_rate * 0.2 and self._may_crash():
            self._event("crash after persist, before send", n.id)
            self._crash(n)
            return
        for m in rd.late_messages:
            self._send(m)
        self._apply(n, rd)
        r.advance(rd)

    def _persist(self, n: _SimNode, rd: Ready) -> None:
        st = n.storage
        if rd.snapshot is not None:
            s = rd.snapshot
            if s.index > len(self._committed) or (
                    s.index and self._committed[s.index - 1].term != s.term):
                raise self.fail(f"node {n.id} installs snapshot {s.index}/{s.term} that is "
                                "not a committed position")
            st.apply_snapshot(s)
            # Installing the snapshot's checkpoint is part of persisting it: a
            # restart finds the state machine at the snapshot, as its log.
            n.applied = max(n.applied, s.index)
            self.snapshots += 1
            self._event("snapshot", (n.id, s.index))
        if rd.entries:
            self._check_entries(n, rd.entries)
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)

    def _apply(self, n: _SimNode, rd: Ready) -> None:
        for e in rd.committed_entries:
            if e.index != n.applied + 1:
                raise self.fail(f"node {n.id} applies {e.index} after {n.applied}")
            self._check_applied(n, e.index, e.term, e.payload)
            n.applied = e.index
        for rs in rd.read_states:
            wanted = self._reads.pop(rs.context, None)
            if wanted is None:
                raise self.fail(f"node {n.id} confirms unknown read {rs.context!r}")
            if rs.index < wanted:
                raise self.fail(f"stale read {rs.context!r} at {rs.index} on node {n.id}: "
                                f"{wanted} was committed before it was requested")
            self.read_count += 1
        for ctx in rd.dropped_reads:
            self._reads.pop(ctx, None)

    # -- workload and faults ---------------------------------------------------------

    def _may_crash(self) -> bool:
        down = len(self.peers) - len(self.live())
        return down < (len(self.peers) - 1) // 2

    def _faults(self) -> None:
        cfg, rng = self.cfg, self.rng
        if self._cut:
            if rng.random() < cfg.heal_rate:
                self._cut.clear()
                self._event("heal")
        elif len(self.peers) > 1 and rng.random() < cfg.partition_rate:
            size = rng.randint(1, max(1, (len(self.peers) - 1) // 2 + rng.randint(0, 1)))
            side = set(rng.sample(self.peers, size))
            # Sometimes one-way: the side is deaf (it hears nobody, so it
            # campaigns while the others still hear it) or mute (nobody hears it).
            kind = rng.choice(("partition", "partition", "deaf", "mute"))
            self._cut = {(a, b) for a in self.peers for b in self.peers
                         if (a in side) != (b in side)
                         and (kind == "partition" or (kind == "mute") == (a in side))}
            self._event(kind, sorted(side))
        for n in self.nodes.values():
            if n.raft is None:
                if rng.random() < cfg.restart_rate:
                    self._start(n)
            elif rng.random() < cfg.crash_rate and self._may_crash():
                self._crash(n)

    def _workload(self) -> None:
        cfg, rng = self.cfg, self.rng
        live = self.live()
        if not live:
            return
        # Any node that believes it leads (a deposed one too, until it learns):
        # that is where stale reads and lost proposals would come from.
        leaders = [n for n in live if n.raft is not None and n.raft.role == Role.LEADER]
        target = rng.choice(leaders) if leaders and rng.random() < 0.9 else rng.choice(live)
        r = target.raft
        if r is None:
            return
        try:
            if rng.random() < cfg.propose_rate:
                self._next_value += 1
                index = r.propose(b"v%d" % self._next_value)
                self._event("propose", (target.id, index, self._next_value))
            if rng.random() < cfg.read_rate:
                self._next_value += 1
                ctx = b"r%d" % self._next_value
                self._reads[ctx] = len(self._committed)
                try:
                    r.read_index(ctx)
                except BaseException:
                    del self._reads[ctx]
                    raise
                self._event("read", (target.id, ctx))
            if rng.random() < cfg.transfer_rate and len(self.peers) > 1:
                to = rng.choice(self.peers)
                r.transfer_leadership(to)
                self._event("transfer", (target.id, to))
        except (NotLeader, ProposalDropped) as exc:
            self._event("refused", type(exc).__name__)
        self._after(target)
        if rng.random() < cfg.compact_rate:
            n = rng.choice(live)
            st = n.storage
            if n.applied < st.first_index() - 1:
                raise self.fail(f"node {n.id} applied {n.applied} is behind its snapshot "
                                f"{st.first_index() - 1}")
            upto = rng.randint(st.first_index() - 1, n.applied)
            st.compact(upto, b"checkpoint@%d" % upto)
            self._event("compact", (n.id, upto))

    # -- running ----------------------------------------------------------------------

    def step(self, faults: bool = True) -> None:
        """One tick of simulated time: faults, workload, ticks, deliveries, readies."""
        self.now += 1
        if faults:
            self._faults()
            self._workload()
        for n in self.live():
            r = n.raft
            if r is not None:
                r.tick()
                self._after(n)
        self._deliver_due()
        for n in self.live():
            self._handle_ready(n)

    def run(self) -> SimResult:
        for _ in range(self.cfg.steps):
            self.step()
        ticks = self.converge()
        return SimResult(self.seed, self.cfg.steps, len(self._committed), len(self._leaders),
                         self.crashes, self.snapshots, self.read_count, ticks)

    def converge(self) -> int:
        """Heal everything and check liveness; returns the ticks it took."""
        self._cut.clear()
        for n in self.nodes.values():
            if n.raft is None:
                self._start(n)
        self._event("liveness phase")
        final: tuple[int, int] | None = None  # (term, index) of the final proposal
        saved = self.cfg
        self.cfg = SimConfig(nodes=saved.nodes, steps=saved.steps, drop=0.0, dup=0.0,
                             reorder=0.0, crash_rate=0.0,
                             max_delay_ticks=saved.max_delay_ticks,
                             liveness_ticks=saved.liveness_ticks, raft=saved.raft)
        try:
            for tick in range(1, self.cfg.liveness_ticks + 1):
                self.step(faults=False)
                leader = self.leader()
                if leader is None or leader.raft is None:
                    continue
                r = leader.raft
                if final is None or final[0] != r.term:
                    try:
                        final = (r.term, r.propose(b"final"))
                        self._event("propose final", (leader.id, final[1]))
                    except (NotLeader, ProposalDropped):
                        continue
                    self._after(leader)
                if all(n.applied >= final[1] for n in self.nodes.values()):
                    self._check_durable()
                    return tick
        finally:
            self.cfg = saved
        states = {n.id: (n.raft.status() if n.raft else None, n.applied)
                  for n in self.nodes.values()}
        raise self.fail(f"no convergence within {self.cfg.liveness_ticks} ticks after "
                        f"healing: {states}")


def run(seed: int, config: SimConfig | None = None) -> SimResult:
    """Run one seeded simulation; raises SimulationFailure on a broken invariant."""
    return Simulation(seed, config).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``--seed S --seeds K --steps --nodes --drop --dup --reorder``: run and report."""
    p = argparse.ArgumentParser(prog="python -m replication.sim --raft",
                                description="Seeded Raft core simulation")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="how many consecutive seeds")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--drop", type=float, default=0.05)
    p.add_argument("--dup", type=float, default=0.02)
    p.add_argument("--reorder", type=float, default=0.05)
    p.add_argument("--no-check-quorum", action="store_true")
    p.add_argument("--no-pre-vote", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="log the cores' decisions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    raft = dataclasses.replace(_SIM_RAFT, check_quorum=not args.no_check_quorum,
                               pre_vote=not args.no_pre_vote)
    cfg = SimConfig(nodes=args.nodes, steps=args.steps, drop=args.drop, dup=args.dup,
                    reorder=args.reorder, raft=raft)
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            res = run(seed, cfg)
        except SimulationFailure as exc:
            failed += 1
            sys.stdout.write(f"FAIL {exc}\n")
            continue
        sys.stdout.write(f"ok seed={res.seed} committed={res.committed} "
                         f"elections={res.elections} crashes={res.crashes} "
                         f"snapshots={res.snapshots} reads={res.reads} "
                         f"converged_in={res.liveness_ticks} ticks\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
