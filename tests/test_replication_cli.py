"""``python -m replication``: offline inspection of a cluster directory, run as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import replication

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "replication", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rcli") / "cluster"
    with replication.open(str(path), nodes=3) as store:
        store.put("greeting", "hello")
        store.put("count", "1")
        store.delete("count")
    return path


@pytest.fixture
def cluster(template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "cluster"
    shutil.copytree(template, dest)
    return dest


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_stats_shows_nodes_logs_and_engines(cluster: Path) -> None:
    r = cli("stats", str(cluster))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "stratakv-cluster v1 nodes=3" in out
    for i in range(3):
        assert f"node {i} (" in out
    assert out.count("log 000001.rlog") == 3
    assert out.count("engine engine-000001") == 3
    doc = json.loads(cli("stats", "--json", str(cluster)).stdout)
    assert [n["node"] for n in doc["nodes"]] == [0, 1, 2]
    for n in doc["nodes"]:
        assert n["logs"][0]["last_index"] == 4  # the leader's no-op and three writes
        assert n["engine"]["path"].endswith("engine-000001")


def test_dump_rlog_shows_entries(cluster: Path) -> None:
    r = cli("dump-rlog", str(cluster / "node-1" / "log" / "000001.rlog"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("replication log segment") and "node 1" in lines[0]
    assert any("no-op" in line for line in lines)
    assert "    PUT    b'greeting' : b'hello'" in lines
    assert "    DELETE b'count'" in lines
    assert "4 entries held, indexes 1..4" in lines[-1]
    r = cli("dump-rlog", "--limit", "1", str(cluster / "node-1" / "log" / "000001.rlog"))
    assert "... 3 more entries not shown (--limit 1)" in r.stdout


def test_torn_tail_is_reported_not_cut(cluster: Path) -> None:
    """A torn tail is a note (exit 0), and unlike a node restart the tool leaves it there."""
    rlog = cluster / "node-0" / "log" / "000001.rlog"
    rlog.write_bytes(rlog.read_bytes()[:-3])
    before = snapshot(cluster)
    r = cli("dump-rlog", str(rlog))
    assert r.returncode == 0, r.stderr
    assert "note: torn tail" in r.stdout and "indexes 1..3" in r.stdout
    assert cli("stats", str(cluster)).returncode == 0
    assert snapshot(cluster) == before


def test_damage_before_valid_records_exits_1(cluster: Path) -> None:
    rlog = cluster / "node-2" / "log" / "000001.rlog"
    data = bytearray(rlog.read_bytes())
    data[40] ^= 0x40  # inside an early record; later records are intact
    rlog.write_bytes(bytes(data))
    r = cli("dump-rlog", str(rlog))
    assert r.returncode == 1
    assert "corruption in" in r.stderr and str(rlog) in r.stderr
    r = cli("stats", str(cluster))
    assert r.returncode == 0 and "log PROBLEM" in r.stdout


def test_wrong_kinds_of_path_exit_2(cluster: Path, tmp_path: Path) -> None:
    r = cli("stats", str(cluster / "node-0" / "engine-000001"))
    assert r.returncode == 2 and "python -m engine stats" in r.stderr
    r = cli("stats", str(tmp_path / "missing"))
    assert r.returncode == 2
    sst = next((cluster / "node-0" / "engine-000001").glob("*.sst"))
    r = cli("dump-rlog", str(sst))
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr
    manifest = next((cluster / "node-0" / "engine-000001").glob("MANIFEST-*"))
    r = cli("dump-rlog", str(manifest))
    assert r.returncode == 2 and "python -m engine" in r.stderr
