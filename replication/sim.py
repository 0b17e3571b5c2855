"""A seeded, deterministic cluster simulation (in the spirit of TigerBeetle's VOPR).

One seed drives everything: the workload (puts, gets, read-modify-write
transactions, several transactions interleaved by hand), the faults (crash
and restart of any node, the leader included; partitions; quiet ticks), and
the consensus module's own choices. The cluster runs in deterministic mode
on an in-memory file system, so the same seed gives the same run, event for
event -- a failure found once is reproduced with ``--seed``.

After every step the invariants of :mod:`replication.checker` are checked,
and every client result is checked against a model: the history is
sequential (one client call at a time), so a read must return the value of
the latest acknowledged write of its key, or of a write whose outcome is
ambiguous. Transactions are recorded for an offline serializability check
(``SimResult.transactions``).

Usage: ``python -m replication.sim --seed 7 --steps 2000 --nodes 5``; it
prints one line per event when a violation is found (or with ``--verbose``).

``python -m replication.sim --raft --seed 7 --seeds 100 --drop 0.1 --dup 0.05
--reorder 0.1`` runs the randomized simulation of the pure Raft core instead
(:mod:`replication.raft.simulation`): N cores over a lossy network with
crashes that lose unsynced state, checking election safety, log matching,
leader completeness and state-machine safety after every step.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import engine
from engine.errors import SerializationFailure
from replication.checker import Watch, digest
from replication.cluster import Cluster
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.store import KeyValueStore, StoreTransaction

__all__ = ["SimResult", "Simulation", "TxnRecord"]

KEYS = [f"k{i}" for i in range(12)]


@dataclass
class TxnRecord:
    """A committed transaction: what it read (value's writer id) and wrote, at which index."""

    txn_id: str
    commit_index: int | None  # None: read-only
    snapshot_index: int
    reads: list[tuple[str, str | None]]
    writes: list[str]


@dataclass
class SimResult:
    seed: int
    steps: int
    events: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    transactions: list[TxnRecord] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    ambiguous: int = 0
    unavailable: int = 0
    crashes: int = 0
    elections: int = 0
    final_digests: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class Simulation:
    """Runs one seeded scenario against a deterministic cluster of ``nodes`` replicas."""

    def __init__(self, seed: int, *, nodes: int = 3, engine_options: dict[str, object] | None
                 = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.fs = engine.MemFS()
        self.cluster = Cluster.open("/sim", nodes, fs=self.fs, deterministic=True, seed=seed,
                                    request_timeout_s=1.0, election_timeout_ms=150,
                                    engine={"memtable_bytes": 64 * 1024,
                                                    **(engine_options or {})})
        self.store = KeyValueStore(self.cluster)
        self.watch = Watch()
        # key -> values a read may legitimately return right now.
        self.possible: dict[str, set[str | None]] = {k: {None} for k in KEYS}
        self.result = SimResult(seed, 0)
        self._next_id = 0
        self._down: set[int] = set()
        self._in_tick = False
        self.cluster.consensus.before_tick = self._fault_inside_tick

    # -- bookkeeping ---------------------------------------------------------------------

    def event(self, text: str) -> None:
        self.result.events.append(f"step {self.result.steps}: {text}")

    def violation(self, text: str) -> None:
        self.result.violations.append(f"step {self.result.steps}: {text}")
        self.event(f"VIOLATION {text}")

    def _id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}{self._next_id}"

    def _acknowledged(self, key: str, value: str | None) -> None:
        self.possible[key] = {value}

    def _ambiguous(self, key: str, value: str | None) -> None:
        self.possible[key].add(value)

    def _check_read(self, key: str, got: str | None) -> None:
        # A read does not narrow the set: an ambiguous write may still commit later.
        if got not in self.possible[key]:
            allowed = sorted(map(str, self.possible[key]))
            self.violation(f"read {key} = {got!r}, expected one of {allowed}")

    # -- client actions ----------------------------------------------------------------------

    def do_put(self) -> None:
        key, value = self.rng.choice(KEYS), self._id("p")
        try:
            index = self.store.put(key, value)
        except AmbiguousCommit:
            self.result.ambiguous += 1
            self._ambiguous(key, value)
            self.event(f"put {key}={value} ambiguous")
            return
        except Unavailable:
            self.result.unavailable += 1
            self.event(f"put {key}={value} unavailable")
            return
        self._acknowledged(key, value)
        self.result.transactions.append(TxnRecord(value, index, index - 1, [], [key]))
        self.event(f"put {key}={value} at {index}")

    def do_get(self) -> None:
        key = self.rng.choice(KEYS)
        try:
            got = self.store.get(key)
        except Unavailable:
            self.result.unavailable += 1
            self.event(f"get {key} unavailable")
            return
        self.event(f"get {key} -> {got}")
        self._check_read(key, got)

    def _record(self, txn_id: str, tx: StoreTransaction, reads: list[tuple[str, str | None]],
                writes: list[str]) -> None:
        self.result.transactions.append(
            TxnRecord(txn_id, tx.sequence, tx.snapshot_sequence, reads, writes))
        for key in writes:
            self._acknowledged(key, txn_id)

    def do_transaction(self) -> None:
        """A read-modify-write of two keys, retried on conflicts and leader changes."""
        keys = self.rng.sample(KEYS, 2)

        def body(tx: StoreTransaction) -> tuple[str, list[tuple[str, str | None]]]:
            txn_id = self._id("t")
            reads = [(k, tx.get(k)) for k in keys]
            tx.put(keys[0], txn_id)
            return txn_id, reads

        attempt: list[StoreTransaction] = []
        try:
            tx_id, reads, tx = self._run(body, attempt)
        except (Unavailable, NotLeader, SerializationFailure) as exc:
            self.event(f"transaction on {keys} failed: {type(exc).__name__}")
            return
        except AmbiguousCommit:
            self.result.ambiguous += 1
            self.event(f"transaction on {keys} ambiguous")
            for k in keys[:1]:
                self._ambiguous(k, f"t{self._next_id}")
            return
        for key, got in reads:
            self._check_read(key, got)
        self._record(tx_id, tx, reads, [keys[0]])
        self.event(f"txn {tx_id}: read {reads}, wrote {keys[0]} at {tx.sequence}")

    def _run(self, body: Callable[[StoreTransaction], tuple[str, list[tuple[str, str | None]]]],
             attempt: list[StoreTransaction]
             ) -> tuple[str, list[tuple[str, str | None]], StoreTransaction]:
        for _ in range(10):
            tx = self.store.transaction()
            try:
                txn_id, reads = body(tx)
                tx.commit()
                return txn_id, reads, tx
            except (SerializationFailure, NotLeader) as exc:
                tx.rollback()
                self.result.aborted.append(f"t{self._next_id}")
                self.event(f"attempt aborted: {type(exc).__name__}")
                self.cluster.step()
        raise SerializationFailure("write_write", "gave up after 10 attempts")

    def do_interleaved(self) -> None:
        """Two or three transactions opened together, operations interleaved by the seed."""
        n = self.rng.randint(2, 3)
        try:
            txs = [(self._id("t"), self.store.transaction()) for _ in range(n)]
        except (Unavailable, NotLeader):
            self.result.unavailable += 1
            return
        plans = {tid: self.rng.sample(KEYS, 2) for tid, _ in txs}
        reads: dict[str, list[tuple[str, str | None]]] = {tid: [] for tid, _ in txs}
        steps = [(tid, tx, "read", k) for tid, tx in txs for k in plans[tid]]
        steps += [(tid, tx, "write", plans[tid][self.rng.randrange(2)]) for tid, tx in txs]
        self.rng.shuffle(steps)
        failed: set[str] = set()
        written: dict[str, list[str]] = {tid: [] for tid, _ in txs}
        for tid, tx, op, key in steps:
            if tid in failed:
                continue
            try:
                if op == "read":
                    got = tx.get(key)
                    if key not in written[tid]:
                        reads[tid].append((key, got))
                else:
                    tx.put(key, tid)
                    written[tid].append(key)
            except (SerializationFailure, NotLeader, Unavailable):
                failed.add(tid)
        order = list(txs)
        self.rng.shuffle(order)
        for tid, tx in order:
            if tid in failed:
                tx.rollback()
                self.result.aborted.append(tid)
                continue
            try:
                tx.commit()
            except (SerializationFailure, NotLeader, Unavailable) as exc:
                self.result.aborted.append(tid)
                self.event(f"interleaved {tid} aborted: {type(exc).__name__}")
                continue
            except AmbiguousCommit:
                self.result.ambiguous += 1
                for k in written[tid]:
                    self._ambiguous(k, tid)
                continue
            self._record(tid, tx, reads[tid], written[tid])
            self.event(f"interleaved {tid} committed at {tx.sequence}: read {reads[tid]}, "
                       f"wrote {written[tid]}")

    # -- faults ------------------------------------------------------------------------------

    def do_fault(self) -> None:
        c = self.cluster
        nodes = len(c.nodes)
        f = (nodes - 1) // 2
        roll = self.rng.random()
        if roll < 0.4 and len(self._down) < f + (1 if self.rng.random() < 0.1 else 0):
            victim = c.leader_id if self.rng.random() < 0.4 and c.leader_id is not None \
                else self.rng.choice([i for i in range(nodes) if i not in self._down])
            if victim is None or victim in self._down:
                return
            c.crash(victim)
            self._down.add(victim)
            self.watch.applied.pop(victim, None)
            self.result.crashes += 1
            self.event(f"crash node {victim}" + (" (leader)" if victim == c.leader_id else ""))
        elif roll < 0.75 and self._down:
            node = self.rng.choice(sorted(self._down))
            c.restart(node)
            self._down.discard(node)
            self.event(f"restart node {node}")
        elif roll < 0.85:
            side = self.rng.sample(range(nodes), self.rng.randint(1, f))
            c.partition(side)
            self.event(f"partition {sorted(side)} from the rest")
        else:
            c.heal()
            self.event("heal")

    def _fault_inside_tick(self) -> None:
        """Now and then, a fault while a client call is waiting on the log."""
        if self._in_tick or self.rng.random() >= 0.02:
            return
        self._in_tick = True
        try:
            self.event("fault during a client call:")
            self.do_fault()
        finally:
            self._in_tick = False

    # -- driver ------------------------------------------------------------------------------

    def run(self, steps: int, progress: Callable[[int], None] | None = None) -> SimResult:
        actions = [(0.25, self.do_put), (0.2, self.do_get), (0.2, self.do_transaction),
                   (0.1, self.do_interleaved), (0.12, self._tick), (0.13, self.do_fault)]
        total = sum(w for w, _ in actions)
        for step in range(steps):
            self.result.steps = step
            r = self.rng.random() * total
            for weight, action in actions:
                r -= weight
                if r <= 0:
                    action()
                    break
            for problem in self.watch.check(self.cluster, replicas=step % 25 == 0):
                self.violation(problem)
            if self.result.violations:
                break
            if progress is not None and step % 1000 == 999:
                progress(step + 1)
        self._settle()
        return self.result

    def _tick(self) -> None:
        n = self.rng.randint(1, 8)
        self.cluster.step(n)
        self.event(f"{n} ticks")

    def _settle(self) -> None:
        """Stop injecting faults, heal, restart everyone, converge, compare replicas.

        Faults stay off from here on: a crash injected while settling is a
        fault the run never heals, and its "did not converge" a false alarm.
        """
        c = self.cluster
        c.consensus.before_tick = None
        c.heal()
        for node in sorted(self._down):
            c.restart(node)
        self._down.clear()
        try:
            self.store.put("settle", "done")  # commits in the final term: everyone catches up
        except (Unavailable, AmbiguousCommit) as exc:
            self.violation(f"cluster did not recover after healing: {exc!r}")
        if not c.wait_converged(timeout=5.0):
            self.violation("replicas did not converge after healing")
        for problem in self.watch.check(c, replicas=True):
            self.violation(problem)
        digests = [digest(n.engine) for n in c.nodes if n.engine is not None]
        if len(set(digests)) > 1:
            self.violation("replicas differ after convergence")
        self.result.final_digests = digests
        self.result.elections = c.consensus.elections

    def close(self) -> None:
        self.cluster.close()


def run(seed: int, steps: int, nodes: int = 3,
        progress: Callable[[int], None] | None = None) -> SimResult:
    """Run one seeded simulation of ``steps`` steps; ``progress(step)`` is told now and then."""
    if type(steps) is not int or steps < 1:
        raise engine.InvalidArgument(f"steps must be a positive int, got {steps!r}")
    sim = Simulation(seed, nodes=nodes)
    try:
        return sim.run(steps, progress)
    finally:
        sim.close()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if "--raft" in args_in:  # the pure core's simulation, with its own options
        from replication.raft import simulation

        return simulation.main([a for a in args_in if a != "--raft"])
    parser = argparse.ArgumentParser(prog="python -m replication.sim",
                                     description="Run a seeded deterministic cluster simulation "
                                                 "(--raft: of the Raft core; --raft --help).")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    parser.add_argument("--steps", type=_positive, default=1000,
                        help="workload and fault steps (>= 1)")
    parser.add_argument("--nodes", type=int, choices=(3, 5, 7), default=3)
    parser.add_argument("--verbose", action="store_true", help="print every event")
    parser.add_argument("--raft", action="store_true",
                        help="simulate the pure Raft core instead (--drop/--dup/--reorder...)")
    args = parser.parse_args(args_in)
    # The run injects the faults that nodes warn about (step-downs, lost peers):
    # only errors are news.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)

    def progress(step: int) -> None:
        print(f"seed={seed}: {step} of {args.steps} steps", file=sys.stderr, flush=True)

    result = run(seed, args.steps, args.nodes, progress if args.steps >= 5000 else None)
    if args.verbose or not result.ok:
        for line in result.events:
            print(line)
    print(f"seed={seed} nodes={args.nodes} steps={result.steps + 1}: "
          f"{len(result.transactions)} transactions, {result.crashes} crashes, "
          f"{result.elections} elections, {result.ambiguous} ambiguous, "
          f"{result.unavailable} unavailable -> {'OK' if result.ok else 'VIOLATION'}")
    for v in result.violations:
        print(v)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
