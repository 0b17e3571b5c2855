"""etcd side by side in ``python -m bench``: never required, and the harness works when present.

The first tests run everywhere: without an ``etcd`` binary the benchmark
leaves etcd out and ``--systems etcd`` says what to install. The others
start a real 3-member etcd cluster on loopback and skip cleanly when
``etcd`` is not on PATH (nothing in CI needs it); each is bounded to a few
seconds of etcd time, and each checks that no etcd process outlives it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from bench import cli, systems
from bench.workloads import WORKLOADS, Config

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="no etcd binary on PATH (apt-get install etcd-server)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_without_an_etcd_binary_etcd_is_left_out(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(systems, "on_path", lambda binary: False)
    assert "etcd" not in systems.available_systems()
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--systems", "stratakv,etcd"])
    assert exc.value.code == 2
    assert "etcd is not installed: an etcd binary on PATH" in capsys.readouterr().err


def test_etcd_runs_the_network_workloads_only() -> None:
    on_etcd = sorted(w for w, wl in WORKLOADS.items() if wl.runs_on("etcd"))
    assert on_etcd == sorted(["proc_put1", "proc_put16", "proc_put64", "proc_get16",
                              "proc_rmw16", "proc_failover"])
    assert not WORKLOADS["proc_put16"].runs_on("sqlite3")
    assert WORKLOADS["fillsync1"].runs_on("sqlite3")


@needs_etcd
def test_cluster_and_client_put_get_cas_and_failover(tmp_path: Path) -> None:
    """Puts, linearizable gets, compare-and-swap increments under contention, a leader kill."""
    from bench.etcd import EtcdClient, EtcdCluster, etcd_version

    assert etcd_version()[0].isdigit()
    cluster = EtcdCluster(str(tmp_path / "etcd")).start(timeout=20)
    pids = cluster.pids()
    try:
        assert len(pids) == 3
        with EtcdClient(cluster.endpoints, timeout=15, attempt_timeout=0.5) as client:
            client.put("k", "v")
            assert client.get("k") == "v"
            assert client.get("absent") is None

            def bump() -> None:
                for _ in range(15):
                    client.increment("n")

            threads = [threading.Thread(target=bump) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert client.get("n") == "45", "a lost update: the mod_revision compare failed"

            old = cluster.wait_for_leader(10)
            assert old is not None
            cluster.kill(old)
            t0 = time.monotonic()
            client.put("after", "failover")  # retried on the survivors
            assert time.monotonic() - t0 < 10
            assert client.get("after") == "failover"
            cluster.restart(old)
            assert cluster.max_term() >= 2
    finally:
        cluster.stop()
    assert not any(_alive(p) for p in pids), "an etcd process outlived stop()"


@needs_etcd
def test_a_failed_start_stops_what_it_started(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.etcd import EtcdCluster

    cluster = EtcdCluster(str(tmp_path / "etcd"))
    monkeypatch.setattr(cluster, "wait_for_leader", lambda timeout: None)
    with pytest.raises(RuntimeError, match="no leader"):
        cluster.start()
    assert cluster.pids() == []


@needs_etcd
def test_the_shared_harness_measures_etcd_with_client_processes(tmp_path: Path) -> None:
    """proc_put16 and proc_rmw16 on etcd: client processes report ops and their CPU per op."""
    for name in ("proc_put16", "proc_rmw16"):
        cfg = Config(path=str(tmp_path / name), system="etcd", scale=0.05)
        m = WORKLOADS[name].run(lambda durable, **kw: None, cfg)  # type: ignore[arg-type, return-value]
        assert m.ops == 16 * (cfg.n(6_400 if name == "proc_put16" else 3_200) // 16)
        assert m.seconds > 0
        assert m.extra["client_processes"] == 4 and m.extra["client_cpu_us_per_op"] > 0
