"""Regression tests for the replication defects an adversarial review found (issue 11).

Each test reproduces one defect in bounded time and fails on the code that
had it: log compaction racing appends, a blind put lost to a transaction,
certifier state that was never freed, one damaged replica blocking the
whole cluster, and the smaller ones (leaked ClosedError, store timeouts
that were not bounds, undecodable entries skipped, persisted_sequence
trusted before its manifest edit was synced, terms unchecked at submit,
AmbiguousCommit without the means to resolve it).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.fs import MemFS, WritableFile
from replication import AmbiguousCommit, Cluster, NotLeader, Unavailable
from replication.consensus import LogEntry
from replication.errors import NodeDamaged
from replication.node_log import NodeLog
from replication.raftgroup import RaftGroup
from tests.test_cluster_faults import LIVENESS_S, wait_for


def run_for(seconds: float, threads: list[threading.Thread], stop: threading.Event) -> None:
    """Start ``threads``, let them run ``seconds``, set ``stop`` and join them (bounded)."""
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(LIVENESS_S)


def full_scan(node: Any) -> dict[bytes, bytes]:
    return dict(node.engine.scan())


# -- 1. log compaction racing the leader's appends ------------------------------------------


class _HookedFile:
    """A writable file that runs ``hook`` after its ``after``-th append (once)."""

    def __init__(self, inner: WritableFile, after: int, hook: Callable[[], None]) -> None:
        self._inner = inner
        self._left = after
        self._hook: Callable[[], None] | None = hook

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.append(data)
        self._left -= 1
        if self._left == 0 and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()

    def flush(self) -> None:
        self._inner.flush()

    def sync(self) -> None:
        self._inner.sync()

    def close(self) -> None:
        self._inner.close()

    def size(self) -> int:
        return self._inner.size()


class _RewriteHookFS(MemFS):
    """MemFS that calls ``hook`` in the middle of writing a new log segment."""

    hook: Callable[[], None] | None = None

    def create(self, path: str) -> WritableFile:
        f = super().create(path)
        hook = self.hook
        if hook is None or not path.endswith(".rlog.tmp"):
            return f
        self.hook = None
        return _HookedFile(f, 4, hook)  # header, base, term, first entry: then the hook


def test_an_append_during_log_compaction_is_written_once() -> None:
    """An entry appended while compact() writes the new segment must not be written twice.

    The old rewrite iterated the live entry list without the log's lock: the
    entry appended meanwhile went into the new segment *and* stayed queued,
    the next sync wrote it again, and reopening failed ("entry N where N+1
    expected").
    """
    fs = _RewriteHookFS()
    lg = NodeLog(fs, "/log", 0)
    lg.append([LogEntry(i, 1, b"x%d" % i) for i in range(1, 21)])
    lg.sync()

    def append_from_another_thread() -> None:  # the leader's submit path, racing
        t = threading.Thread(target=lg.append, args=([LogEntry(21, 1, b"late")],))
        t.start()
        t.join(timeout=2.0)

    fs.hook = append_from_another_thread
    lg.compact(10)
    wait_for(lambda: lg.last_index == 21, "the racing append")
    lg.sync()
    lg.close()
    reopened = NodeLog(fs, "/log", 0)
    assert (reopened.base_index, reopened.last_index) == (10, 21)
    assert [e.payload for e in reopened.read(11, 21)] == [b"x%d" % i for i in range(11, 21)] + [
        b"late"]


def test_log_reads_never_straddle_a_compaction() -> None:
    """read() of a compacted index raises SnapshotNeeded instead of returning a gap."""
    from replication.errors import SnapshotNeeded

    lg = NodeLog(MemFS(), "/log", 0)
    lg.append([LogEntry(i, 1, b"e") for i in range(1, 11)])
    lg.compact(5)
    with pytest.raises(SnapshotNeeded):
        lg.read(3, 10)
    assert [e.index for e in lg.read(6, 10)] == [6, 7, 8, 9, 10]


def test_truncation_under_load_keeps_the_cluster_reopenable(tmp_path: Path) -> None:
    """The review's reproduction, bounded: big puts while another thread flushes every
    engine and truncates the log in a loop; then close, reopen, every acknowledged write."""
    path = str(tmp_path / "c")
    cluster = Cluster.open(path, 3, election_timeout_ms=50)
    store = cluster.store()
    acked: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        n = 0
        while not stop.is_set():
            key, value = f"w{w}-{n}", f"{w}:{n}:" + "v" * rng.randint(5_000, 20_000)
            try:
                store.put(key, value)
            except (Unavailable, AmbiguousCommit):
                continue
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                acked[key] = value
            n += 1

    def truncator() -> None:
        while not stop.is_set():
            try:
                for node in cluster.nodes:
                    if node.engine is not None:
                        node.engine.flush()
                cluster.truncate_log()
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    run_for(4.0, [*threads, threading.Thread(target=truncator)], stop)
    cluster.close()
    assert not errors, errors
    assert len(acked) > 50
    with Cluster.open(path, 3, election_timeout_ms=50) as reopened:
        s = reopened.store()
        for key, value in acked.items():
            assert s.get(key) == value, key


# -- 2. a blind put lost to a read-modify-write transaction ----------------------------------


def _slow_commits_and_snapshots(cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
                                snapshot_delay: float) -> Callable[[str, str], None]:
    """Delay the leader's snapshots by ``snapshot_delay``; return a MemFS fault hook that
    slows the followers' log syncs (so commits take about 10 ms)."""
    leader = cluster.leader()
    followers = [f"node-{n.id}/log" for n in cluster.nodes if n.id != leader.id]

    def slow_follower_sync(op: str, path: str) -> None:
        if op == "sync" and any(f in path for f in followers):
            time.sleep(0.01)

    e = leader.engine
    assert e is not None
    real_snapshot = e.snapshot

    def slow_snapshot() -> engine.Snapshot:
        snap = real_snapshot()
        time.sleep(snapshot_delay)  # a write commits and is applied meanwhile
        return snap

    monkeypatch.setattr(e, "snapshot", slow_snapshot)
    return slow_follower_sync


def test_blind_put_racing_a_transaction_is_never_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put and a read-modify-write of one fresh key: the result is the put's value or
    the transaction's applied on top of it -- never the transaction's over an old read.

    The put is submitted first but commits slowly (the followers' log syncs are
    delayed); the transaction begins meanwhile, and a delay right after its
    snapshot lets the put commit and apply in the middle of ``begin``: the old
    code then dropped the put from its set of unregistered writes without the
    lock, and the transaction overwrote a write it never saw (a lost update).
    """
    fs = MemFS()
    cluster = Cluster.open(str(tmp_path / "c"), 3, fs=fs, election_timeout_ms=50)
    try:
        store = cluster.store()
        store.put("warmup", "1")
        slow_follower_sync = _slow_commits_and_snapshots(cluster, monkeypatch, 0.03)
        fs.set_fault(slow_follower_sync)
        lost = []
        for i in range(12):
            key = f"k{i}"
            barrier = threading.Barrier(2)
            outcome: list[str] = []

            def put(key: str = key, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                store.put(key, "W")

            def rmw(key: str = key, barrier: threading.Barrier = barrier,
                    outcome: list[str] = outcome) -> None:
                barrier.wait()
                time.sleep(0.002)  # the put is submitted first
                try:
                    with store.transaction() as tx:
                        tx.put(key, f"T({tx.get(key)})")
                except engine.SerializationFailure:
                    outcome.append("aborted")

            threads = [threading.Thread(target=put), threading.Thread(target=rmw)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(LIVENESS_S)
            final = store.get(key)
            if final not in ("W", "T(W)"):
                lost.append((key, final, outcome))
        assert not lost, f"lost updates: {lost}"
    finally:
        fs.set_fault(None)
        cluster.close()


# -- 3. certifier state leaking within a term ----------------------------------------------


def test_certifier_frees_everything_once_no_transaction_is_active(
        make_cluster: Callable[..., Cluster]) -> None:
    """Blind puts and transactions side by side, then quiet: the certifier holds nothing.

    Blind writes registered by a transaction's begin were once dropped
    without being settled; they stayed PENDING and pinned every later
    transaction's reads until the next leader change.
    """
    cluster = make_cluster()
    store = cluster.store()
    stop = threading.Event()
    errors: list[BaseException] = []

    def blind(w: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                store.put(f"b{w}-{n % 20}", str(n))
            except BaseException as exc:
                errors.append(exc)
                return
            n += 1

    def txn(w: int) -> None:
        def body(tx: Any) -> None:
            tx.get(f"b{w}-0")
            list(tx.scan("b0-", "b0-3"))
            tx.put(f"t{w}", "x")

        while not stop.is_set():
            try:
                store.run_transaction(body)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=blind, args=(w,)) for w in range(2)]
    run_for(2.5, [*threads, *(threading.Thread(target=txn, args=(w,)) for w in range(2))], stop)
    assert not errors, errors
    tm = cluster.leader().transactions()
    certifier = tm._certifier

    def quiet() -> bool:
        with tm._lock:
            certifier.expire(cluster.runtime.now())
            tracked = certifier.tracked()
        return tracked["active"] == 0 and not any(tracked.values())

    wait_for(quiet, "the certifier to free every committed transaction")


# -- 4. one damaged replica ------------------------------------------------------------------


def _flip_middle_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def _closed_cluster_with_data(path: str, n: int = 300) -> dict[str, str]:
    data = {f"k{i:04d}": "v" * 50 + str(i) for i in range(n)}
    with Cluster.open(path, 3, election_timeout_ms=50) as cluster:
        store = cluster.store()
        for k, v in data.items():
            store.put(k, v)
        assert cluster.wait_converged(LIVENESS_S)
    return data


def test_a_damaged_replica_log_leaves_the_cluster_openable_and_repairable(
        tmp_path: Path) -> None:
    """A flipped byte mid-log of one node: open on the healthy majority, report the node,
    keep it out of reads, repair it from a peer."""
    path = str(tmp_path / "c")
    data = _closed_cluster_with_data(path)
    log_dir = os.path.join(path, "node-2", "log")
    (segment,) = [n for n in os.listdir(log_dir) if n.endswith(".rlog")]
    _flip_middle_byte(os.path.join(log_dir, segment))
    with Cluster.open(path, 3, election_timeout_ms=50) as cluster:
        stats = cluster.stats()
        assert stats["nodes"][2]["state"] == "damaged"
        assert segment in stats["nodes"][2]["damage"]
        assert [n["state"] for n in stats["nodes"][:2]] == ["running", "running"]
        store = cluster.store()
        store.put("after", "damage")
        assert store.get("k0007") == data["k0007"]
        with pytest.raises(Unavailable):
            store.snapshot_read("k0007", node=2)
        with pytest.raises(NodeDamaged):
            cluster.restart(2)
        cluster.repair(2)
        assert cluster.stats()["nodes"][2]["state"] == "running"
        store.put("after", "repair")
        assert cluster.wait_converged(LIVENESS_S)
        scans = [full_scan(n) for n in cluster.nodes]
        assert scans[0] == scans[1] == scans[2]
        assert scans[2][b"after"] == b"repair"
    with Cluster.open(path, 3, election_timeout_ms=50) as cluster:  # and it stays repaired
        assert all(n["state"] == "running" for n in cluster.stats()["nodes"])
        assert cluster.store().get("k0299") == data["k0299"]


def test_a_damaged_replica_engine_is_one_of_the_f_failures(tmp_path: Path) -> None:
    """A damaged engine manifest on one node: the cluster opens; on two of three, it refuses."""
    path = str(tmp_path / "c")
    data = _closed_cluster_with_data(path, 50)

    def damage(node: int) -> None:
        node_dir = os.path.join(path, f"node-{node}")
        (engine_dir,) = [n for n in os.listdir(node_dir) if n.startswith("engine-")]
        with open(os.path.join(node_dir, engine_dir, "CURRENT")) as f:
            current = f.read().split()[0]
        with open(os.path.join(node_dir, engine_dir, current), "r+b") as f:
            f.seek(10)
            f.write(b"\xde\xad\xbe\xef")

    damage(1)
    with Cluster.open(path, 3, election_timeout_ms=50) as cluster:
        assert cluster.stats()["nodes"][1]["state"] == "damaged"
        assert cluster.store().get("k0010") == data["k0010"]
    damage(0)
    with pytest.raises(engine.CorruptionError):
        Cluster.open(path, 3, election_timeout_ms=50)
    # A refused open released everything: the directory can be opened again (still refused).
    with pytest.raises(engine.CorruptionError):
        Cluster.open(path, 3, election_timeout_ms=50)


# -- smaller defects ----------------------------------------------------------------------------


def test_snapshot_read_of_a_node_going_down_is_unavailable(
        make_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine closed under snapshot_read is Unavailable for a named node, another node
    otherwise -- never a leaked ClosedError."""
    cluster = make_cluster()
    store = cluster.store()
    store.put("k", "v")
    assert cluster.wait_converged(LIVENESS_S)
    victim = cluster.nodes[0].engine
    assert victim is not None

    def closed(key: bytes) -> bytes | None:
        raise engine.ClosedError("engine is closed")

    monkeypatch.setattr(victim, "get", closed)
    with pytest.raises(Unavailable):
        store.snapshot_read("k", node=0)
    assert store.snapshot_read("k") == "v"  # node 0 is skipped, another answers


def test_every_operation_is_bounded_by_the_store_timeout(
        make_cluster: Callable[..., Cluster]) -> None:
    """With replication slower than the store's timeout, put/get/begin/commit return or
    raise within the *store's* timeout, not the cluster's (waits inside a node once used
    the cluster's: a put with a 0.2 s store timeout took the cluster's 5 s)."""
    cluster = make_cluster(request_timeout_s=5.0)
    store = cluster.store(timeout=0.2)
    store.put("k", "v")
    tx = store.transaction()
    tx.put("t", "1")
    cluster.consensus.set_latency(2.0)  # every replication step and read-index round trip
    ops: list[tuple[str, Callable[[], object]]] = [
        ("put", lambda: store.put("k", "w")),
        ("get", lambda: store.get("k")),
        ("begin", lambda: store.transaction()),
        ("commit", tx.commit),
    ]
    try:
        for name, op in ops:
            start = time.monotonic()
            with pytest.raises((Unavailable, AmbiguousCommit, NotLeader)):  # never a hang
                op()
            elapsed = time.monotonic() - start
            assert elapsed < 1.0, f"{name} took {elapsed:.2f}s with a 0.2 s store timeout"
    finally:
        cluster.consensus.set_latency(0.0)


def test_an_undecodable_committed_entry_stops_the_node(
        make_cluster: Callable[..., Cluster]) -> None:
    """An entry that passed its checksum but does not decode stops the applier that meets it
    with a CorruptionError, and the node leaves the group; no replica skips past it (that
    once dropped the write silently, on every replica alike)."""
    cluster = make_cluster()
    store = cluster.store()
    store.put("k", "v")
    index = cluster.consensus.commit_index + 1
    assert cluster.consensus.propose(b"\x7fnot a command")
    wait_for(lambda: sum(n.failed is not None and not cluster.consensus.is_alive(n.id)
                         for n in cluster.nodes) >= 2,
             "a majority of appliers to stop and leave the group")
    for n in cluster.nodes:
        assert n.applied < index, f"node {n.id} applied past the undecodable entry"
        if n.failed is not None:
            assert isinstance(n.failed, engine.CorruptionError), n.failed
            wait_for(lambda n=n: not cluster.consensus.is_alive(n.id), "the node to leave")
            assert cluster.stats()["nodes"][n.id]["state"] == "failed"


def test_persisted_sequence_moves_only_after_the_manifest_edit_is_synced() -> None:
    """A replica's log is truncated up to persisted_sequence: it may not run ahead of what a
    power cut keeps."""
    fs = MemFS()
    db = engine.open("/db", fs=fs, wal=False)
    db.put(b"a", b"1")
    seen: list[int] = []

    def on_sync(op: str, path: str) -> None:
        if op == "sync" and "MANIFEST" in path:
            seen.append(db.persisted_sequence)

    fs.set_fault(on_sync)
    db.flush()
    fs.set_fault(None)
    assert seen and seen[0] == 0, f"persisted_sequence was {seen} before the edit was synced"
    assert db.persisted_sequence == 1
    db.close()


def test_submit_refuses_an_entry_of_another_term(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    leader = cluster.leader().id
    c = cluster.consensus
    index = c.next_index(leader)
    with pytest.raises(NotLeader):
        c.submit(b"\x01" + bytes(16) + b"\x00\x00\x00\x00", node=leader, expect_index=index,
                 expect_term=c.term - 1)
    assert c.next_index(leader) == index  # nothing was appended


def test_an_ambiguous_commit_can_be_resolved(make_cluster: Callable[..., Cluster]) -> None:
    """AmbiguousCommit carries index, term and transaction id; store.outcome() tells the fate."""
    # Election timeout 3 s: the 0.6 s link delay outlasts the 0.3 s store timeout but
    # not the leader's check-quorum window, so the write commits in the end.
    cluster = make_cluster(request_timeout_s=1.0, election_timeout_ms=3000)
    store = cluster.store(timeout=10.0)
    impatient = cluster.store(timeout=0.3)
    store.put("k", "0")
    cluster.consensus.set_latency(0.6)
    with pytest.raises(AmbiguousCommit) as info:
        impatient.put("k", "1")
    exc = info.value
    assert exc.index > 0 and exc.term == cluster.consensus.term and len(exc.txn_id) == 16
    cluster.consensus.set_latency(0.0)
    assert store.outcome(exc) is True
    assert store.get("k") == "1"


# -- found by the review of the fixes above -----------------------------------------------------


def test_an_orphaned_put_settled_during_begin_is_never_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put whose client gave up (AmbiguousCommit) is applied while a transaction begins:
    settling it must not drop it from the writes the new snapshot cannot see."""
    fs = MemFS()
    cluster = Cluster.open(str(tmp_path / "c"), 3, fs=fs, election_timeout_ms=50)
    try:
        store = cluster.store()
        store.put("warmup", "1")
        tm = cluster.leader().transactions()
        slow_follower_sync = _slow_commits_and_snapshots(cluster, monkeypatch, 0.05)
        lost = []
        for i in range(5):
            key = f"k{i}".encode()
            fs.set_fault(slow_follower_sync)
            with pytest.raises(AmbiguousCommit):
                tm.write({key: b"W"}, timeout=0.001)
            tx = tm.begin()
            tx.put(key, b"T(" + (tx.get(key) or b"None") + b")")
            try:
                tx.commit()
            except engine.SerializationFailure:
                pass
            fs.set_fault(None)
            wait_for(lambda key=key: store.get(key.decode()) is not None, "the put to commit")
            final = store.get(key.decode())
            if final not in ("W", "T(W)"):
                lost.append((key, final))
        assert not lost, f"lost updates: {lost}"
    finally:
        fs.set_fault(None)
        cluster.close()


def test_repair_withdraws_the_old_vote_before_it_checkpoints() -> None:
    """A crashed node's synced entries count toward commits -- until a repair deletes them.

    ``forget`` is what Cluster.repair calls before it reads the commit index it
    checkpoints: the leader forgets what the down node acknowledged, so no later
    commit is counted with a vote whose entries are about to be deleted. (The
    core's own test, ``test_a_forgotten_peers_old_acknowledgements_no_longer_count``,
    shows such a commit being withheld; this one shows the group wires it up.)
    """
    fs = MemFS()
    sim = RaftGroup("/c", 3, fs=fs, deterministic=True, seed=1, election_timeout_ms=50)
    try:
        while sim.leader_id is None or not sim.leader_ready(sim.leader_id):
            sim.tick()
        a = sim.leader_id
        b, c = [n for n in range(3) if n != a]
        sim.submit(b"\x01payload").wait()
        progress = sim._nodes[a]._raft.status().progress  # type: ignore[union-attr]
        assert progress[c + 1][1] == sim.commit_index  # C's acknowledgement counts
        with pytest.raises(engine.InvalidArgument, match="running"):
            sim.forget(c)
        sim.crash(c)
        sim.forget(c)
        progress = sim._nodes[a]._raft.status().progress  # type: ignore[union-attr]
        assert progress[c + 1][1] == 0 and progress[b + 1][1] == sim.commit_index
        # B alone now makes the quorum: a commit still happens, counted without C.
        assert sim.submit(b"\x01after").wait()
    finally:
        sim.close()


def test_a_node_whose_applier_fails_leaves_the_group(
        make_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that cannot apply (a disk error) must not keep leading: the others elect a
    leader and serve; a restart brings the node back."""
    cluster = make_cluster(request_timeout_s=2.0)
    store = cluster.store()
    store.put("k", "v")
    leader = cluster.leader()
    e = leader.engine
    assert e is not None

    def broken(items: object) -> None:
        raise engine.StorageError("No space left on device (injected)")

    monkeypatch.setattr(e, "apply_many", broken)
    try:
        store.put("k2", "v2")  # committed in the log even if its leader cannot apply it
    except (AmbiguousCommit, Unavailable):
        pass
    wait_for(lambda: not cluster.consensus.is_alive(leader.id), "the failed node to leave")
    store.put("k3", "v3")  # served by a new leader
    assert cluster.leader_id != leader.id
    assert cluster.stats()["nodes"][leader.id]["state"] == "failed"
    monkeypatch.undo()
    cluster.restart(leader.id)
    store.put("k4", "v4")
    assert cluster.wait_converged(LIVENESS_S)
    assert full_scan(cluster.nodes[leader.id]) == full_scan(cluster.leader())


def test_repair_and_restart_never_leave_a_log_without_its_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart whose engine fails to open takes the log down again; repair refuses a node
    whose log runs; a repair that did not finish leaves the node damaged, on reopen too."""
    path = str(tmp_path / "c")
    _closed_cluster_with_data(path, 20)
    cluster = Cluster.open(path, 3, election_timeout_ms=50)
    try:
        cluster.crash(1)
        real_start = cluster.nodes[1].start

        def emfile() -> None:
            raise OSError(24, "Too many open files (injected)")

        monkeypatch.setattr(cluster.nodes[1], "start", emfile)
        with pytest.raises(OSError):
            cluster.restart(1)
        assert not cluster.consensus.is_alive(1)
        monkeypatch.setattr(cluster.nodes[1], "start", real_start)
        cluster.restart(1)
        with pytest.raises(engine.InvalidArgument, match="running"):
            cluster.repair(1)
        cluster.crash(1)

        def fail_checkpoint(dest: str) -> int:
            raise OSError(28, "No space left on device (injected)")

        leader = cluster.leader()
        assert leader.engine is not None
        monkeypatch.setattr(leader.engine, "checkpoint", fail_checkpoint)
        with pytest.raises(OSError):
            cluster.repair(1)
        with pytest.raises(NodeDamaged):
            cluster.restart(1)  # never an empty replica mistaken for a healthy one
    finally:
        cluster.close()
    with Cluster.open(path, 3, election_timeout_ms=50) as reopened:
        assert reopened.stats()["nodes"][1]["state"] == "damaged"
        reopened.repair(1)
        assert reopened.wait_converged(LIVENESS_S)
        assert full_scan(reopened.nodes[1]) == full_scan(reopened.leader())


def test_a_follower_whose_log_rewrite_fails_leaves_the_group() -> None:
    """A failed compaction (ENOSPC on the rename) fail-stops that log: the node leaves the
    group instead of counting toward quorum with a log it cannot write, the others are
    compacted all the same, close() works, and a restart recovers from the disk."""
    import errno

    fs = MemFS()
    cluster = Cluster.open("/c", 3, fs=fs, election_timeout_ms=50)
    try:
        store = cluster.store()
        for i in range(50):
            store.put(f"k{i}", "v")
        victim = next(n.id for n in cluster.nodes if n.id != cluster.leader_id)

        def fail_rename(op: str, path: str) -> None:
            if op == "rename" and f"node-{victim}/log" in path:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

        for n in cluster.nodes:
            assert n.engine is not None
            n.engine.flush()
        fs.set_fault(fail_rename)
        cluster.truncate_log()
        fs.set_fault(None)
        assert not cluster.consensus.is_alive(victim)
        assert cluster.stats()["nodes"][victim]["state"] == "failed"
        assert cluster.consensus.first_index > 1  # the others were compacted
        store.put("after", "x")
        cluster.restart(victim)
        store.put("again", "y")
        assert cluster.wait_converged(LIVENESS_S)
        assert full_scan(cluster.nodes[victim]) == full_scan(cluster.leader())
    finally:
        cluster.close()


def test_a_new_leaders_catch_up_counts_against_the_store_timeout(
        make_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-up wait of a new leader and the write after it share one deadline (each
    once got the whole timeout: a put with a 0.5 s timeout took 0.86 s)."""
    cluster = make_cluster(request_timeout_s=5.0)
    store = cluster.store(timeout=0.5)
    store.put("k", "v")
    for n in cluster.nodes:  # every replica applies slowly (a slow disk, a big batch)
        e = n.engine
        assert e is not None
        real = e.apply_many

        def slow(items: Any, real: Any = real) -> Any:
            time.sleep(0.4)
            return real(items)

        monkeypatch.setattr(e, "apply_many", slow)
    time.sleep(0.5)
    cluster.crash(cluster.leader().id)
    start = time.monotonic()
    try:
        store.put("k", "w")
    except (Unavailable, AmbiguousCommit):
        pass
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.25, f"put took {elapsed:.2f}s with a 0.5 s store timeout"
