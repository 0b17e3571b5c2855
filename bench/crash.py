"""``python -m bench crash``: kill a writer with SIGKILL at random moments, check every ack.

A *worker* process opens a store and runs random work from several threads,
printing one acknowledgement line per operation *after* it returned:

* ``B <id> <n>``  a batch of ``n`` keys ``batch/<id>/<j>`` plus ``batchn/<id>``;
* ``T <id>``      a transfer transaction between two of the ``ACCOUNTS``
  accounts, with a journal key ``xfer/<id>``;
* ``C <k> <v>``   a read-increment-write transaction took counter ``k`` to ``v``.

The parent reads acknowledgements through a pipe, kills the worker, reopens
the store itself, and checks:

1. every acknowledged batch is there in full, and no batch is partly there;
2. the accounts always sum to ``ACCOUNTS * OPENING_BALANCE``;
3. every acknowledged transfer's journal key exists;
4. each counter is at least its highest acknowledged value, at most that plus
   the number of worker threads (one unacknowledged increment in flight per
   thread), and never goes backwards across kills;
5. ``verify()`` finds nothing wrong.

The first violation stops the run with exit status 1 and the seed that
reproduces it. Options are tiny so that flushes and compactions run all the
time and kills land in the middle of them.

``--target cluster`` runs the same work through a 3-node
:class:`replication.KeyValueStore` whose worker also crashes and restarts
single nodes (the leader included) while it runs; the parent kills the whole
process and reopens the cluster. Replica engines keep no WAL of their own, so
this is what proves that the consensus log alone brings back every
acknowledged transaction. An operation whose outcome is ambiguous
(AmbiguousCommit) is reported as such and may or may not be there -- whole.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import engine

ACCOUNTS = 16
OPENING_BALANCE = 1000
COUNTERS = 8

_WORKER_OPTIONS: dict[str, Any] = {
    "memtable_bytes": 64 * 1024, "block_bytes": 1024, "target_file_bytes": 16 * 1024,
    "level_base_bytes": 64 * 1024, "l0_compaction_trigger": 2,
}


# ---------------------------------------------------------------------- worker


class _Ops(Protocol):
    """The three kinds of work, over an engine or a cluster."""

    def batch(self, items: dict[str, str]) -> None: ...
    def transfer(self, src: int, dst: int, amount: int, op_id: str) -> None: ...
    def increment(self, k: int) -> int: ...


class _EngineOps:
    def __init__(self, db: engine.Engine) -> None:
        self.db = db
        if db.get(b"acct/00") is None:
            with db.batch() as b:
                for a in range(ACCOUNTS):
                    b.put(b"acct/%02d" % a, b"%d" % OPENING_BALANCE)

    def batch(self, items: dict[str, str]) -> None:
        with self.db.batch() as b:
            for k, v in items.items():
                b.put(k.encode(), v.encode())

    def transfer(self, src: int, dst: int, amount: int, op_id: str) -> None:
        def body(tx: engine.Transaction) -> None:
            _transfer(tx.get, tx.put, src, dst, amount, op_id)
        self.db.run_transaction(body, max_retries=1000)

    def increment(self, k: int) -> int:
        def body(tx: engine.Transaction) -> int:
            return _increment(tx.get, tx.put, k)
        return self.db.run_transaction(body, max_retries=1000)


class _ClusterOps:
    def __init__(self, store: Any) -> None:
        self.store = store
        if store.get("acct/00") is None:
            with store.transaction() as tx:
                for a in range(ACCOUNTS):
                    tx.put(f"acct/{a:02d}", str(OPENING_BALANCE))

    def batch(self, items: dict[str, str]) -> None:
        def body(tx: Any) -> None:
            for k, v in items.items():
                tx.put(k, v)
        self.store.run_transaction(body, max_retries=1000)

    def transfer(self, src: int, dst: int, amount: int, op_id: str) -> None:
        def body(tx: Any) -> None:
            _transfer(lambda k: _b(tx.get(k.decode())), lambda k, v: tx.put(k.decode(),
                      v.decode()), src, dst, amount, op_id)
        self.store.run_transaction(body, max_retries=1000)

    def increment(self, k: int) -> int:
        def body(tx: Any) -> int:
            return _increment(lambda key: _b(tx.get(key.decode())),
                              lambda key, v: tx.put(key.decode(), v.decode()), k)
        result: int = self.store.run_transaction(body, max_retries=1000)
        return result


def _b(v: str | None) -> bytes | None:
    return None if v is None else v.encode()


def _transfer(get: Callable[[bytes], bytes | None], put: Callable[[bytes, bytes], None],
              src: int, dst: int, amount: int, op_id: str) -> None:
    """Move ``amount`` between two accounts if covered; journal the transfer either way."""
    a = int(get(b"acct/%02d" % src) or 0)
    b = int(get(b"acct/%02d" % dst) or 0)
    if a >= amount:
        put(b"acct/%02d" % src, b"%d" % (a - amount))
        put(b"acct/%02d" % dst, b"%d" % (b + amount))
    put(f"xfer/{op_id}".encode(), b"1")


def _increment(get: Callable[[bytes], bytes | None], put: Callable[[bytes, bytes], None],
               k: int) -> int:
    v = int(get(b"ctr/%d" % k) or 0) + 1
    put(b"ctr/%d" % k, b"%d" % v)
    return v


def _worker(target: str, path: str, seed: int, run: int, threads: int, sync: str) -> None:
    """Run random work from ``threads`` threads, printing one line per acknowledgement."""
    out_lock = threading.Lock()

    def ack(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    ops: _Ops
    cluster = None
    if target == "cluster":
        from replication import Cluster

        cluster = Cluster.open(path, 3, engine=_WORKER_OPTIONS, request_timeout_s=5.0)
        ops = _ClusterOps(cluster.store())
    else:
        ops = _EngineOps(engine.open(path, sync=sync, **_WORKER_OPTIONS))
    ack("READY")

    def loop(tid: int) -> None:
        from replication import AmbiguousCommit, Unavailable

        rng = random.Random(seed * 1000 + tid)
        i = 0
        while True:
            i += 1
            op_id = f"{run}.{tid}.{i}"
            r = rng.random()
            try:
                if r < 0.4:
                    n = rng.randint(1, 6)
                    items = {f"batch/{op_id}/{j}": rng.randbytes(rng.randint(5, 100)).hex()
                             for j in range(n)}
                    items[f"batchn/{op_id}"] = str(n)
                    ops.batch(items)
                    ack(f"B {op_id} {n}")
                elif r < 0.7:
                    src, dst = rng.sample(range(ACCOUNTS), 2)
                    ops.transfer(src, dst, rng.randint(1, 100), op_id)
                    ack(f"T {op_id}")
                else:
                    k = rng.randrange(COUNTERS)
                    ack(f"C {k} {ops.increment(k)}")
            except AmbiguousCommit:
                ack(f"A {op_id}" + (f" {k}" if r >= 0.7 else ""))
            except Unavailable:
                time.sleep(0.01)

    for t in range(threads):
        threading.Thread(target=loop, args=(t,), daemon=True).start()
    rng = random.Random(seed)
    while True:
        time.sleep(rng.uniform(0.05, 0.3))
        if cluster is not None:  # one node at a time (f = 1), the leader a third of the time
            victim = (cluster.leader_id if rng.random() < 0.33 and cluster.leader_id is not None
                      else rng.randrange(3))
            cluster.crash(victim)
            time.sleep(rng.uniform(0.05, 0.3))
            cluster.restart(victim)


# ---------------------------------------------------------------------- checker


@dataclass
class Model:
    """What the parent knows was acknowledged, across every run."""

    batches: dict[str, int] = field(default_factory=dict)
    transfers: set[str] = field(default_factory=set)
    counters: dict[int, int] = field(default_factory=dict)
    seen_counters: dict[int, int] = field(default_factory=dict)
    ambiguous_counters: dict[int, int] = field(default_factory=dict)
    ambiguous: int = 0

    def ack(self, line: str) -> None:
        parts = line.split()
        if not parts or parts[0] == "READY":
            return
        if parts[0] == "B":
            self.batches[parts[1]] = int(parts[2])
        elif parts[0] == "T":
            self.transfers.add(parts[1])
        elif parts[0] == "C":
            k, v = int(parts[1]), int(parts[2])
            self.counters[k] = max(self.counters.get(k, 0), v)
        elif parts[0] == "A":  # outcome unknown: may be there (whole) or not
            self.ambiguous += 1
            if len(parts) > 2:
                k = int(parts[2])
                self.ambiguous_counters[k] = self.ambiguous_counters.get(k, 0) + 1


def check_view(get: Callable[[bytes], bytes | None],
               scan: Callable[[bytes, bytes], list[tuple[bytes, bytes]]],
               model: Model, slack: int) -> list[str]:
    """Rules 1-4 of the module docstring over any store's reads.

    ``slack`` is how many increments per counter may have been in flight
    unacknowledged (threads, plus ambiguous outcomes).
    """
    problems: list[str] = []
    present: dict[str, int] = {}
    for key, _ in scan(b"batch/", b"batch0"):
        op_id = key.decode().split("/")[1]
        present[op_id] = present.get(op_id, 0) + 1
    declared = {k.decode().split("/")[1]: int(v) for k, v in scan(b"batchn/", b"batchn0")}
    for op_id, n in declared.items():
        if present.get(op_id, 0) != n:
            problems.append(f"batch {op_id}: {present.get(op_id, 0)} of {n} keys present")
    for op_id in present.keys() - declared.keys():
        problems.append(f"batch {op_id}: keys present without its batchn key")
    for op_id, n in model.batches.items():
        if declared.get(op_id) != n:
            problems.append(f"acknowledged batch {op_id} is missing")
    balances = [int(v) for _, v in scan(b"acct/", b"acct0")]
    if balances and (len(balances) != ACCOUNTS or sum(balances) != ACCOUNTS * OPENING_BALANCE):
        problems.append(f"accounts: {len(balances)} accounts summing to {sum(balances)}")
    for op_id in model.transfers:
        if get(f"xfer/{op_id}".encode()) is None:
            problems.append(f"acknowledged transfer {op_id} is missing")
    for k in range(COUNTERS):
        v = int(get(b"ctr/%d" % k) or 0)
        acked = model.counters.get(k, 0)
        if not acked <= v <= acked + slack + model.ambiguous_counters.get(k, 0):
            problems.append(f"counter {k} = {v}, acknowledged up to {acked}")
        if v < model.seen_counters.get(k, 0):
            problems.append(f"counter {k} went back from {model.seen_counters[k]} to {v}")
        model.seen_counters[k] = v
        model.counters[k] = max(acked, v)  # an unacked increment that survived is now fact
    model.ambiguous_counters.clear()
    return problems


def check_store(path: str, model: Model, threads: int) -> list[str]:
    """Reopen the engine store and check it, including ``verify()``."""
    with engine.open(path, **_WORKER_OPTIONS) as db:
        problems = check_view(db.get, lambda lo, hi: list(db.scan(lo, hi)), model, threads)
        report = db.verify()
        problems.extend(report.problems)
    return problems


def check_cluster(path: str, model: Model, threads: int) -> list[str]:
    """Reopen the whole cluster; check through the store, then replica agreement and verify()."""
    from replication import Cluster
    from replication.checker import check_replica_agreement

    with Cluster.open(path, 3, engine=_WORKER_OPTIONS, request_timeout_s=10.0) as cluster:
        store = cluster.store()

        def scan(lo: bytes, hi: bytes) -> list[tuple[bytes, bytes]]:
            with store.transaction(read_only=True) as tx:
                return [(k.encode(), v.encode()) for k, v in tx.scan(lo.decode(), hi.decode())]

        problems = check_view(lambda k: _b(store.get(k.decode())), scan, model, threads)
        if not cluster.wait_converged(30):
            problems.append("replicas did not converge after the restart")
        problems += check_replica_agreement(cluster)
        for node in cluster.nodes:
            if node.engine is not None:
                problems += node.engine.verify().problems
    return problems


# ---------------------------------------------------------------------- driver


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    """Move the worker's acknowledgement lines into ``lines``; ``None`` marks its death."""
    if stream is not None:
        for line in stream:
            lines.put(line.strip())
    lines.put(None)


@dataclass
class Tally:
    kills: int = 0
    acks: int = 0
    violations: list[str] = field(default_factory=list)


def run_engine(path: str, *, seed: int, duration: float, kill_interval: float,
               threads: int = 4, max_kills: int | None = None,
               log: Callable[[str], None] = print, target: str = "engine") -> Tally:
    """Kill-and-check loop against one store directory; stops at the first violation."""
    rng = random.Random(seed)
    model = Model()
    tally = Tally()
    deadline = time.monotonic() + duration
    run = 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    while time.monotonic() < deadline and (max_kills is None or tally.kills < max_kills):
        run += 1
        sync = rng.choice(["always", "always", "none"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.crash", "--worker", target, path,
             str(rng.randrange(1 << 30)), str(run), str(threads), sync],
            stdout=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        first = lines.get(timeout=60)
        if first != "READY":
            proc.kill()
            proc.wait()
            tally.violations.append(f"run {run}: worker did not start ({first!r})")
            break
        time.sleep(rng.uniform(0, kill_interval))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join()
        n = 0
        while (line := lines.get()) is not None:
            model.ack(line)
            n += 1
        tally.kills += 1
        tally.acks += n
        problems = (check_cluster if target == "cluster" else check_store)(path, model, threads)
        log(f"kill {tally.kills:4d}: {n:5d} acks this run, {tally.acks:7d} total, "
            f"{'sync=' + sync if target == 'engine' else f'{model.ambiguous} ambiguous'}, "
            f"{'OK' if not problems else 'VIOLATION'}")
        if problems:
            tally.violations = problems
            break
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench crash",
        description="Crash-recovery torture test: SIGKILL a writer at random moments and "
                    "check that every acknowledged write survived, whole.")
    parser.add_argument("--target", choices=["engine", "cluster"], default="engine",
                        help="engine: a process using one store; cluster: a process running a "
                             "3-node cluster that also crashes and restarts single nodes")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds to keep killing (default 60)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; printed so that a failure can be replayed")
    parser.add_argument("--kill-interval", type=float, default=0.3,
                        help="a worker is killed a uniform random time in [0, this] seconds "
                             "after it is ready (default 0.3)")
    parser.add_argument("--threads", type=int, default=4,
                        help="writer threads in the worker (default 4)")
    parser.add_argument("--dir", default=None,
                        help="store directory (default: a new temporary directory)")
    parser.add_argument("--worker", nargs=6,
                        metavar=("TARGET", "PATH", "SEED", "RUN", "THREADS", "SYNC"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        wtarget, path, wseed, wrun, wthreads, wsync = args.worker
        _worker(wtarget, path, int(wseed), int(wrun), int(wthreads), wsync)
        return 0
    if args.duration <= 0 or args.kill_interval <= 0 or args.threads < 1:
        parser.error("--duration and --kill-interval must be positive, --threads >= 1")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"bench crash: target={args.target} seed={seed} duration={args.duration}s")
    scratch = args.dir is None  # a directory we made is ours to remove
    path = args.dir or tempfile.mkdtemp(prefix="stratakv-crash-")
    print(f"data directory: {path}" + (" (removed if the run passes)" if scratch else ""),
          flush=True)
    try:
        tally = run_engine(path, seed=seed, duration=args.duration, target=args.target,
                           kill_interval=args.kill_interval, threads=args.threads)
    except BaseException:
        print(f"interrupted; kept {path}", file=sys.stderr)
        raise
    if tally.violations:
        print(f"FAILED after {tally.kills} kills; reproduce with --seed {seed}")
        for v in tally.violations[:20]:
            print(f"  {v}")
        inspect = "python -m replication stats" if args.target == "cluster" else \
            "python -m engine verify"
        print(f"kept {path} for inspection ({inspect} {path})")
        return 1
    print(f"PASSED: {tally.kills} kills survived, {tally.acks} acknowledged operations "
          f"checked, 0 violations (seed {seed})")
    if scratch:
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
