"""Workloads on a 3-process cluster over TCP, with the clients in processes of their own.

The same workloads run on stratakv's node processes and, side by side, on a
3-member etcd cluster (:mod:`bench.etcd`) when an ``etcd`` binary is on PATH:

* ``proc_put1`` / ``proc_put16`` / ``proc_put64``: puts from 1, 16 and 64
  concurrent clients (client processes x threads), each acknowledged once
  committed on a quorum's fsync'd log -- compare with ``cluster_put*`` (the
  same replicas in one process) and ``fillsync*`` (one engine).
* ``proc_get16``: linearizable gets, 16 clients (stratakv: ReadIndex on the
  leader; etcd: its default linearizable range).
* ``proc_rmw16``: read-modify-write on one of 1,000 keys, 16 clients,
  retried on conflicts; ops = commits. stratakv: a transaction (get, then
  put); etcd: a range, then a txn that puts only if the key's
  ``mod_revision`` is still the one read.
* ``proc_failover``: SIGKILL the leader process, time until a put succeeds;
  five times (the "latency" is the failover time).

Both systems get the same harness: the same client processes, threads, key
choice, timing and CPU accounting; only the few lines behind
:func:`open_client` differ (stratakv's ``replication.connect``; etcd's v3
JSON gateway over keep-alive ``http.client``). Both clients send to the
leader first and move on to another node when it fails.

A client process (``python -m bench.process_bench --client ...``) opens its
connections, waits for ``go`` on stdin, runs, and prints one JSON line: its
operations, seconds, latencies and the CPU seconds it used, so the report
shows the client's CPU per request beside the server's speed.

Every server process is stopped by pid when a workload ends, also when it
fails (``_Servers.stop`` in a ``finally``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from bench.workloads import Config, MakeSystem, Measurement

__all__ = ["open_client", "proc_failover", "proc_workload"]


def _clients_shape(clients: int) -> tuple[int, int]:
    """(processes, threads per process) for ``clients`` concurrent clients."""
    procs = min(4, clients)
    return procs, clients // procs


class _Servers(Protocol):
    """A running 3-node cluster of one system, seen by the harness."""

    @property
    def endpoints(self) -> list[str]: ...

    def wait_for_leader(self, timeout: float) -> int | None: ...
    def kill(self, i: int) -> None: ...
    def restart(self, i: int) -> None: ...
    def max_term(self) -> int: ...
    def stop(self) -> None: ...


class _Client(Protocol):
    """What a benchmark client does, on either system."""

    def put(self, key: str, value: str) -> Any: ...
    def get(self, key: str) -> str | None: ...
    def increment(self, key: str) -> int: ...
    def close(self) -> None: ...


class _StrataServers:
    """Three ``python -m replication serve`` processes on loopback."""

    def __init__(self, base_dir: str) -> None:
        from replication.processes import start_nodes
        from replication.transport.tcp import format_address

        self.base_dir = base_dir
        self.children = start_nodes(3, base_dir)
        self.addresses = [c.address for c in self.children]
        self.endpoints = [format_address(a) for a in self.addresses]

    def wait_for_leader(self, timeout: float) -> int | None:
        from replication.processes import wait_for_leader

        return wait_for_leader(self.addresses, timeout)

    def kill(self, i: int) -> None:
        self.children[i].process.kill()
        self.children[i].process.wait()

    def restart(self, i: int) -> None:
        from replication.processes import start_node

        self.children[i] = start_node(i, self.addresses, self.base_dir)

    def max_term(self) -> int:
        from replication.client import RemoteStore

        with RemoteStore(self.addresses, timeout=2.0) as client:
            return max((st["term"] for st in client.status() if st is not None), default=0)

    def stop(self) -> None:
        from replication.processes import stop_nodes

        stop_nodes(self.children)


def _start(cfg: Config) -> _Servers:
    """Start the 3-node cluster of ``cfg.system`` and wait for a leader.

    Its data goes inside ``cfg.path``, which the runner removes after each
    measurement: a repeat or a longer calibrated run starts from empty
    directories (etcd would not even start on a previous run's data, whose
    members listened on other ports).
    """
    if cfg.system == "etcd":
        from bench.etcd import EtcdCluster

        return EtcdCluster(os.path.join(cfg.path, "etcd")).start()
    servers = _StrataServers(os.path.join(cfg.path, "procs"))
    if servers.wait_for_leader(30.0) is None:
        servers.stop()
        raise RuntimeError("the 3-process cluster elected no leader in 30 s")
    return servers


class _StrataClient:
    """``replication.connect`` with the harness's ``increment`` (a retried transaction)."""

    def __init__(self, endpoints: str, timeout: float, attempt_timeout: float) -> None:
        from replication.client import connect

        self.store = connect(endpoints, timeout=timeout, attempt_timeout=attempt_timeout)
        self.put, self.get, self.close = self.store.put, self.store.get, self.store.close

    def increment(self, key: str) -> int:
        """Add one to the integer at ``key``; return how many conflicts made it retry."""
        from engine.errors import SerializationFailure
        from replication.errors import NotLeader, Unavailable

        retries = 0
        while True:
            try:
                with self.store.transaction() as tx:
                    tx.put(key, str(int(tx.get(key) or 0) + 1))
                return retries
            except (SerializationFailure, NotLeader, Unavailable):
                retries += 1


def open_client(system: str, endpoints: str, *, timeout: float = 30.0,
                attempt_timeout: float = 2.0) -> _Client:
    """A client of ``system``'s cluster at ``endpoints`` (comma-separated)."""
    if system == "etcd":
        from bench.etcd import EtcdClient

        return EtcdClient(endpoints.split(","), timeout=timeout,
                          attempt_timeout=attempt_timeout)
    return _StrataClient(endpoints, timeout, attempt_timeout)


def proc_workload(op: str, clients: int, quick_ops: int
                  ) -> Callable[[MakeSystem, Config], Measurement]:
    def run(make: MakeSystem, cfg: Config) -> Measurement:
        servers = _start(cfg)
        procs, threads = _clients_shape(clients)
        per = max(1, cfg.n(quick_ops) // clients)
        common = ["--system", cfg.system, "--endpoints", ",".join(servers.endpoints)]
        workers = []
        try:
            if op == "get":  # the keys the readers read
                _client_main([*common, "--op", "load", "--threads", "16", "--ops", "1000",
                              "--seed", "0"], quiet=True)
            for p in range(procs):
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.process_bench", "--client", *common,
                     "--op", op, "--threads", str(threads), "--ops", str(per),
                     "--seed", str(cfg.seed * 100 + p)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for w in workers:  # each says "ready" once connected
                assert w.stdout is not None
                if w.stdout.readline().strip() != "ready":
                    raise RuntimeError("a benchmark client failed to start")
            term_before = servers.max_term()
            for w in workers:
                assert w.stdin is not None
                w.stdin.write("go\n")
                w.stdin.flush()
            results = []
            for w in workers:
                out, _ = w.communicate(timeout=600)
                if w.returncode != 0:
                    raise RuntimeError(f"a benchmark client failed: {out[-500:]}")
                results.append(json.loads(out.strip().splitlines()[-1]))
            elections = servers.max_term() - term_before
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            servers.stop()
        lat = [x for r in results for x in r["latencies_us"]]
        ops = sum(r["ops"] for r in results)
        seconds = max(r["seconds"] for r in results)
        cpu = sum(r["cpu_s"] for r in results)
        return Measurement(ops, seconds, lat, extra={
            "clients": clients, "client_processes": procs,
            "client_cpu_us_per_op": round(cpu / max(1, ops) * 1e6, 1),
            "elections": elections,
            "retries": sum(r.get("retries", 0) for r in results)})
    return run


def proc_failover(make: MakeSystem, cfg: Config) -> Measurement:
    servers = _start(cfg)
    lat: list[float] = []
    try:
        # A killed node refuses connections at once; the attempt timeout only cuts a
        # request a live node holds while it has no leader. etcd did not answer one it
        # held through the election within 2 s, so the client's retry grain adds up to
        # this much to etcd's figure (medians measured here: 2.0 s with a 2 s grain,
        # 1.56 s with 0.5 s, 1.09 s with 0.2 s; stratakv's moved less than the noise).
        client = open_client(cfg.system, ",".join(servers.endpoints), attempt_timeout=0.2)
        try:
            client.put("warm", "up")
            for i in range(5):
                old = servers.wait_for_leader(30.0)
                if old is None:
                    raise RuntimeError("no leader 30 s after a restart")
                servers.kill(old)
                t0 = time.perf_counter()
                client.put("after-failover", str(i))  # retries until a new leader serves
                lat.append((time.perf_counter() - t0) * 1e6)
                servers.restart(old)
                time.sleep(2.0)  # let it catch up before the next kill
        finally:
            client.close()
    finally:
        servers.stop()
    return Measurement(len(lat), sum(lat) / 1e6, lat,
                       extra={"failover_ms": [round(x / 1000, 1) for x in lat]})


# -- the client process -----------------------------------------------------------------------


def _client_main(argv: list[str], *, quiet: bool = False) -> dict[str, Any]:
    p = argparse.ArgumentParser()
    p.add_argument("--client", action="store_true")
    p.add_argument("--system", choices=("stratakv", "etcd"), default="stratakv")
    p.add_argument("--endpoints", required=True)
    p.add_argument("--op", choices=("put", "get", "rmw", "load"), required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    store = open_client(args.system, args.endpoints)
    value = "v" * 100
    lats: list[list[float]] = [[] for _ in range(args.threads)]
    retries = [0] * args.threads

    def body(t: int) -> None:
        rng = random.Random(args.seed * 1000 + t)
        lat = lats[t]
        for i in range(args.ops):
            if args.op == "load":
                k = f"{(t + i * args.threads) % 1000:016d}"
            else:
                k = f"{rng.randrange(1000 if args.op != 'put' else 1_000_000):016d}"
            t0 = time.perf_counter()
            if args.op in ("put", "load"):
                store.put(k, value)
            elif args.op == "get":
                store.get(k)
            else:
                retries[t] += store.increment(k)
            lat.append((time.perf_counter() - t0) * 1e6)

    warm = [threading.Thread(target=store.get, args=("warm-up",)) for _ in range(args.threads)]
    for th in warm:  # one pooled connection per thread, made before the clock starts
        th.start()
    for th in warm:
        th.join()
    if not quiet:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=body, args=(t,)) for t in range(args.threads)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    store.close()
    all_lat = [x for lat in lats for x in lat]
    return {"ops": len(all_lat), "seconds": seconds, "latencies_us": all_lat,
            "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
            "retries": sum(retries), "pid": os.getpid()}


if __name__ == "__main__":
    print(json.dumps(_client_main(sys.argv[1:])), flush=True)
