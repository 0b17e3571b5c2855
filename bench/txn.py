"""``python -m bench txn``: serializable transactions, SSI against OCC, abort rates.

Four workloads (the SSI issue's, chosen to be comparable with PostgreSQL's
SERIALIZABLE level on the same machine):

* ``bank``        100 accounts of 1,000; read two random accounts, move 1-100
                  from one to the other if covered. Invariant: the sum.
* ``read-mostly`` read 10 random keys of 10,000, then read-increment-write
                  one random key.
* ``write-skew``  50 groups of two doctors on call; pick a doctor: an 'off'
                  doctor goes back 'on'; an 'on' one goes 'off' only if both
                  are 'on'. Invariant: never both off.
* ``hot-spot``    10 counters; read-increment-write one. Invariant: the
                  counters sum to the number of commits.

An aborted transaction is retried with the same parameters, so
``abort rate = aborts / attempts``. Each read and write is followed by
``--op-delay-ms`` of think time (a network round trip): in one Python process
tiny transactions would otherwise hardly overlap and any abort rate would look
good. The mean duration of an attempt is reported beside every rate.

``--memory SECONDS`` instead runs the read-mostly workload continuously and
samples the certifier's tracked state every few seconds, to show it stays flat.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import engine

__all__ = ["WORKLOADS", "TxnResult", "run_workload"]

Body = Callable[[engine.Transaction], None]


def _acct(i: int) -> bytes:
    return b"acct/%03d" % i


class _Delayed:
    """A transaction view that sleeps after every operation (think time)."""

    def __init__(self, tx: engine.Transaction, delay: float) -> None:
        self._tx = tx
        self._delay = delay

    def get(self, key: bytes) -> bytes | None:
        v = self._tx.get(key)
        if self._delay:
            time.sleep(self._delay)
        return v

    def put(self, key: bytes, value: bytes) -> None:
        self._tx.put(key, value)
        if self._delay:
            time.sleep(self._delay)


@dataclass(frozen=True)
class Workload:
    name: str
    setup: Callable[[engine.Engine], None]
    plan: Callable[[random.Random], Callable[[_Delayed], None]]
    check: Callable[[engine.Engine, int], str | None]  # (db, commits) -> problem or None


# -- bank ---------------------------------------------------------------------------------


def _bank_setup(db: engine.Engine) -> None:
    with db.batch() as b:
        for i in range(100):
            b.put(_acct(i), b"1000")


def _bank_plan(rng: random.Random) -> Callable[[_Delayed], None]:
    src, dst = rng.sample(range(100), 2)
    amount = rng.randint(1, 100)

    def body(tx: _Delayed) -> None:
        a = int(tx.get(_acct(src)) or 0)
        b = int(tx.get(_acct(dst)) or 0)
        if a >= amount:
            tx.put(_acct(src), b"%d" % (a - amount))
            tx.put(_acct(dst), b"%d" % (b + amount))
    return body


def _bank_check(db: engine.Engine, commits: int) -> str | None:
    total = sum(int(v) for _, v in db.scan(b"acct/", b"acct0"))
    return None if total == 100_000 else f"accounts sum to {total}, not 100000"


# -- read-mostly -------------------------------------------------------------------------


def _rm_setup(db: engine.Engine) -> None:
    for start in range(0, 10_000, 1000):
        with db.batch() as b:
            for i in range(start, start + 1000):
                b.put(b"item/%05d" % i, b"0")


def _rm_plan(rng: random.Random) -> Callable[[_Delayed], None]:
    reads = [rng.randrange(10_000) for _ in range(10)]
    target = rng.randrange(10_000)

    def body(tx: _Delayed) -> None:
        for i in reads:
            tx.get(b"item/%05d" % i)
        v = int(tx.get(b"item/%05d" % target) or 0)
        tx.put(b"item/%05d" % target, b"%d" % (v + 1))
    return body


def _rm_check(db: engine.Engine, commits: int) -> str | None:
    total = sum(int(v) for _, v in db.scan(b"item/", b"item0"))
    return None if total == commits else f"increments sum to {total}, {commits} committed"


# -- write skew --------------------------------------------------------------------------


def _ws_setup(db: engine.Engine) -> None:
    with db.batch() as b:
        for g in range(50):
            for d in range(2):
                b.put(b"doc/%02d/%d" % (g, d), b"on")


def _ws_plan(rng: random.Random) -> Callable[[_Delayed], None]:
    group, me = rng.randrange(50), rng.randrange(2)

    def body(tx: _Delayed) -> None:
        mine = tx.get(b"doc/%02d/%d" % (group, me))
        other = tx.get(b"doc/%02d/%d" % (group, 1 - me))
        if mine == b"off":
            tx.put(b"doc/%02d/%d" % (group, me), b"on")
        elif other == b"on":
            tx.put(b"doc/%02d/%d" % (group, me), b"off")
    return body


def _ws_check(db: engine.Engine, commits: int) -> str | None:
    for g in range(50):
        if (db.get(b"doc/%02d/0" % g), db.get(b"doc/%02d/1" % g)) == (b"off", b"off"):
            return f"group {g}: both doctors off"
    return None


# -- hot spot ----------------------------------------------------------------------------


def _hs_setup(db: engine.Engine) -> None:
    with db.batch() as b:
        for i in range(10):
            b.put(b"ctr/%d" % i, b"0")


def _hs_plan(rng: random.Random) -> Callable[[_Delayed], None]:
    k = rng.randrange(10)

    def body(tx: _Delayed) -> None:
        v = int(tx.get(b"ctr/%d" % k) or 0)
        tx.put(b"ctr/%d" % k, b"%d" % (v + 1))
    return body


def _hs_check(db: engine.Engine, commits: int) -> str | None:
    total = sum(int(v) for _, v in db.scan(b"ctr/", b"ctr0"))
    return None if total == commits else f"counters sum to {total}, {commits} committed"


WORKLOADS = {w.name: w for w in [
    Workload("bank", _bank_setup, _bank_plan, _bank_check),
    Workload("read-mostly", _rm_setup, _rm_plan, _rm_check),
    Workload("write-skew", _ws_setup, _ws_plan, _ws_check),
    Workload("hot-spot", _hs_setup, _hs_plan, _hs_check),
]}


# -- running -----------------------------------------------------------------------------


@dataclass
class TxnResult:
    workload: str
    isolation: str
    threads: int
    sync: str
    op_delay_ms: float
    commits: int = 0
    attempts: int = 0
    aborts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    mean_attempt_ms: float = 0.0
    p50_commit_ms: float = 0.0
    p99_commit_ms: float = 0.0
    invariant: str = "ok"
    commit_latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def abort_rate(self) -> float:
        return (self.attempts - self.commits) / self.attempts if self.attempts else 0.0

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds if self.seconds else 0.0


def run_workload(name: str, isolation: str, threads: int, txns: int, *, sync: str = "always",
                 op_delay_ms: float = 0.2, seed: int = 42, path: str | None = None
                 ) -> TxnResult:
    """Run ``txns`` committed transactions of workload ``name`` from ``threads`` threads."""
    w = WORKLOADS[name]
    path = path or tempfile.mkdtemp(prefix=f"stratakv-txn-{name}-")
    db = engine.open(path, sync=sync, isolation=isolation)
    w.setup(db)
    delay = op_delay_ms / 1000
    per_thread = [txns // threads + (1 if t < txns % threads else 0) for t in range(threads)]
    lock = threading.Lock()
    aborts: Counter[str] = Counter()
    attempt_times: list[float] = []
    commit_latencies: list[float] = []
    counts = {"commits": 0, "attempts": 0}

    def client(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        local_aborts: Counter[str] = Counter()
        times: list[float] = []
        latencies: list[float] = []
        attempts = 0
        for _ in range(per_thread[t]):
            body = w.plan(rng)  # same parameters on every retry
            started = time.perf_counter()
            retry = 0
            while True:
                attempts += 1
                a0 = time.perf_counter()
                tx = db.begin()
                try:
                    body(_Delayed(tx, delay))
                    tx.commit()
                except engine.SerializationFailure as exc:
                    tx.rollback()
                    local_aborts[exc.reason] += 1
                    times.append(time.perf_counter() - a0)
                    retry += 1
                    time.sleep(random.uniform(0, min(0.01, 0.0005 * 2 ** retry)))
                    continue
                times.append(time.perf_counter() - a0)
                latencies.append(time.perf_counter() - started)
                break
        with lock:
            aborts.update(local_aborts)
            attempt_times.extend(times)
            commit_latencies.extend(latencies)
            counts["commits"] += per_thread[t]
            counts["attempts"] += attempts

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    seconds = time.perf_counter() - t0
    problem = w.check(db, counts["commits"])
    db.close()
    lat = sorted(commit_latencies)
    return TxnResult(
        name, isolation, threads, sync, op_delay_ms, counts["commits"], counts["attempts"],
        dict(aborts), seconds,
        statistics.mean(attempt_times) * 1000 if attempt_times else 0.0,
        lat[len(lat) // 2] * 1000 if lat else 0.0,
        lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else 0.0,
        problem or "ok", [x * 1000 for x in lat])


def txn_workload(name: str, isolation: str) -> Callable[[Any, Any], Any]:
    """The benchmark-suite form: 16 threads, 0.2 ms think time, durable, 3,000 commits."""
    def run(make: Any, cfg: Any) -> Any:
        from bench.workloads import Measurement

        r = run_workload(name, isolation, 16, cfg.n(3000), sync="always", op_delay_ms=0.2,
                         seed=cfg.seed, path=cfg.path + "-txn")
        if r.invariant != "ok":
            raise RuntimeError(f"{name}/{isolation}: invariant broken: {r.invariant}")
        return Measurement(r.commits, r.seconds, [ms * 1000 for ms in r.commit_latencies_ms],
                           extra={"abort_rate": round(r.abort_rate, 4), "aborts": r.aborts,
                                  "mean_attempt_ms": round(r.mean_attempt_ms, 2),
                                  "p99_commit_ms": round(r.p99_commit_ms, 1)})
    return run


def memory_run(seconds: float, threads: int, op_delay_ms: float, sample_every: float = 10.0
               ) -> list[dict[str, Any]]:
    """Continuous read-mostly transactions; sample the certifier's tracked state."""
    db = engine.open(tempfile.mkdtemp(prefix="stratakv-txn-memory-"), sync="none")
    _rm_setup(db)
    stop = threading.Event()
    commits = Counter[int]()

    def client(t: int) -> None:
        rng = random.Random(t)
        while not stop.is_set():
            body = _rm_plan(rng)

            def attempt(tx: engine.Transaction, body: Callable[[_Delayed], None] = body) -> None:
                body(_Delayed(tx, op_delay_ms / 1000))

            try:
                db.run_transaction(attempt)
                commits[t] += 1
            except engine.SerializationFailure:
                pass

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for th in workers:
        th.start()
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(sample_every)
        st = db.stats()
        samples.append({"t": round(time.monotonic() - t0), "commits": sum(commits.values()),
                        **st["certifier"]})
        print(f"  t={samples[-1]['t']:4d}s commits={samples[-1]['commits']:7d} "
              f"{st['certifier']}", flush=True)
    stop.set()
    for th in workers:
        th.join()
    db.close()
    return samples


def _table(results: list[TxnResult]) -> str:
    lines = ["| workload | isolation | threads | sync | commits/s | abort rate | aborts by reason "
             "| mean attempt ms | p99 commit ms | invariant |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.aborts.items())) or "-"
        lines.append(f"| {r.workload} | {r.isolation} | {r.threads} | {r.sync} | "
                     f"{r.commits_per_s:,.0f} | {r.abort_rate:.1%} | {reasons} | "
                     f"{r.mean_attempt_ms:.2f} | {r.p99_commit_ms:.1f} | {r.invariant} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench txn",
        description="SSI versus OCC on bank, read-mostly, write-skew and hot-spot workloads: "
                    "commits/s, abort rates by reason, invariants.")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated subset of: " + ", ".join(WORKLOADS))
    parser.add_argument("--isolation", default="ssi,occ", help="ssi, occ or both (default)")
    parser.add_argument("--threads", type=_ints, default=[1, 4, 16],
                        help="comma-separated thread counts (default 1,4,16)")
    parser.add_argument("--sync", default="always,none",
                        help="always, none or both (default): durable commits or not")
    parser.add_argument("--txns", type=int, default=3000,
                        help="committed transactions per configuration (default 3000)")
    parser.add_argument("--op-delay-ms", type=float, default=0.2,
                        help="think time after every read and write (default 0.2 ms)")
    parser.add_argument("--memory", type=float, default=0, metavar="SECONDS",
                        help="instead: run read-mostly for SECONDS and sample certifier state")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    if unknown := set(names) - set(WORKLOADS):
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    isolations = args.isolation.split(",")
    if set(isolations) - {"ssi", "occ"}:
        parser.error("--isolation takes ssi, occ or ssi,occ")
    syncs = args.sync.split(",")
    if set(syncs) - {"always", "none"}:
        parser.error("--sync takes always, none or always,none")
    if args.txns < 1 or args.op_delay_ms < 0:
        parser.error("--txns must be >= 1 and --op-delay-ms >= 0")
    if args.memory:
        samples = memory_run(args.memory, max(args.threads), args.op_delay_ms)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(samples, f, indent=2)
        return 0
    results = []
    for sync in syncs:
        for name in names:
            for threads in args.threads:
                for iso in isolations:
                    r = run_workload(name, iso, threads, args.txns, sync=sync,
                                     op_delay_ms=args.op_delay_ms)
                    print(f"{name:12} {iso} {threads:3d} threads sync={sync:6}: "
                          f"{r.commits_per_s:8,.0f} commits/s, abort rate {r.abort_rate:6.1%}, "
                          f"mean attempt {r.mean_attempt_ms:.2f} ms, invariant {r.invariant}",
                          flush=True)
                    results.append(r)
    print()
    print(_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**asdict(r), "abort_rate": r.abort_rate} for r in results], f, indent=2)
    return 0 if all(r.invariant == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
