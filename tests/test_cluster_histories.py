"""Histories recorded from many client threads during injected crashes, checked by tests/checkers.

A *nemesis* thread crashes and restarts followers and leaders on a seeded
schedule (never more than f nodes down at once) while 12 clients run:

* single-key put/get/delete on a few registers, every put with a unique
  value; the history is checked with ``check_linearizable``;
* read-modify-write transactions over a small key set whose values name the
  writing attempt, plus read-only transactions; the history is checked with
  ``check_serializable`` and for strict (real-time) order -- also without
  faults but with a node timeout shorter than a commit, so that commits end
  ambiguous or "committed, not yet applied" on the leader.

What a client was told is checked against the committed log itself, decoded
from the leader's copy: every acknowledged write is in the log (at
``tx.sequence`` for transactions); every attempt that failed with
Unavailable, NotLeader or SerializationFailure -- which the store documents
as "certainly not committed" -- is *not*; an AmbiguousCommit is resolved by
looking. At the end every replica's engine must hold the state the log
implies. The seed of each test's fault schedule is printed with every event
(``STRATAKV_SEED=...`` overrides it); thread interleavings are not
reproducible.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.nemesis.check import NOT_COMMITTED, Attempt, check_transactions
from bench.nemesis.cluster import apply_log
from engine.errors import ClosedError
from replication import AmbiguousCommit, Cluster, KeyValueStore
from replication.command import decode_command
from tests.checkers import CommittedTxn, Op, check_linearizable

CLIENTS = 12
# Minimum workload duration per test; the whole file stays well under 90 s. A soak run
# sets STRATAKV_HISTORY_S (e.g. 300), and the fault count grows with it.
RUN_S = float(os.environ.get("STRATAKV_HISTORY_S", 5.0))
FAULTS = max(14, int(RUN_S * 2.8))  # crash/restart events per test (clients run until done)
LIVENESS_S = 30.0  # a bound for "eventually"; hitting it is a failure, never a timing claim
TRUNCATE_EVERY = 300  # log entries between truncations in the truncation test


def fixed_seed(default: int) -> int:
    seed = int(os.environ.get("STRATAKV_SEED", default))
    print(f"seed={seed}")
    return seed


def event(msg: str) -> None:
    print(f"[{time.monotonic():.3f}] {msg}")


class Nemesis:
    """Crashes leaders and followers and restarts them on a seeded schedule, at most f down.

    It injects ``FAULTS`` events, spaced 0.15-0.5 s apart, then sets ``finished``;
    clients run until then (and at least ``RUN_S``), so a slow crash or restart
    delays the test rather than weakening it.
    """

    def __init__(self, cluster: Cluster, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.f = (len(cluster.nodes) - 1) // 2
        self.down: list[int] = []
        self.crashes = 0
        self.leader_crashes = 0
        self.events = 0
        self.started = time.monotonic()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="nemesis")
        self.error: BaseException | None = None

    def __enter__(self) -> Nemesis:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        """Should clients keep going? Until every fault happened and RUN_S passed (bounded)."""
        elapsed = time.monotonic() - self.started
        if elapsed > RUN_S + LIVENESS_S:
            return False
        return not (self.finished.is_set() and elapsed >= RUN_S)

    def _run(self) -> None:
        try:
            while self.events < FAULTS and not self._stop.wait(self.rng.uniform(0.15, 0.5)):
                self.step()
                self.events += 1
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def step(self) -> None:
        rng = self.rng
        if self.down and (len(self.down) >= self.f or rng.random() < 0.4):
            node = self.down.pop(rng.randrange(len(self.down)))
            event(f"nemesis: restart node {node}")
            self.cluster.restart(node)
            return
        leader = self.cluster.leader_id
        up = [n.id for n in self.cluster.nodes if n.id not in self.down]
        if leader is not None and leader in up and rng.random() < 0.45:
            node = leader
            self.leader_crashes += 1
        else:
            node = rng.choice([n for n in up if n != leader] or up)
        event(f"nemesis: crash node {node} (leader {leader}, down {self.down})")
        self.down.append(node)
        self.crashes += 1
        self.cluster.crash(node)

    def stop(self) -> None:
        """Stop injecting faults and bring every node back."""
        self._stop.set()
        self._thread.join(LIVENESS_S)
        assert not self._thread.is_alive(), "the nemesis never stopped"
        for node in self.down:
            event(f"nemesis: final restart of node {node}")
            self.cluster.restart(node)
        self.down.clear()
        if self.error is not None:
            raise self.error

    def check(self) -> None:
        """The schedule was carried out: every fault injected, leaders among the victims."""
        assert self.events == FAULTS, (
            f"only {self.events} of {FAULTS} faults injected in {RUN_S + LIVENESS_S}s: crash() "
            f"or restart() blocked")
        assert self.leader_crashes >= 1, "the schedule never crashed a leader"


def run_clients(n: int, body: Callable[[int, random.Random], None], seed: int) -> None:
    """Run ``body(client, rng)`` in ``n`` threads and wait for them (bounded)."""
    threads = [threading.Thread(target=body, args=(c, random.Random(seed * 100 + c)),
                                daemon=True, name=f"client-{c}") for c in range(n)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + RUN_S + 2 * LIVENESS_S  # clients run about RUN_S
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    stuck = [th for th in threads if th.is_alive()]
    if stuck:
        frames = sys._current_frames()
        stacks = "\n".join(f"--- {th.name}:\n" + "".join(traceback.format_stack(frames[th.ident]))
                           for th in stuck if th.ident in frames)
        pytest.fail(f"client threads never returned: {[th.name for th in stuck]}\n{stacks}")


class Archiver:
    """Copies committed entries out of the log, and truncates the log behind the copy.

    Every ``every`` entries it flushes the running engines and truncates the
    log prefix that they persisted *and* it archived -- much more often than
    the cluster's own maintenance would -- so that followers restarted by a
    nemesis keep landing behind the prefix and installing snapshots, while a
    history check can still read the whole committed log from the archive.
    """

    def __init__(self, cluster: Cluster, every: int) -> None:
        self.cluster = cluster
        self.every = every
        self.entries: list[tuple[int, bytes]] = []  # (index, payload) of every committed entry
        self.truncations = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="archiver")

    def __enter__(self) -> Archiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(LIVENESS_S)
        assert not self._thread.is_alive(), "the archiver never stopped"
        if self.error is not None:
            raise self.error

    @property
    def index(self) -> int:
        return self.entries[-1][0] if self.entries else 0

    def drain(self) -> None:
        """Archive everything committed that a running replica's log still holds."""
        c = self.cluster.consensus
        leader = c.leader_id
        if leader is None or not c.is_alive(leader):
            return
        while True:
            entries = c.entries_after(self.index, 1000, node=leader)  # SnapshotNeeded: a bug
            if not entries:
                return
            self.entries += [(e.index, e.payload) for e in entries]

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self.drain()
                c = self.cluster.consensus
                if self.index - c.first_index + 1 < self.every:
                    continue
                running = [n.engine for n in self.cluster.nodes if n.alive and n.engine]
                if len(running) < c.quorum:
                    continue
                try:
                    for e in running:
                        e.flush()
                except ClosedError:  # the nemesis crashed that node meanwhile: next round
                    continue
                upto = min(self.index, *(e.persisted_sequence for e in running))
                c.truncate_prefix(upto)
                self.truncations += 1
        except BaseException as exc:
            self.error = exc


def committed_log(cluster: Cluster, archive: Archiver | None = None
                  ) -> list[tuple[int, dict[bytes, bytes | None]]]:
    """Every committed write set, with its log index, decoded from the leader's log copy
    (or, if the log was truncated, from ``archive``)."""
    leader = cluster.leader(LIVENESS_S).id
    assert cluster.wait_converged(LIVENESS_S), "replicas did not converge"
    consensus = cluster.consensus
    if archive is not None:
        archive.drain()
        assert archive.index == consensus.commit_index
        assert [i for i, _ in archive.entries] == list(range(1, archive.index + 1))
        return [(i, dict(decode_command(p, index=i)[1].ops)) for i, p in archive.entries if p]
    assert consensus.first_index == 1, "the log was truncated; the test needs all of it"
    out: list[tuple[int, dict[bytes, bytes | None]]] = []
    index = 0
    while True:
        entries = consensus.entries_after(index, 1000, node=leader)
        if not entries:
            break
        for entry in entries:
            if entry.payload:
                batch = decode_command(entry.payload, index=entry.index)[1]
                out.append((entry.index, dict(batch.ops)))
        index = entries[-1].index
    assert index == consensus.commit_index
    return out


def replica_state(cluster: Cluster) -> dict[bytes, bytes]:
    """The state every running replica agrees on (asserts they are identical and complete)."""
    failed = {n.id: repr(n.failed) for n in cluster.nodes if not n.alive}
    assert not failed, f"replicas not running: {failed}"
    assert {n.applied for n in cluster.nodes} == {cluster.consensus.commit_index}
    scans = [dict(n.engine.scan()) for n in cluster.nodes if n.engine is not None]
    for i, scan in enumerate(scans):
        assert scan == scans[0], f"replica {i} differs from replica 0"
    return scans[0]


# -- (a) linearizable registers ---------------------------------------------------------------


@dataclass
class RegisterHistory:
    ops: list[Op] = field(default_factory=list)
    failed_writes: list[tuple[str, str | None]] = field(default_factory=list)  # (key, value)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def register_clients(store: KeyValueStore, keys: list[str], running: Callable[[], bool],
                     seed: int) -> RegisterHistory:
    """Run CLIENTS threads of put/get/delete on ``keys`` while ``running()``; record them."""
    hist = RegisterHistory()

    def client(c: int, rng: random.Random) -> None:
        n = 0
        while running() and not hist.errors:
            key = rng.choice(keys)
            r = rng.random()
            kind = "get" if r < 0.5 else "put" if r < 0.92 else "delete"
            value = f"c{c}-{n}" if kind == "put" else None
            n += 1
            invoke = time.monotonic()
            try:
                if kind == "get":
                    value = store.get(key)
                elif kind == "put":
                    assert value is not None
                    store.put(key, value)
                else:
                    store.delete(key)
            except AmbiguousCommit:
                with hist.lock:
                    hist.ops.append(Op(c, kind, key, value, invoke, None))
            except NOT_COMMITTED:
                if kind != "get":
                    with hist.lock:
                        hist.failed_writes.append((key, value))
            except Exception as exc:
                with hist.lock:
                    hist.errors.append(f"client {c} {kind} {key}: {type(exc).__name__}: {exc}")
                    if kind != "get":  # outcome unknown: it may have taken effect
                        hist.ops.append(Op(c, kind, key, value, invoke, None))
            else:
                complete = time.monotonic()
                with hist.lock:
                    hist.ops.append(Op(c, kind, key, value, invoke, complete))

    run_clients(CLIENTS, client, seed)
    return hist


def check_register_history(cluster: Cluster, store: KeyValueStore, keys: list[str],
                           hist: RegisterHistory, log: list[tuple[int, dict[bytes, bytes | None]]],
                           min_acked: int) -> None:
    """Linearizable, and what clients were told agrees with the committed ``log``."""
    # Final reads, after every node is back, belong to the history too.
    for key in keys:
        invoke = time.monotonic()
        value = store.get(key)
        hist.ops.append(Op(CLIENTS, "get", key, value, invoke, time.monotonic()))
    acked = sum(1 for op in hist.ops if op.complete is not None)
    assert acked >= min_acked, f"only {acked} operations completed"

    result = check_linearizable(hist.ops)
    assert result.ok, result.explanation

    names = {k.encode() for k in keys}
    written = {v for _, ops in log for k, v in ops.items() if v is not None and k in names}
    phantom = [(k, v) for k, v in hist.failed_writes if v is not None and v.encode() in written]
    assert not phantom, f"puts reported as not committed are in the log: {phantom[:5]}"
    for op in hist.ops:
        if op.kind == "put" and op.complete is not None:
            assert op.value is not None and op.value.encode() in written, op
    assert not hist.errors, f"unexpected client errors: {hist.errors[:5]}"


@pytest.mark.parametrize("nodes", [3, 5])
def test_register_history_is_linearizable_under_crashes(make_cluster: Callable[..., Cluster],
                                                        nodes: int) -> None:
    """put/get/delete from 12 clients during leader and follower crashes are linearizable."""
    seed = fixed_seed(4000 + nodes)
    cluster = make_cluster(nodes=nodes)
    store = cluster.store(timeout=5.0)
    keys = [f"r{i}" for i in range(8)]
    nemesis = Nemesis(cluster, seed)
    with nemesis:
        hist = register_clients(store, keys, nemesis.running, seed)
    event(f"{len(hist.ops)} ops recorded, {len(hist.failed_writes)} writes failed, "
          f"{nemesis.crashes} crashes ({nemesis.leader_crashes} of leaders)")
    nemesis.check()
    log = committed_log(cluster)
    check_register_history(cluster, store, keys, hist, log, 500)
    assert replica_state(cluster) == apply_log(log)


# -- (b) serializable transactions ------------------------------------------------------------


TXN_KEYS = ["a", "b", "c", "d", "e"]


def run_attempt(store: KeyValueStore, attempt: Attempt, rng: random.Random) -> None:
    """One transaction attempt: reads (and for writers, writes naming itself), then commit."""
    tx = store.transaction(read_only=attempt.read_only)
    try:
        attempt.snapshot = tx.snapshot_sequence
        for key in rng.sample(TXN_KEYS, 3 if attempt.read_only else 2):
            attempt.reads[key.encode()] = tx.get(key)
        if not attempt.read_only:
            targets = rng.sample(sorted(k.decode() for k in attempt.reads), rng.choice((1, 2)))
            if rng.random() < 0.3:
                targets.append(rng.choice(TXN_KEYS))
            for key in dict.fromkeys(targets):
                tx.put(key, attempt.txn_id)
                attempt.writes.append(key.encode())
        tx.commit()
    except BaseException:
        tx.rollback()
        raise
    attempt.sequence = tx.sequence


def transaction_clients(store: KeyValueStore, running: Callable[[], bool], seed: int
                        ) -> list[Attempt]:
    """Run CLIENTS threads of transaction attempts while ``running()``; return every attempt."""
    attempts: list[Attempt] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(c: int, rng: random.Random) -> None:
        n = 0
        while running() and not errors:
            attempt = Attempt(f"t{c}-{n}", rng.random() < 0.3, time.monotonic())
            n += 1
            attempt.record(lambda: run_attempt(store, attempt, rng))  # noqa: B023
            if attempt.outcome == "error":
                with lock:
                    errors.append(f"client {c} {attempt.txn_id}: {attempt.error}")
            with lock:
                attempts.append(attempt)

    run_clients(CLIENTS, client, seed)
    return attempts


def check_transaction_history(cluster: Cluster, store: KeyValueStore,
                              attempts: list[Attempt],
                              log: list[tuple[int, dict[bytes, bytes | None]]] | None = None,
                              min_committed: int = 300) -> None:
    """Check recorded attempts against the log: serializable, strict, nothing lost.

    Acknowledged commits must be in the log at ``tx.sequence``; attempts reported
    as not committed must not be; ambiguous ones count as committed iff found.
    """
    if log is None:
        log = committed_log(cluster)
    committed = check_attempts(attempts, log, min_committed)
    # (c) nothing acknowledged is lost: the replicas hold exactly what the log implies.
    state = replica_state(cluster)
    assert state == apply_log(log)
    check_final_reads(store, committed)
    errors = [f"{a.txn_id}: {a.error}" for a in attempts if a.outcome == "error"]
    assert not errors, f"unexpected client errors: {errors[:5]}"


def check_final_reads(store: KeyValueStore, committed: list[CommittedTxn]) -> None:
    """Each transaction key reads as its last committed writer left it."""
    for key in TXN_KEYS:
        writers = [(t.commit_seq, t.txn_id) for t in committed if key.encode() in t.writes]
        expected = max(writers)[1] if writers else None
        assert store.get(key) == expected


def check_attempts(attempts: list[Attempt], log: list[tuple[int, dict[bytes, bytes | None]]],
                   min_committed: int) -> list[CommittedTxn]:
    """Serializable and strict, and what clients were told matches ``log``; the committed
    (bench.nemesis.check.check_transactions: the rules ``python -m bench nemesis`` uses)."""
    verdict = check_transactions(attempts, log, {k.encode() for k in TXN_KEYS})
    event(f"{len(attempts)} attempts {dict(verdict.outcomes)}")
    assert verdict.outcomes.get("committed", 0) >= min_committed, (
        "too few transactions committed to mean much")
    if verdict.problems:
        pytest.fail("; ".join(verdict.problems[:5]))
    return verdict.committed


@pytest.mark.parametrize("nodes", [3, 5])
def test_transaction_history_is_strictly_serializable_under_crashes(
        make_cluster: Callable[..., Cluster], nodes: int) -> None:
    """Committed read-modify-write and read-only transactions under crashes form a serial order.

    Also: acknowledged commits are in the log at ``tx.sequence``; attempts
    reported as not committed are not; snapshots respect real-time order.
    """
    seed = fixed_seed(5000 + nodes)
    cluster = make_cluster(nodes=nodes)
    store = cluster.store(timeout=5.0)
    with Nemesis(cluster, seed) as nemesis:
        attempts = transaction_clients(store, nemesis.running, seed)
    event(f"{nemesis.crashes} crashes ({nemesis.leader_crashes} of leaders)")
    nemesis.check()
    check_transaction_history(cluster, store, attempts)


def test_transactions_stay_serializable_when_commits_outrun_the_timeout(
        make_cluster: Callable[..., Cluster]) -> None:
    """With a node timeout shorter than a commit, transactions must still serialize.

    No faults: a 10 ms timeout makes many commits ambiguous or "committed but not
    yet applied" on the leader. Whatever the leader does about that (e.g. retiring
    its transaction manager), a later transaction must still conflict with
    writes certified earlier in the same term that are still in flight.
    """
    seed = fixed_seed(5100)
    cluster = make_cluster(nodes=3)
    store = cluster.store(timeout=0.01)
    deadline = time.monotonic() + RUN_S
    attempts = transaction_clients(store, lambda: time.monotonic() < deadline, seed)
    check_transaction_history(cluster, store, attempts)


def test_no_acknowledged_write_lost_after_crashes_and_full_restart(tmp_path: Path) -> None:
    """Unique-key puts acknowledged during crashes all survive a restart of the whole cluster."""
    seed = fixed_seed(6000)
    path = str(tmp_path / "cluster")
    cluster = Cluster.open(path, 5, election_timeout_ms=50)
    acked: dict[str, str] = {}
    unknown: dict[str, str] = {}
    attempted: set[str] = set()
    lock = threading.Lock()
    errors: list[str] = []
    nemesis = Nemesis(cluster, seed)
    try:
        store = cluster.store(timeout=5.0)

        def client(c: int, rng: random.Random) -> None:
            n = 0
            while nemesis.running() and not errors:
                key, value = f"u{c}-{n}", f"{rng.random()}"
                n += 1
                with lock:
                    attempted.add(key)
                try:
                    store.put(key, value)
                except AmbiguousCommit:
                    with lock:
                        unknown[key] = value
                except NOT_COMMITTED:
                    pass
                except Exception as exc:
                    with lock:
                        unknown[key] = value
                        errors.append(f"{key}: {type(exc).__name__}: {exc}")
                else:
                    with lock:
                        acked[key] = value

        with nemesis:
            run_clients(CLIENTS, client, seed)
        nemesis.check()
    finally:
        cluster.close()
    event(f"{len(acked)} puts acknowledged, {len(unknown)} ambiguous; restarting the cluster")
    assert len(acked) >= 300

    cluster = Cluster.open(path, 5, election_timeout_ms=50)
    try:
        cluster.leader(LIVENESS_S)
        assert cluster.wait_converged(LIVENESS_S)
        state = {k.decode(): v.decode() for k, v in replica_state(cluster).items()}
        lost = {k: v for k, v in acked.items() if state.get(k) != v}
        assert not lost, f"{len(lost)} acknowledged puts lost, e.g. {list(lost.items())[:3]}"
        assert all(state.get(k) in (None, v) for k, v in unknown.items())
        assert set(state) <= attempted, "keys nobody wrote"
        store = cluster.store(timeout=LIVENESS_S)
        for key, value in acked.items():
            assert store.get(key) == value
    finally:
        cluster.close()
    assert not errors, f"unexpected client errors: {errors[:5]}"


@pytest.mark.parametrize("nodes", [3, 5])
def test_histories_hold_under_crashes_and_frequent_log_truncation(
        make_cluster: Callable[..., Cluster], nodes: int) -> None:
    """Blind puts on registers and transactions side by side, under crashes, with the log
    truncated every few hundred entries: registers stay linearizable, transactions
    strictly serializable, nothing acknowledged is lost, replicas agree.

    Frequent truncation once corrupted the leader's log (an entry appended during the
    rewrite was written twice) and left restarted nodes unable to open it.
    """
    seed = fixed_seed(7000 + nodes)
    cluster = make_cluster(nodes=nodes)
    store = cluster.store(timeout=5.0)
    keys = [f"r{i}" for i in range(8)]
    nemesis = Nemesis(cluster, seed)
    registers: list[RegisterHistory] = []
    with Archiver(cluster, TRUNCATE_EVERY) as archive, nemesis:
        blind = threading.Thread(target=lambda: registers.append(
            register_clients(store, keys, nemesis.running, seed)), daemon=True)
        blind.start()
        attempts = transaction_clients(store, nemesis.running, seed + 1)
        blind.join(RUN_S + 3 * LIVENESS_S)
        assert registers, "the register clients never finished"
    nemesis.check()
    snapshots = sum(n.snapshots_installed for n in cluster.nodes)
    event(f"{archive.truncations} truncations, {snapshots} snapshots installed, "
          f"{nemesis.crashes} crashes ({nemesis.leader_crashes} of leaders)")
    assert archive.truncations >= 3, "the log was hardly truncated"
    log = committed_log(cluster, archive)
    check_register_history(cluster, store, keys, registers[0], log, 200)
    check_transaction_history(cluster, store, attempts, log, min_committed=100)
