"""Workloads on a 3-process cluster over TCP, with the clients in processes of their own.

* ``proc_put1`` / ``proc_put16`` / ``proc_put64``: puts through
  ``replication.connect`` from 1, 16 and 64 concurrent clients (client
  processes x threads), each acknowledged once committed on a quorum's
  fsync'd log and applied on the leader -- compare with ``cluster_put*``
  (the same replicas in one process) and ``fillsync*`` (one engine).
* ``proc_get16``: linearizable gets (ReadIndex on the leader), 16 clients.
* ``proc_rmw16``: read-modify-write transactions (get, then put, on one of
  1,000 keys), 16 clients, retried on conflicts; ops = commits.
* ``proc_failover``: SIGKILL the leader process, time until a put succeeds;
  five times (the "latency" is the failover time).

A client process (``python -m bench.process_bench --client ...``) opens
its connections, waits for ``go`` on stdin, runs, and prints one JSON line:
its operations, seconds, latencies and the CPU seconds it used, so the
report shows the client's CPU per request beside the server's speed.
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
from typing import Any

from bench.workloads import Config, MakeSystem, Measurement

__all__ = ["proc_failover", "proc_workload"]


def _clients_shape(clients: int) -> tuple[int, int]:
    """(processes, threads per process) for ``clients`` concurrent clients."""
    procs = min(4, clients)
    return procs, clients // procs


def _start(cfg: Config) -> Any:
    from replication.processes import start_nodes, wait_for_leader

    children = start_nodes(3, cfg.path + "-procs")
    if wait_for_leader([c.address for c in children], 30.0) is None:
        from replication.processes import stop_nodes

        stop_nodes(children)
        raise RuntimeError("the 3-process cluster elected no leader in 30 s")
    return children


def _max_term(children: Any) -> int:
    """The highest term any node reports: its growth during a run counts the elections."""
    from replication.client import RemoteStore

    with RemoteStore([c.address for c in children], timeout=2.0) as client:
        return max((st["term"] for st in client.status() if st is not None), default=0)


def proc_workload(op: str, clients: int, quick_ops: int
                  ) -> Callable[[MakeSystem, Config], Measurement]:
    def run(make: MakeSystem, cfg: Config) -> Measurement:
        from replication.processes import stop_nodes
        from replication.transport.tcp import format_address

        children = _start(cfg)
        procs, threads = _clients_shape(clients)
        per = max(1, cfg.n(quick_ops) // clients)
        endpoints = ",".join(format_address(c.address) for c in children)
        workers = []
        try:
            if op == "get":  # the keys the readers read
                _client_main(["--endpoints", endpoints, "--op", "load", "--threads", "16",
                              "--ops", "1000", "--seed", "0"], quiet=True)
            for p in range(procs):
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.process_bench", "--client", "--endpoints",
                     endpoints, "--op", op, "--threads", str(threads), "--ops", str(per),
                     "--seed", str(cfg.seed * 100 + p)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for w in workers:  # each says "ready" once connected
                assert w.stdout is not None
                if w.stdout.readline().strip() != "ready":
                    raise RuntimeError("a benchmark client failed to start")
            term_before = _max_term(children)
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
            elections = _max_term(children) - term_before
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            stop_nodes(children)
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
    from replication.client import RemoteStore
    from replication.processes import start_node, stop_nodes, wait_for_leader

    children = _start(cfg)
    addresses = [c.address for c in children]
    lat: list[float] = []
    try:
        with RemoteStore(addresses, timeout=30.0, attempt_timeout=0.5) as store:
            store.put("warm", "up")
            for i in range(5):
                old = wait_for_leader(addresses, 30.0)
                assert old is not None
                children[old].process.kill()
                t0 = time.perf_counter()
                store.put("after-failover", str(i))  # retries until a new leader serves
                lat.append((time.perf_counter() - t0) * 1e6)
                children[old].process.wait()
                children[old] = start_node(old, addresses, cfg.path + "-procs")
                time.sleep(2.0)  # let it catch up before the next kill
    finally:
        stop_nodes(children)
    return Measurement(len(lat), sum(lat) / 1e6, lat,
                       extra={"failover_ms": [round(x / 1000, 1) for x in lat]})


# -- the client process -----------------------------------------------------------------------


def _client_main(argv: list[str], *, quiet: bool = False) -> dict[str, Any]:
    from engine.errors import SerializationFailure
    from replication.client import connect
    from replication.errors import NotLeader, Unavailable

    p = argparse.ArgumentParser()
    p.add_argument("--client", action="store_true")
    p.add_argument("--endpoints", required=True)
    p.add_argument("--op", choices=("put", "get", "rmw", "load"), required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    store = connect(args.endpoints, timeout=30.0)
    value = "v" * 100
    lats: list[list[float]] = [[] for _ in range(args.threads)]
    retries = [0]

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
                while True:
                    try:
                        with store.transaction() as tx:
                            tx.put(k, str(int(tx.get(k) or 0) + 1))
                        break
                    except (SerializationFailure, NotLeader, Unavailable):
                        retries[0] += 1
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
            "retries": retries[0], "pid": os.getpid()}


if __name__ == "__main__":
    print(json.dumps(_client_main(sys.argv[1:])), flush=True)
