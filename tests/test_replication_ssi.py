"""SSI on the replicated leader: commits still in flight count as concurrent."""

from __future__ import annotations

import threading
import time

import engine
from replication import Cluster
from replication.raft.messages import AppendEntries


def test_leader_refuses_write_skew_over_a_commit_still_in_the_log() -> None:
    """T1 certified, its entry not yet on a quorum; T2 begins, reads around it: T2 must abort.

    Regression: concurrency was decided by certification order alone, so T2,
    beginning after T1 certified, did not count T1 as concurrent although its
    snapshot could not see T1, and the write skew committed.
    """
    cluster = Cluster.open("/c", 3, fs=engine.MemFS())
    try:
        store = cluster.store()
        store.put("d0", "on")
        store.put("d1", "on")
        leader = cluster.leader()
        # Appends carrying entries are lost; heartbeats (and so read indexes) still pass.
        cluster.consensus.network.set_filter(
            lambda m: isinstance(m, AppendEntries) and bool(m.entries))
        tm = leader.transactions()
        t1 = tm.begin()
        assert (t1.get(b"d0"), t1.get(b"d1")) == (b"on", b"on")
        t1.put(b"d0", b"off")
        outcome: dict[str, str] = {}

        def commit(name: str, tx: engine.Transaction) -> None:
            try:
                tx.commit()
                outcome[name] = "committed"
            except engine.SerializationFailure as exc:
                outcome[name] = exc.reason

        c1 = threading.Thread(target=commit, args=("t1", t1))
        c1.start()
        deadline = time.monotonic() + 5
        while tm.stats["commits"] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # wait until T1 is certified (its entry is in flight)
        t2 = tm.begin()
        assert (t2.get(b"d0"), t2.get(b"d1")) == (b"on", b"on")  # T1 is not visible
        t2.put(b"d1", b"off")
        commit("t2", t2)
        cluster.consensus.network.set_filter(None)
        c1.join()
        assert outcome == {"t1": "committed", "t2": "dangerous_structure"}
        assert (store.get("d0"), store.get("d1")) == ("off", "on")
    finally:
        cluster.consensus.network.set_filter(None)
        cluster.close()


def test_leader_transactions_see_acknowledged_commits() -> None:
    """A transaction begun after a commit was acknowledged sees it (read index at begin)."""
    cluster = Cluster.open("/c", 3, fs=engine.MemFS())
    try:
        store = cluster.store()
        for i in range(20):
            store.put("k", str(i))
            with store.transaction() as tx:
                assert tx.get("k") == str(i)
    finally:
        cluster.close()
