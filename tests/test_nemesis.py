"""``python -m bench nemesis`` in CI: a short seeded run that must pass, and a broken build
that must fail.

Both start real node and client processes on 127.0.0.1 with the proxy
between every pair (bench/nemesis/run.py stops every one of them by pid on
the way out, also when a check fails); together about a minute.
"""

from __future__ import annotations

from pathlib import Path

from bench.nemesis.run import NemesisConfig, run_nemesis


def test_a_short_seeded_nemesis_run_with_kill_pause_and_partition_passes(
        tmp_path: Path) -> None:
    result = run_nemesis(NemesisConfig(nodes=3, duration_s=30, seed=11,
                                       faults=("kill", "pause", "partition"), clients=2,
                                       threads=4, out=None, base=str(tmp_path)))
    assert result.ok, result.problems
    assert set(result.counts) == {"kill", "pause", "partition"}, result.counts
    assert result.register_ops >= 500 and result.transactions["committed"] >= 200


def test_the_checker_catches_reads_served_without_read_index(tmp_path: Path) -> None:
    """--unsafe-follower-reads: every node answers get from its own engine at once. Clients
    reading from random nodes then see stale values, and the verdict must say so."""
    result = run_nemesis(NemesisConfig(nodes=3, duration_s=12, seed=5,
                                       faults=("partition", "pause"), clients=2, threads=4,
                                       unsafe_follower_reads=True, out=None,
                                       base=str(tmp_path)))
    assert not result.ok
    assert any("registers not linearizable" in p for p in result.problems), result.problems
