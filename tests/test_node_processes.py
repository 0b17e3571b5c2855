"""Real node processes on 127.0.0.1: the network client, faults by signal, snapshots, the tools.

Each test starts its own cluster of ``python -m replication serve``
processes (tests/proc_cluster.py) and stops every one of them by pid at the
end, also on failure. Histories are recorded from client threads and
checked with tests/checkers; replica state and logs are read offline from
the node directories after the processes stopped.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import replication
from engine.errors import InvalidArgument, SerializationFailure, TransactionClosed
from replication.client import RemoteStore
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.transport.rpc import RpcConnection
from replication.transport.wire import (
    FrameType,
    Hello,
    Role,
    encode_frame,
    hello_frame,
)
from tests.checkers import check_linearizable
from tests.proc_cluster import LIVENESS_S, ProcCluster, proc_cluster
from tests.test_cluster_histories import (
    TXN_KEYS,
    Attempt,
    Op,
    RegisterHistory,
    apply_log,
    check_attempts,
    register_clients,
    transaction_clients,
)
from tests.test_readme import _block_after


def _stop_all(cluster: ProcCluster, nodes: int) -> dict[bytes, bytes]:
    """Stop the cluster (SIGTERM: each must exit 0, having closed its files); assert every
    replica holds the same state and return it."""
    cluster.stop()
    codes = [c.process.returncode for c in cluster.children]
    assert codes == [0] * nodes, f"nodes did not stop cleanly on SIGTERM: exit codes {codes}"
    states = [cluster.replica_state(i) for i in range(nodes)]
    for i, st in enumerate(states):
        assert st == states[0], f"replica {i} differs from replica 0"
    return states[0]


# -- the API ------------------------------------------------------------------------------


def test_remote_store_has_the_key_value_store_api(tmp_path: Path) -> None:
    with proc_cluster(tmp_path) as pc:
        lead = pc.leader()
        with pc.client(first=(lead + 1) % 3) as c:  # starts at a follower: follows the hint
            i = c.put("a", "1")
            assert c.put("b", "2") == i + 1
            assert c.get("a") == "1" and c.get("nope") is None
            assert c.multi_get(["a", "nope", "b"]) == ["1", None, "2"]
            c.delete("b")
            c.put("ab", "3")
            assert c.scan() == [("a", "1"), ("ab", "3")]  # no session keys in sight
            assert c.scan(prefix="a", reverse=True) == [("ab", "3"), ("a", "1")]
            assert c.scan("a", "ab") == [("a", "1")] and c.scan(limit=1) == [("a", "1")]
            with c.transaction() as tx:
                assert tx.get("a") == "1"
                tx.put("a", "2")
                tx.delete("ab")
                assert tx.scan() == [("a", "2")]  # reads its own writes
            assert tx.sequence is not None and c.get("a") == "2" and c.get("ab") is None
            assert c.run_transaction(lambda t: t.get("a")) == "2"
            # Write skew between two remote transactions: SSI aborts one.
            t1, t2 = c.transaction(), c.transaction()
            t1.get("x")
            t2.get("y")
            t1.put("y", "1")
            t2.put("x", "1")
            t1.commit()
            with pytest.raises(SerializationFailure):
                t2.commit()
            # Bad input fails before anything is written.
            with pytest.raises(TypeError):
                c.put(b"k", "v")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="key"):
                c.put("k" * (70 << 10), "v")  # over max_key_bytes: refused by the leader
            assert c.scan(prefix="kk") == []
            st = pc.status(lead)
            assert st is not None and st["role"] == "leader" and st["certifier"] is not None


def test_a_node_refuses_a_directory_of_another_node_or_cluster(tmp_path: Path) -> None:
    with proc_cluster(tmp_path) as pc:
        peers = ",".join(f"{i}=127.0.0.1:{a[1] + 1000}" for i, a in enumerate(pc.addresses))
    for args, what in ((["--id", "1"], "node"), (["--id", "0", "--cluster", "other"], "cluster")):
        proc = subprocess.run([sys.executable, "-m", "replication", "serve", "--peers", peers,
                               "--data", str(tmp_path / "node-0"), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert f"belongs to {what}" in proc.stderr and "refusing to start" in proc.stderr


# -- histories under faults ------------------------------------------------------------------


def test_histories_hold_with_clients_on_every_node_through_kill_and_pause(tmp_path: Path
                                                                           ) -> None:
    """Registers stay linearizable and transactions strictly serializable while the leader is
    SIGKILLed (and restarted) and later SIGSTOPped past an election timeout; nothing
    acknowledged is lost and the replicas end identical. The two workloads each use a client
    whose endpoint list starts at another node, and share tests/test_cluster_histories'
    clients and checks with the embedded cluster's history tests."""
    rng = random.Random(20261204)
    keys = ["r0", "r1", "r2"]
    running = threading.Event()
    running.set()
    registers: list[RegisterHistory] = []
    attempts: list[list[Attempt]] = []
    with proc_cluster(tmp_path) as pc:
        reg_store, txn_store = pc.client(timeout=8.0, first=1), pc.client(timeout=8.0, first=2)
        workers = [
            threading.Thread(target=lambda: registers.append(
                register_clients(reg_store, keys, running.is_set, 7)), daemon=True),  # type: ignore[arg-type]
            threading.Thread(target=lambda: attempts.append(
                transaction_clients(txn_store, running.is_set, 8)), daemon=True),  # type: ignore[arg-type]
        ]
        for t in workers:
            t.start()
        time.sleep(1.5)
        victim = pc.leader()
        pc.kill(victim)  # SIGKILL the leader under load
        assert pc.leader(exclude=victim) != victim
        time.sleep(1.0 + rng.random())
        pc.restart(victim)
        time.sleep(1.5)
        paused = pc.leader()
        pc.pause(paused)  # SIGSTOP well past an election timeout
        time.sleep(2.0)
        pc.resume(paused)
        time.sleep(1.5)
        running.clear()
        for t in workers:
            t.join(3 * LIVENESS_S)
        assert registers and attempts, "the history clients never finished"
        pc.wait_converged()
        hist = registers[0]
        for key in keys:  # final reads, after every node is back, belong to the history
            invoke = time.monotonic()
            hist.ops.append(Op(99, "get", key, reg_store.get(key), invoke, time.monotonic()))
        final_reads = {k: txn_store.get(k) for k in TXN_KEYS}
        commit = max(s["commit"] for s in (pc.status(i) for i in range(3)) if s is not None)
        reg_store.close()
        txn_store.close()
    assert not hist.errors, hist.errors[:5]
    assert sum(1 for o in hist.ops if o.complete is not None) >= 50, "too few register ops"
    result = check_linearizable(hist.ops)
    assert result.ok, result.explanation
    state = _stop_all(pc, 3)
    applied = int(state.pop(b"__applied__"))
    assert applied >= commit
    log = pc.committed_log(0, applied)
    written = {v for _, ops in log for k, v in ops.items() if v is not None}
    phantom = [(k, v) for k, v in hist.failed_writes if v is not None and v.encode() in written]
    assert not phantom, f"puts reported as not committed are in the log: {phantom[:5]}"
    committed = check_attempts(attempts[0], log, min_committed=30)
    assert state == apply_log(log)
    for key in TXN_KEYS:
        writers = [(t.commit_seq, t.txn_id) for t in committed if key.encode() in t.writes]
        assert final_reads[key] == (max(writers)[1] if writers else None)
    errors = [f"{a.txn_id}: {a.error}" for a in attempts[0] if a.outcome == "error"]
    assert not errors, errors[:5]


def test_a_resumed_leader_serves_no_stale_read(tmp_path: Path) -> None:
    """SIGSTOP the leader past an election timeout, write through the new one, SIGCONT: the
    old leader answers NotLeader or the new value, never the old one (ReadIndex)."""
    with proc_cluster(tmp_path) as pc, pc.client() as c:
        c.put("x", "old")
        old = pc.leader()
        pc.pause(old)
        new = pc.leader(exclude=old)
        c.put("x", "new")
        pc.resume(old)
        with RpcConnection(pc.addresses[old], b"stratakv") as rpc:
            for _ in range(20):
                try:
                    value = rpc.call("get", {"key": "x"}, 10.0)
                except (NotLeader, Unavailable):
                    continue
                assert value == "new", "the resumed leader served a stale read"
        with RemoteStore([pc.addresses[old]], timeout=10.0) as only_old:
            assert only_old.get("x") == "new"  # follows the hint to the new leader
        assert new != old


def test_killing_every_node_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    acked: dict[str, str] = {}
    lock = threading.Lock()
    running = threading.Event()
    running.set()
    with proc_cluster(tmp_path) as pc:
        def writer(c: int) -> None:
            with pc.client(timeout=3.0, first=c % 3) as store:
                n = 0
                while running.is_set():
                    key, value = f"w{c}-{n}", f"v{n}"
                    n += 1
                    try:
                        store.put(key, value)
                    except (AmbiguousCommit, Unavailable, NotLeader):
                        continue
                    with lock:
                        acked[key] = value

        threads = [threading.Thread(target=writer, args=(c,), daemon=True) for c in range(6)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        for i in range(3):
            pc.kill(i)  # all at once, mid-write
        running.clear()
        for t in threads:
            t.join(LIVENESS_S)
        with lock:
            snapshot = dict(acked)
        assert len(snapshot) >= 50, f"only {len(snapshot)} writes acknowledged"
        for i in range(3):
            pc.restart(i)
        pc.leader()
        with pc.client() as store:
            keys = sorted(snapshot)
            values = store.multi_get(keys)
        lost = [k for k, v in zip(keys, values, strict=True) if v != snapshot[k]]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"


def test_retries_across_leader_kills_apply_each_increment_once(tmp_path: Path) -> None:
    """A counter incremented by transactions with unique request ids: after leader kills the
    counter equals the number of request ids, and of increments acknowledged."""
    done: list[str] = []
    lock = threading.Lock()
    running = threading.Event()
    running.set()
    with proc_cluster(tmp_path) as pc:
        def incrementer(c: int) -> None:
            with pc.client(timeout=8.0, first=c % 3) as store:
                n = 0
                while running.is_set():
                    rid = f"req-{c}-{n}"
                    n += 1

                    def bump(tx: replication.client.RemoteTransaction, rid: str = rid) -> None:
                        tx.put("counter", str(int(tx.get("counter") or 0) + 1))
                        tx.put(f"id/{rid}", "1")

                    try:
                        store.run_transaction(bump)
                    except AmbiguousCommit as exc:
                        if store.outcome(exc, timeout=LIVENESS_S):
                            with lock:
                                done.append(rid)
                        continue
                    except (SerializationFailure, NotLeader, Unavailable):
                        continue
                    with lock:
                        done.append(rid)

        threads = [threading.Thread(target=incrementer, args=(c,), daemon=True)
                   for c in range(4)]
        for t in threads:
            t.start()
        for _ in range(2):
            time.sleep(1.5)
            victim = pc.leader()
            pc.kill(victim)
            pc.leader(exclude=victim)
            pc.restart(victim)
        time.sleep(1.0)
        running.clear()
        for t in threads:
            t.join(LIVENESS_S)
        with pc.client() as store:
            counter = int(store.get("counter") or 0)
            ids = [k for k, _ in store.scan(prefix="id/")]
    assert len(done) >= 20, f"only {len(done)} increments acknowledged"
    assert len(ids) == len(set(ids)) == counter, (counter, len(ids))
    assert sorted(ids) == sorted(f"id/{r}" for r in done)


# -- snapshots over the network ----------------------------------------------------------------


def test_a_follower_behind_the_compacted_log_gets_a_snapshot_over_the_network(
        tmp_path: Path) -> None:
    """The follower is SIGKILLed mid-download once and resumes where it broke off."""
    extra = ("--max-log-entries", "200", "--log-keep-entries", "20",
             "--snapshot-chunk-bytes", "1024")
    rng = random.Random(5)
    values = {f"k{i:04d}": rng.randbytes(600).hex() for i in range(1500)}  # incompressible
    with proc_cluster(tmp_path, extra=extra) as pc:
        lead = pc.leader()
        behind = (lead + 1) % 3
        log_path = tmp_path / f"node-{behind}.log"
        with pc.client() as store:
            store.put("before", "1")
            pc.wait_converged()
            pc.kill(behind)
            items = sorted(values.items())

            def load(part: int) -> None:
                with pc.client() as s:
                    for k, v in items[part::8]:
                        s.put(k, v)

            loaders = [threading.Thread(target=load, args=(i,)) for i in range(8)]
            for t in loaders:
                t.start()
            for t in loaders:
                t.join(3 * LIVENESS_S)
            deadline = time.monotonic() + LIVENESS_S
            while True:  # the leader compacts past the follower's last entry
                st = pc.status(pc.leader())
                if st is not None and st["log_first"] > 300:
                    break
                assert time.monotonic() < deadline, f"the log was never compacted: {st}"
                time.sleep(0.2)
            pc.restart(behind)
            deadline = time.monotonic() + LIVENESS_S
            while "fetching snapshot" not in log_path.read_text():
                assert time.monotonic() < deadline, "the follower never fetched a snapshot"
                time.sleep(0.005)
            time.sleep(0.1)
            pc.kill(behind)  # mid-transfer
            pc.restart(behind)
            pc.wait_converged()
            st = pc.status(behind)
            assert st is not None and st["snapshots_installed"] >= 1, st
            store.put("after", "2")
            pc.wait_converged()
    state = _stop_all(pc, 3)
    assert state[b"before"] == b"1" and state[b"after"] == b"2"
    assert {k.decode(): v.decode() for k, v in state.items() if k.startswith(b"k")} == values
    assert "resumed a download" in log_path.read_text(), "the second fetch started over"


# -- hostile input and departed clients ----------------------------------------------------------


def test_garbage_frames_are_dropped_and_the_node_keeps_serving(tmp_path: Path) -> None:
    with proc_cluster(tmp_path) as pc:
        lead = pc.leader()
        with pc.client() as store:
            store.put("k", "v")
            before = pc.status(lead)
            assert before is not None
            good_hello = hello_frame(Hello(Role.CLIENT, 0, 0, b"stratakv"))
            request = encode_frame(FrameType.CLIENT_REQUEST, b"\x06\x01")  # cut-off value
            oversized = bytearray(encode_frame(FrameType.CLIENT_REQUEST, b"x"))
            struct.pack_into("<I", oversized, 8, 1 << 30)  # a length over the cap
            bad = [b"GET / HTTP/1.1\r\n\r\n", good_hello + b"\x00" * 40, good_hello + request,
                   bytes(oversized), good_hello[:7], good_hello + b"SKVW" + b"\xff" * 16]
            for payload in bad:
                with socket.create_connection(pc.addresses[lead], timeout=5) as s:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(5)
                    try:
                        assert s.recv(1024) == b"", "a bad connection got an answer"
                    except ConnectionResetError:
                        pass
            assert store.get("k") == "v"
            after = pc.status(lead)
            assert after is not None
            assert after["log_last"] == before["log_last"], "garbage wrote to the log"
            assert after["term"] == before["term"]


def test_a_killed_client_process_frees_its_transaction(tmp_path: Path) -> None:
    """Its connection closes, and the leader rolls its transaction back at once (the idle
    timeout is far longer than the wait allowed here)."""
    with proc_cluster(tmp_path, extra=("--txn-idle-timeout-s", "600")) as pc:
        lead = pc.leader()
        script = (
            "import sys, time, replication\n"
            f"s = replication.connect({pc.endpoints!r})\n"
            "tx = s.transaction()\n"
            "tx.get('a'); tx.put('b', '1')\n"
            "print('began', flush=True)\n"
            "time.sleep(60)\n")
        client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "began"
            st = pc.status(lead)
            assert st is not None and st["transactions"] == 1
            assert st["certifier"]["active"] == 1
            client.kill()
            client.wait(10)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        deadline = time.monotonic() + LIVENESS_S
        while True:
            st = pc.status(lead)
            assert st is not None
            if st["transactions"] == 0 and st["certifier"]["active"] == 0:
                break
            assert time.monotonic() < deadline, f"the transaction was never freed: {st}"
            time.sleep(0.05)


def test_an_idle_transaction_is_rolled_back_after_the_idle_timeout(tmp_path: Path) -> None:
    with proc_cluster(tmp_path, extra=("--txn-idle-timeout-s", "1")) as pc, \
            pc.client() as store:
        tx = store.transaction()
        tx.get("a")
        time.sleep(2.5)
        with pytest.raises(TransactionClosed, match="idle"):
            tx.get("a")
        tx.rollback()


# -- the launcher and the CLI ----------------------------------------------------------------------


def _ctl(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replication", "ctl", "--endpoints", endpoints,
                           *args], capture_output=True, text=True, timeout=60)


def test_up_starts_a_cluster_that_ctl_and_connect_use_and_stops_it(tmp_path: Path) -> None:
    up = subprocess.Popen([sys.executable, "-m", "replication", "up", "--nodes", "3", "--dir",
                           str(tmp_path), "--election-timeout-ms", "400", "--heartbeat-ms", "40"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert up.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("endpoints="):
            line = up.stdout.readline()
            assert line, f"up ended early: {up.stderr.read() if up.stderr else ''}"
            lines.append(line.strip())
        pids = [int(line.split()[3]) for line in lines[:-1]]
        assert len(pids) == 3 and sum("(leader)" in line for line in lines) == 1
        endpoints = lines[-1].removeprefix("endpoints=")
        code = _block_after("<!-- example-remote -->", "python")  # README's example, as is
        readme_endpoints = "127.0.0.1:40101,127.0.0.1:40102,127.0.0.1:40103"
        assert readme_endpoints in code
        exec(compile(code.replace(readme_endpoints, endpoints), "README.md", "exec"), {})
        with replication.client.connect(endpoints) as store:
            assert store.get("greeting") == "hello" and store.get("n") == "1"
            store.delete("greeting")
            store.delete("n")
            store.put("hello", "world")
        r = _ctl(endpoints, "get", "hello")
        assert (r.returncode, r.stdout) == (0, "world\n")
        assert _ctl(endpoints, "put", "k", "v").stdout.startswith("OK index=")
        r = _ctl(endpoints, "scan")
        assert r.stdout == "hello\tworld\nk\tv\n"
        assert _ctl(endpoints, "del", "k").returncode == 0
        r = _ctl(endpoints, "get", "k")
        assert r.returncode == 1 and "not found" in r.stderr
        r = _ctl(endpoints, "status")
        assert r.returncode == 0 and r.stdout.count("leader") >= 2, r.stdout
        assert _ctl(endpoints, "put", "only-one-arg").returncode == 2
        leader = next(int(line.split()[1]) for line in lines if "(leader)" in line)
        to = (leader + 1) % 3
        r = _ctl(endpoints, "transfer-leader", str(to))
        assert r.returncode == 0 and f"node {to} leads" in r.stdout, r.stdout + r.stderr
        r = _ctl("127.0.0.1:1", "--timeout", "0.5", "get", "x")
        assert r.returncode == 1 and "Unavailable" not in r.stdout
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.1)
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"node processes outlived the launcher: {alive}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
