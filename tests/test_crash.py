"""Durability proven by SIGKILL: a real writer process killed at random moments, 50+ times."""

from __future__ import annotations

import os
import sys

import pytest

from bench import crash


@pytest.mark.slow
def test_kill_minus_nine_loses_no_acknowledged_write(tmp_path: object, seed: int) -> None:
    """Batches, transfer transactions and counters: every ack survives, nothing is half there."""
    path = os.path.join(str(tmp_path), "db")
    lines: list[str] = []
    tally = crash.run_engine(path, seed=seed, duration=120, kill_interval=0.25, threads=4,
                             max_kills=55, log=lines.append)
    print("\n".join(lines[-5:]))
    assert not tally.violations, f"seed {seed}: {tally.violations[:5]}"
    assert tally.kills >= 50, f"only {tally.kills} kills in the time budget"
    assert tally.acks > 1000, "the worker barely ran: the test would prove nothing"


def test_checker_detects_a_lost_acknowledgement(tmp_path: object) -> None:
    """The crash checker itself fails when an acknowledged batch is missing, torn or stale."""
    import engine

    path = os.path.join(str(tmp_path), "db")
    with engine.open(path) as db, db.batch() as b:
        b.put(b"batch/0/00/0", b"1.0.5:x")
        b.put(b"batch/0/00/1", b"1.0.5:x")
        b.put(b"batchn/0/00", b"1.0.5 3")  # in flight, claims three keys: torn
        b.put(b"batch/0/02/0", b"1.0.3:x")
        b.put(b"batchn/0/02", b"1.0.3 1")  # an older batch than the acknowledged 1.0.4
    model = crash.Model()
    model.begin_run(1)
    model.ack("B 1.0.2 1 1")  # acknowledged, never written: lost
    model.ack("B 1.0.3 2 1")
    model.ack("B 1.0.4 2 1")  # acknowledged over 1.0.3, which the store still holds
    problems = crash.check_store(path, model, threads=1)
    assert any("2 of 3" in p for p in problems)
    assert any("1.0.2 is missing" in p for p in problems)
    assert any("1.0.4 is lost" in p for p in problems)
    assert not any("1.0.5" in p and "never acknowledged" in p for p in problems), \
        "1.0.5 ran after the thread's last report: it may have been in flight"


def test_checker_accepts_the_one_operation_in_flight_and_nothing_older(tmp_path: object) -> None:
    """A write after a thread's last report may survive; a stale one from an old run may not."""
    import engine

    path = os.path.join(str(tmp_path), "db")
    with engine.open(path) as db, db.batch() as b:
        b.put(b"xfer/0", b"2.0.5")  # thread 0, run 2, after its last report (i = 4)
        b.put(b"xfer/1", b"1.1.9")  # thread 1, from run 1: reappeared from nowhere
    model = crash.Model()
    model.begin_run(2)
    model.ack("T 2.0.4")
    problems = crash.check_store(path, model, threads=2)
    assert problems == ["transfer 1.1.9 was never acknowledged nor in flight"], problems
    assert model.journals[0].certain == "2.0.5"  # what survived is now the known state


def test_cli_rejects_bad_arguments() -> None:
    """`python -m bench crash` exits with status 2 and a message on bad arguments."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bench.crash", "--duration", "-1"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "--duration" in proc.stderr


@pytest.mark.slow
def test_kill_minus_nine_of_a_cluster_loses_no_acknowledged_transaction(
        tmp_path: object, seed: int) -> None:
    """A 3-node cluster process (crashing its own nodes too) killed 20+ times loses nothing.

    Replica engines keep no WAL: what a kill erases from their memtables must
    come back from the consensus log.
    """
    path = os.path.join(str(tmp_path), "cluster")
    lines: list[str] = []
    tally = crash.run_engine(path, seed=seed, duration=90, kill_interval=0.4, threads=3,
                             max_kills=20, log=lines.append, target="cluster")
    print("\n".join(lines[-3:]))
    assert not tally.violations, f"seed {seed}: {tally.violations[:5]}"
    assert tally.kills >= 20, f"only {tally.kills} kills in the time budget"
    assert tally.acks > 300, "the cluster worker barely ran: the test would prove nothing"


@pytest.mark.parametrize("violations", [[], ["run 3: batch 1.0.2 is missing"]])
def test_cli_prints_its_directory_and_removes_it_only_on_success(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str],
        violations: list[str]) -> None:
    """The stratakv-crash-* directory is named; a pass removes it, a failure keeps it."""
    import tempfile

    def fake_run(path: str, **kwargs: object) -> crash.Tally:
        with open(os.path.join(path, "data"), "w") as f:
            f.write("x")
        return crash.Tally(kills=3, acks=10, violations=list(violations))

    monkeypatch.setattr(crash, "run_engine", fake_run)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status = crash.main(["--duration", "1", "--seed", "5"])
    out = capsys.readouterr().out
    made = [n for n in os.listdir(str(tmp_path)) if n.startswith("stratakv-crash-")]
    line = next(x for x in out.splitlines() if x.startswith("data directory: "))
    path = line.split(": ", 1)[1].split(" (")[0]
    assert os.path.basename(path).startswith("stratakv-crash-")
    if violations:
        assert status == 1 and made == [os.path.basename(path)]
        assert f"kept {path}" in out
    else:
        assert status == 0 and made == []
        assert f"removed {path}" in out


def test_cli_never_removes_a_directory_given_with_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setattr(crash, "run_engine", lambda path, **kw: crash.Tally(kills=1))
    given = os.path.join(str(tmp_path), "mine")
    os.makedirs(given)
    assert crash.main(["--duration", "1", "--dir", given]) == 0
    assert os.path.isdir(given)
