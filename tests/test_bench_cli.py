"""``python -m bench``'s runner: missing peers, Ctrl-C, repeats and time floors, --dir, --list.

The measurements themselves run in a spawned child process; these tests put a
fake process pool in its place (``multiprocessing.get_context``), which runs a
scripted measurement in-process, so they take milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import cli, report


class FakePool:
    """Stands in for ``ctx.Pool(1)``: ``apply`` calls ``script(workload, system, cfg, path)``."""

    def __init__(self, script: Any) -> None:
        self._script = script

    def __enter__(self) -> FakePool:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def apply(self, fn: Any, args: tuple[Any, ...]) -> dict[str, Any]:
        result: dict[str, Any] = self._script(*args)
        return result


class FakeContext:
    def __init__(self, script: Any) -> None:
        self.script = script

    def Pool(self, n: int) -> FakePool:  # multiprocessing's name
        return FakePool(self.script)


def raw(ops: int, seconds: float) -> dict[str, Any]:
    return {"ops": ops, "seconds": seconds, "latencies_us": [seconds * 1e6 / ops] * 10,
            "extra": {}}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeContext:
    ctx = FakeContext(lambda w, s, cfg, path: raw(1000, 1.0))
    monkeypatch.setattr(cli.multiprocessing, "get_context", lambda method: ctx)
    monkeypatch.setattr(report, "_plot", lambda out, rows: None)
    return ctx


def test_a_missing_peer_exits_2_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to run nothing, exit 0 and overwrite the results with an empty table."""
    monkeypatch.setattr(cli, "available_systems",
                        lambda wanted=None: [s for s in (wanted or ["stratakv", "sqlite3"])
                                             if s in ("stratakv", "sqlite3")])
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--systems", "lmdb", "--out", str(out)])
    assert exc.value.code == 2
    assert "lmdb is not installed: pip install 'stratakv[peers]'" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_still_writes_what_finished(fake: FakeContext, tmp_path: Path) -> None:
    calls: list[str] = []

    def script(w: str, s: str, cfg: dict[str, Any], path: str) -> dict[str, Any]:
        calls.append(f"{w}/{s}")
        if len(calls) == 3:
            raise KeyboardInterrupt
        return raw(1000, 0.5)

    fake.script = script
    out = tmp_path / "results"
    status = cli.main(["--systems", "stratakv,sqlite3", "--only", "readrandom",
                       "--only", "scan100", "--out", str(out)])
    assert status == 130
    doc = json.loads((out / "results.json").read_text())
    assert [(r["workload"], r["system"]) for r in doc["results"]] == [
        ("readrandom", "stratakv"), ("readrandom", "sqlite3")]
    assert doc["config"]["interrupted"] is True


def test_nothing_measured_leaves_old_results_alone(fake: FakeContext, tmp_path: Path) -> None:
    def script(*args: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    fake.script = script
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text("old")
    assert cli.main(["--only", "readrandom", "--out", str(out)]) == 130
    assert (out / "results.json").read_text() == "old"


def test_durable_workloads_get_a_time_floor_repeats_and_a_spread(
        fake: FakeContext, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A durable run shorter than --min-seconds is scaled up; --repeats runs interleave."""
    calls: list[tuple[str, float]] = []
    rates = iter([1000.0, 1000.0, 900.0, 1100.0, 1000.0, 1050.0, 950.0, 1000.0])

    def script(w: str, s: str, cfg: dict[str, Any], path: str) -> dict[str, Any]:
        calls.append((s, cfg["scale"]))
        ops = int(2000 * cfg["scale"])
        return raw(ops, ops / next(rates))  # 2 s per unit of scale at 1000 ops/s

    fake.script = script
    out = tmp_path / "results"
    assert cli.main(["--systems", "stratakv,sqlite3", "--only", "fillsync1", "--repeats", "3",
                     "--min-seconds", "5", "--out", str(out)]) == 0
    # Each system: one short run (scale 1, 2 s), then 3 runs at the calibrated scale.
    assert [s for s, _ in calls] == ["stratakv", "stratakv", "sqlite3", "sqlite3",
                                     "stratakv", "sqlite3", "stratakv", "sqlite3"]
    scales = {s: sc for s, sc in calls[1:]}
    assert all(sc * 2.0 >= 5 for sc in scales.values()), scales
    doc = json.loads((out / "results.json").read_text())
    ours = next(r for r in doc["results"] if r["system"] == "stratakv")
    assert len(ours["runs"]) == 3 and ours["throughput"] == sorted(ours["runs"])[1]
    assert ours["spread_pct"] > 0
    assert ours["extra"]["scale"] == round(scales["stratakv"], 2)  # whichever run is the median
    table = capsys.readouterr().out
    assert "±" in table and "x** (" in table  # throughput spread and per-run ratio range


def test_dir_chooses_where_the_data_goes(fake: FakeContext, tmp_path: Path) -> None:
    paths: list[str] = []

    def script(w: str, s: str, cfg: dict[str, Any], path: str) -> dict[str, Any]:
        paths.append(path)
        return raw(1000, 1.0)

    fake.script = script
    data = tmp_path / "data"
    data.mkdir()
    assert cli.main(["--only", "readmem", "--systems", "stratakv", "--dir", str(data),
                     "--out", str(tmp_path / "out")]) == 0
    assert paths and all(p.startswith(str(data) + os.sep) for p in paths)
    assert os.listdir(data) == []  # its scratch directory is removed at the end


def test_it_says_where_the_chart_went_or_why_there_is_none(
        fake: FakeContext, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--only", "readmem", "--systems", "stratakv",
                     "--out", str(tmp_path)]) == 0
    assert "no chart: matplotlib is not installed (pip install 'stratakv[plot]')" in \
        capsys.readouterr().out


def test_list_columns_fit_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Every workload name is followed by two spaces and the columns line up."""
    assert cli.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(cli.WORKLOADS)
    width = max(len(n) for n in cli.WORKLOADS)
    for line, (name, w) in zip(lines, cli.WORKLOADS.items(), strict=True):
        assert line[:width].rstrip() == name and line[width:width + 2] == "  "
        assert line[width + 2:].split()[0] == w.unit
