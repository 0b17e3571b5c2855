"""Opening a cluster directory safely (issue 12): one owner at a time, the right kind of
directory, every write checked before it reaches the log, clear errors for bad node ids."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import engine
import replication
from engine.errors import InvalidArgument
from replication import Cluster, ClusterOptions

ROOT = Path(__file__).resolve().parent.parent
RACE_SECONDS = 6.0


def listing(path: str) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and mtime: what "touches nothing" compares."""
    out = {}
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            st = os.stat(full)
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return out


# -- one owner ---------------------------------------------------------------------------------


_WRITER = textwrap.dedent("""
    import sys, threading, time
    import replication
    path, seconds = sys.argv[1], float(sys.argv[2])
    store = replication.open(path, nodes=3, election_timeout_ms=50)
    print("ready", flush=True)
    out = threading.Lock()
    deadline = time.monotonic() + seconds
    def write(w):
        n = 0
        while time.monotonic() < deadline:
            key = f"w{w}-{n}"
            try:
                store.put(key, (key * 400)[:3000])
            except (replication.Unavailable, replication.AmbiguousCommit):
                continue
            with out:
                print("ack", key, flush=True)
            n += 1
    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    store.close()
    print("closed", flush=True)
""")

_INTRUDER = textwrap.dedent("""
    import sys, time
    import engine, replication
    path, seconds = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + seconds
    locked = 0
    while time.monotonic() < deadline:
        try:
            replication.open(path, nodes=3).close()
            print("BAD opened a live cluster", flush=True)
        except engine.LockedError:
            locked += 1
        except Exception as exc:
            print("BAD", repr(exc), flush=True)
        time.sleep(0.02)
    print("locked", locked, flush=True)
""")


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))


def test_a_second_process_cannot_open_or_damage_a_live_cluster(tmp_path: Path) -> None:
    """Process A writes from 4 threads while process B tries to open the same directory
    every 20 ms: B only ever gets LockedError, and after A closes every write A was told
    about is there. (B used to cut the live logs' "torn" tails before reaching a lock.)"""
    path = str(tmp_path / "race")
    writer = intruder = None
    try:
        writer = _python(_WRITER, path, str(RACE_SECONDS))
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready", writer.stderr
        intruder = _python(_INTRUDER, path, str(RACE_SECONDS - 1.0))  # ends before A closes
        w_out, w_err = writer.communicate(timeout=RACE_SECONDS + 60)
        i_out, i_err = intruder.communicate(timeout=RACE_SECONDS + 60)
    finally:
        for p in (writer, intruder):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert writer.returncode == 0, w_err
    assert intruder.returncode == 0, i_err
    assert "BAD" not in i_out, i_out
    assert int(i_out.split("locked")[1]) > 50, i_out
    assert w_out.rstrip().endswith("closed"), w_err
    acked = [line.split()[1] for line in w_out.splitlines() if line.startswith("ack ")]
    assert len(acked) > 100
    with replication.open(path, nodes=3, election_timeout_ms=50) as store:
        for key in acked:
            assert store.get(key) == (key * 400)[:3000], key


def test_a_second_open_in_the_same_process_is_refused_and_touches_nothing(
        tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    with replication.open(path, nodes=3, election_timeout_ms=50) as store:
        store.put("k", "v")
        before = listing(path)
        with pytest.raises(engine.LockedError, match="LOCK"):
            replication.open(path, nodes=3)
        with pytest.raises(engine.LockedError):
            Cluster.open(path)
        assert listing(path) == before
        assert store.get("k") == "v"
    with replication.open(path, election_timeout_ms=50) as store:  # released on close
        assert store.get("k") == "v"


# -- the right kind of directory ----------------------------------------------------------------


def test_engine_open_refuses_a_cluster_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    replication.open(path, nodes=3, election_timeout_ms=50).close()
    before = listing(path)
    with pytest.raises(engine.InvalidArgument, match="replicated cluster"):
        engine.open(path)
    assert listing(path) == before


def test_replication_open_refuses_an_engine_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with engine.open(path) as db:
        db.put(b"k", b"v")
    before = listing(path)
    with pytest.raises(engine.InvalidArgument, match="engine store"):
        replication.open(path, nodes=3)
    assert listing(path) == before
    with engine.open(path) as db:
        assert db.get(b"k") == b"v"


def test_reopening_reads_the_size_from_the_directory(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    with replication.open(path, nodes=5, election_timeout_ms=50) as store:
        store.put("k", "v")
    with replication.open(path, election_timeout_ms=50) as store:
        assert len(store.cluster.nodes) == 5
        assert store.get("k") == "v"
    with pytest.raises(engine.InvalidArgument, match="5 nodes, not 3"):
        replication.open(path, nodes=3)


def test_a_misspelled_engine_option_fails_before_any_file_is_written(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    with pytest.raises(TypeError, match="memtable_byte"):
        Cluster.open(path, 3, engine={"memtable_byte": 1 << 20})
    assert not os.path.exists(path)


# -- every write checked before it is proposed ---------------------------------------------------


def test_replicated_writes_are_checked_before_anything_is_proposed(
        make_cluster: Callable[..., Cluster]) -> None:
    """Oversized keys, values and transactions, and wrong types, fail with a clear error
    and nothing reaches the log (an oversized key was once committed, then unreadable)."""
    cluster = make_cluster(engine={"max_batch_bytes": 1 << 20})
    store = cluster.store()
    store.put("ok", "1")
    assert cluster.wait_converged(30.0)
    index = cluster.consensus.commit_index
    big_key, big_value = "k" * 70_000, "v" * (17 << 20)
    bad: list[tuple[type[BaseException], str, Callable[[], object]]] = [
        (engine.InvalidArgument, "max_key_bytes", lambda: store.put(big_key, "v")),
        (engine.InvalidArgument, "max_value_bytes", lambda: store.put("k", big_value)),
        (engine.InvalidArgument, "max_key_bytes", lambda: store.delete(big_key)),
        (TypeError, "key", lambda: store.put(b"k", "v")),  # type: ignore[arg-type]
        (TypeError, "value", lambda: store.put("k", 1)),  # type: ignore[arg-type]
        (TypeError, "key", lambda: store.delete(None)),  # type: ignore[arg-type]
    ]

    def big_transaction(tx: replication.StoreTransaction) -> None:
        for i in range(3):
            tx.put(f"t{i}", "x" * 400_000)  # 1.2 MB in all: over max_batch_bytes

    def big_key_in_transaction(tx: replication.StoreTransaction) -> None:
        tx.put(big_key, "v")

    bad += [
        (engine.InvalidArgument, "max_batch_bytes",
         lambda: store.run_transaction(big_transaction)),
        (engine.InvalidArgument, "max_key_bytes",
         lambda: store.run_transaction(big_key_in_transaction)),
    ]
    for error, words, call in bad:
        with pytest.raises(error, match=words):
            call()
    tx = store.transaction()
    with pytest.raises(engine.InvalidArgument, match="max_value_bytes"):
        tx.put("k", big_value)
    tx.rollback()
    assert cluster.consensus.commit_index == index, "a refused write reached the log"
    assert store.get("ok") == "1"


# -- node ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [7, -1, 3, "0", 1.0])
def test_fault_injection_with_a_bad_node_id_is_invalid_argument(
        make_cluster: Callable[..., Cluster], bad: object) -> None:
    cluster = make_cluster()
    store = cluster.store()
    for call in (cluster.crash, cluster.restart, cluster.repair,
                 lambda n: store.snapshot_read("k", node=n)):
        with pytest.raises(engine.InvalidArgument, match="node"):
            call(bad)  # type: ignore[operator]
    assert cluster.alive_count() == 3


def test_restarting_a_running_node_is_a_clear_error(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    with pytest.raises(engine.InvalidArgument, match="running"):
        cluster.restart(0)
    cluster.crash(0)
    cluster.restart(0)
    assert cluster.nodes[0].alive


def test_sim_refuses_a_bad_step_count() -> None:
    r = subprocess.run([sys.executable, "-m", "replication.sim", "--steps", "-5"],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode == 2 and "--steps" in r.stderr
    with pytest.raises(engine.InvalidArgument):
        from replication.sim import run
        run(1, 0)


def test_settings_are_checked_before_any_file_is_written(tmp_path: Path) -> None:
    """ClusterOptions: units in the names, a misspelled or out-of-range setting fails first,
    and the old names still work (deprecated)."""
    path = tmp_path / "c"
    for bad, match in (({"election_timeout": 100}, "unknown cluster setting 'election_timeout'"),
                       ({"election_timeout_ms": 0}, "election_timeout_ms must be > 0"),
                       ({"request_timeout_s": -1}, "request_timeout_s"),
                       ({"engine": {"memtable_bytez": 1}}, "memtable_bytez")):
        with pytest.raises((InvalidArgument, TypeError), match=match):
            Cluster.open(str(path), 3, **bad)
        assert not path.exists(), f"{bad} touched the directory"
    opts = ClusterOptions(election_timeout_ms=80, request_timeout_s=3.0)
    with pytest.warns(DeprecationWarning) as caught:
        legacy = ClusterOptions.from_settings(election_delay=0.08, timeout=3.0)
    assert legacy == opts
    assert ["election_delay" in str(w.message) for w in caught] == [True, False]
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.request_timeout_s = 1.0  # type: ignore[misc]
    with Cluster.open(str(path), 3, options=opts, seed=5) as cluster:
        assert cluster.options.seed == 5 and cluster.timeout == 3.0
        assert cluster.consensus.election_timeout_ms == 80
