"""Workloads on a 3-node replicated cluster, measured beside the single-node engine.

* ``cluster_put1`` / ``cluster_put16``: puts through ``KeyValueStore`` (each
  acknowledged once committed on a quorum's fsync'd log and applied on the
  leader) from 1 and 16 threads -- compare with ``fillsync1``/``fillsync16``.
* ``cluster_get``: linearizable gets (leadership confirmed by read index).
* ``cluster_failover``: crash the leader, time until a put succeeds on the
  new leader; five times. The "latency" of this workload is the failover time.

Keys and values go through the string API: the benchmark's binary values are
carried as latin-1 text, which UTF-8 stores in about 150 bytes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bench.workloads import Config, MakeSystem, Measurement, Values, _threads
from replication import Cluster

__all__ = ["cluster_failover", "cluster_get", "cluster_put"]


def _cluster(cfg: Config) -> Cluster:
    return Cluster.open(cfg.path + "-cluster", 3)


def _text(v: bytes) -> str:
    return v.decode("latin-1")


def cluster_put(threads: int, quick_ops: int) -> Callable[[MakeSystem, Config], Measurement]:
    def run(make: MakeSystem, cfg: Config) -> Measurement:
        cluster = _cluster(cfg)
        store = cluster.store()
        values = Values(cfg.values, cfg.seed)
        per = cfg.n(quick_ops) // threads
        # Time the puts, not the first election (election_timeout_ms, 150 ms): the
        # single-node workloads do not time engine.open either.
        cluster.leader(timeout=10.0).transactions()

        def body(t: int, lat: list[float]) -> None:
            rng = random.Random(cfg.seed + t)
            for _ in range(per):
                k, v = f"{rng.randrange(cfg.keys):016d}", _text(values.next())
                t0 = time.perf_counter()
                store.put(k, v)
                lat.append((time.perf_counter() - t0) * 1e6)

        try:
            before = cluster.consensus.elections  # the first one is not part of the run
            m = _threads(threads, body)
            m.extra["elections"] = cluster.consensus.elections - before
        finally:
            cluster.close()
        return m
    return run


def cluster_get(make: MakeSystem, cfg: Config) -> Measurement:
    cluster = _cluster(cfg)
    store = cluster.store()
    values = Values(cfg.values, cfg.seed)
    n = 2000
    try:
        def load(t: int, lat: list[float]) -> None:
            for i in range(t, n, 16):
                store.put(f"{i:016d}", _text(values.next()))

        _threads(16, load)
        rng = random.Random(cfg.seed + 5)
        keys = [f"{rng.randrange(n):016d}" for _ in range(cfg.n(10_000))]
        lat: list[float] = []
        t0 = time.perf_counter()
        for k in keys:
            t = time.perf_counter()
            if store.get(k) is None:
                raise RuntimeError(f"cluster_get: {k} is missing")
            lat.append((time.perf_counter() - t) * 1e6)
        return Measurement(len(keys), time.perf_counter() - t0, lat)
    finally:
        cluster.close()


def cluster_failover(make: MakeSystem, cfg: Config) -> Measurement:
    cluster = _cluster(cfg)
    store = cluster.store(timeout=10.0)
    lat: list[float] = []
    try:
        store.put("warm", "up")
        for i in range(5):
            old = cluster.leader().id
            cluster.crash(old)
            t0 = time.perf_counter()
            store.put("after-failover", str(i))  # retries until the new leader serves
            lat.append((time.perf_counter() - t0) * 1e6)
            cluster.restart(old)
            cluster.wait_converged(10)
        return Measurement(len(lat), sum(lat) / 1e6, lat,
                           extra={"failover_ms": [round(x / 1000, 1) for x in lat],
                                  "election_timeout_ms": cluster.consensus.election_timeout_ms})
    finally:
        cluster.close()
