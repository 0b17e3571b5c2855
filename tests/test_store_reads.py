"""The replicated store's multi-key reads: multi_get and scan at one linearizable index, and
stats() for operators."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import engine
from replication import Cluster


def test_multi_get_and_scan_return_the_committed_state(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    store = cluster.store()
    for i in range(30):
        store.put(f"user:{i:02d}", f"v{i}")
    store.put("other", "x")
    store.delete("user:05")
    assert store.multi_get(["user:01", "missing", "user:05", "user:01"]) == [
        "v1", None, None, "v1"]
    everything = store.scan()
    assert everything[0] == ("other", "x") and len(everything) == 30
    users = store.scan(prefix="user:")
    assert [k for k, _ in users] == [f"user:{i:02d}" for i in range(30) if i != 5]
    assert store.scan("user:10", "user:13") == [("user:10", "v10"), ("user:11", "v11"),
                                                ("user:12", "v12")]
    assert store.scan(prefix="user:", reverse=True, limit=2) == [("user:29", "v29"),
                                                                 ("user:28", "v28")]
    cluster.crash(cluster.leader().id)  # a new leader answers the same
    assert store.scan(prefix="user:") == users


def test_a_scan_sees_every_write_acknowledged_before_it_and_one_index_only(
        make_cluster: Callable[..., Cluster]) -> None:
    """Writers move two keys together in transactions; every scan sees them equal (one
    index), and never less than what was acknowledged before it began."""
    cluster = make_cluster()
    store = cluster.store()
    store.put("a", "0")
    store.put("b", "0")
    acked = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                with store.transaction() as tx:
                    tx.put("a", str(n))
                    tx.put("b", str(n))
            except engine.SerializationFailure:
                continue
            except BaseException as exc:
                errors.append(exc)
                return
            acked[0] = n

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200):
            floor = acked[0]
            pairs = dict(store.scan())
            assert pairs["a"] == pairs["b"], pairs
            assert int(pairs["a"]) >= floor
            a, b = store.multi_get(["a", "b"])
            assert a == b
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors


def test_bad_arguments_fail_before_anything_is_read(make_cluster: Callable[..., Cluster]) -> None:
    store = make_cluster().store()
    with pytest.raises(TypeError, match="keys"):
        store.multi_get("abc")
    with pytest.raises(TypeError, match=r"keys\[1\]"):
        store.multi_get(["a", b"b"])  # type: ignore[list-item]
    with pytest.raises(engine.InvalidArgument, match="prefix"):
        store.scan("a", prefix="b")
    with pytest.raises(engine.InvalidArgument, match="limit"):
        store.scan(limit=-1)


def test_stats_names_leader_term_indexes_logs_and_engines(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    store = cluster.store()
    store.put("k", "v")
    assert cluster.wait_converged(30.0)
    cluster.crash(2)
    stats = store.stats()
    assert stats["leader"] == cluster.leader_id and stats["term"] >= 1
    assert stats["commit_index"] >= 2
    up = [n for n in stats["nodes"] if n["id"] != 2]
    for n in up:
        assert n["state"] == "running" and n["applied_index"] == stats["commit_index"]
        first, last = n["log"]
        assert first == 1 and last >= stats["commit_index"]
        assert n["engine"]["last_sequence"] == n["applied_index"]
    down = stats["nodes"][2]
    assert down["state"] == "down" and down["log"] is None and down["engine"] is None
