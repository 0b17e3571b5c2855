"""The deterministic cluster simulation: reproducible runs, invariants, serializable results."""

from __future__ import annotations

import pytest

from replication.sim import SimResult, Simulation, run
from tests.checkers import CommittedTxn, check_serializable


def _serializable(result: SimResult) -> None:
    """Check the run's committed transactions with the dependency-graph checker."""
    txns = []
    for i, t in enumerate(result.transactions):
        # Writers serialize at their log index; a read-only transaction right
        # after the last commit its snapshot saw (unique slot per transaction).
        seq = t.commit_index * 10_000 if t.commit_index is not None else (
            t.snapshot_index * 10_000 + 1 + i)
        reads = tuple((k.encode(), v) for k, v in t.reads)
        txns.append(CommittedTxn(t.txn_id, seq, reads, tuple(k.encode() for k in t.writes)))
    outcome = check_serializable(txns, aborted=result.aborted)
    assert outcome.ok, (outcome.cycle, outcome.anomalies[:5])


def test_same_seed_same_run() -> None:
    """Two runs with one seed produce the same events and the same final data."""
    a, b = run(2024, 300), run(2024, 300)
    assert a.ok and b.ok, a.violations + b.violations
    assert a.events == b.events
    assert a.final_digests == b.final_digests
    assert run(2025, 300).events != a.events


@pytest.mark.parametrize("nodes,seed", [(3, 1), (3, 2), (5, 3), (5, 4), (7, 5)])
def test_invariants_hold_under_faults(nodes: int, seed: int) -> None:
    """Seeded workload with crashes (leader included), partitions: no invariant breaks."""
    result = run(seed, 1500, nodes)
    assert result.ok, f"seed {seed}: " + "\n".join(result.violations + result.events[-30:])
    assert result.crashes > 0 and result.elections > 1, "the faults did not happen"
    assert len(result.transactions) > 50
    assert len(set(result.final_digests)) == 1
    _serializable(result)


def test_model_reports_a_wrong_read() -> None:
    """The read model is not vacuous: a read disagreeing with it is a violation."""
    sim = Simulation(98)
    try:
        sim.store.put("k0", "x")
        sim.possible["k0"] = {"y"}  # pretend the acknowledged write was y
        sim._check_read("k0", sim.store.get("k0"))
        assert sim.result.violations and "read k0 = 'x'" in sim.result.violations[0]
    finally:
        sim.close()


@pytest.mark.parametrize("seed", [60, 94])
def test_settling_injects_no_faults(seed: int) -> None:
    """Seeds whose settle phase once crashed a node it never restarted ("replicas did not
    converge", a false alarm): faults are off while the run settles."""
    result = run(seed, 1000, 7)
    assert result.ok, f"seed {seed}: " + "\n".join(result.violations + result.events[-30:])


@pytest.mark.parametrize("nodes", [3, 5, 7])
def test_many_seeds(nodes: int) -> None:
    """A broad sweep: 200 seeds of short runs per cluster size, every invariant checked."""
    failed = []
    for seed in range(1000 * nodes, 1000 * nodes + 200):
        result = run(seed, 150, nodes)
        if not result.ok:
            failed.append((seed, result.violations[:2]))
    assert not failed, f"python -m replication.sim --nodes {nodes} --steps 150 --seed ...: {failed}"


def test_the_cli_runs_the_raft_core_simulation(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m replication.sim --raft`` runs the pure core over a lossy network."""
    from replication.sim import main

    assert main(["--raft", "--seed", "5", "--seeds", "2", "--steps", "150", "--drop", "0.2",
                 "--dup", "0.05", "--reorder", "0.1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "seed=5"], ["ok", "seed=6"]]
