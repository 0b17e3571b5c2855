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
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from engine import Transaction

ACCOUNTS = 16
OPENING_BALANCE = 1000
COUNTERS = 8

_WORKER_OPTIONS = dict(memtable_bytes=64 * 1024, block_bytes=1024, target_file_bytes=16 * 1024,
                       level_base_bytes=64 * 1024, l0_compaction_trigger=2)


# ---------------------------------------------------------------------- worker


def _transfer(tx: Transaction, *, src: int, dst: int, amount: int, op_id: str) -> None:
    """Move ``amount`` between two accounts if covered; journal the transfer either way."""
    a = int(tx.get(b"acct/%02d" % src) or 0)
    b = int(tx.get(b"acct/%02d" % dst) or 0)
    if a >= amount:
        tx.put(b"acct/%02d" % src, b"%d" % (a - amount))
        tx.put(b"acct/%02d" % dst, b"%d" % (b + amount))
    tx.put(f"xfer/{op_id}".encode(), b"1")


def _increment(tx: Transaction, *, k: int) -> int:
    v = int(tx.get(b"ctr/%d" % k) or 0) + 1
    tx.put(b"ctr/%d" % k, b"%d" % v)
    return v


def _worker(path: str, seed: int, run: int, threads: int, sync: str) -> None:
    import engine

    db = engine.open(path, sync=sync, **_WORKER_OPTIONS)  # type: ignore[arg-type]
    out_lock = threading.Lock()

    def ack(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    if db.get(b"acct/00") is None:
        with db.batch() as b:
            for a in range(ACCOUNTS):
                b.put(b"acct/%02d" % a, b"%d" % OPENING_BALANCE)
    ack("READY")

    def loop(tid: int) -> None:
        rng = random.Random(seed * 1000 + tid)
        i = 0
        while True:
            i += 1
            op_id = f"{run}.{tid}.{i}"
            r = rng.random()
            if r < 0.4:
                n = rng.randint(1, 6)
                with db.batch() as b:
                    for j in range(n):
                        b.put(f"batch/{op_id}/{j}".encode(), rng.randbytes(rng.randint(10, 200)))
                    b.put(f"batchn/{op_id}".encode(), b"%d" % n)
                ack(f"B {op_id} {n}")
            elif r < 0.7:
                src, dst = rng.sample(range(ACCOUNTS), 2)
                db.run_transaction(partial(_transfer, src=src, dst=dst,
                                           amount=rng.randint(1, 100), op_id=op_id),
                                   max_retries=1000)
                ack(f"T {op_id}")
            else:
                k = rng.randrange(COUNTERS)
                v = db.run_transaction(partial(_increment, k=k), max_retries=1000)
                ack(f"C {k} {v}")

    for t in range(threads):
        threading.Thread(target=loop, args=(t,), daemon=True).start()
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------- checker


@dataclass
class Model:
    """What the parent knows was acknowledged, across every run."""

    batches: dict[str, int] = field(default_factory=dict)
    transfers: set[str] = field(default_factory=set)
    counters: dict[int, int] = field(default_factory=dict)
    seen_counters: dict[int, int] = field(default_factory=dict)

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


def check_store(path: str, model: Model, threads: int) -> list[str]:
    """Reopen the store and return every violation of the module docstring's rules."""
    import engine

    problems: list[str] = []
    with engine.open(path, **_WORKER_OPTIONS) as db:  # type: ignore[arg-type]
        present: dict[str, int] = {}
        for key, _ in db.scan(b"batch/", b"batch0"):
            op_id = key.decode().split("/")[1]
            present[op_id] = present.get(op_id, 0) + 1
        declared = {k.decode().split("/")[1]: int(v) for k, v in db.scan(b"batchn/", b"batchn0")}
        for op_id, n in declared.items():
            if present.get(op_id, 0) != n:
                problems.append(f"batch {op_id}: {present.get(op_id, 0)} of {n} keys present")
        for op_id in present.keys() - declared.keys():
            problems.append(f"batch {op_id}: keys present without its batchn key")
        for op_id, n in model.batches.items():
            if declared.get(op_id) != n:
                problems.append(f"acknowledged batch {op_id} is missing")
        balances = [int(v) for _, v in db.scan(b"acct/", b"acct0")]
        if balances and (len(balances) != ACCOUNTS
                         or sum(balances) != ACCOUNTS * OPENING_BALANCE):
            problems.append(f"accounts: {len(balances)} accounts summing to {sum(balances)}")
        for op_id in model.transfers:
            if db.get(f"xfer/{op_id}".encode()) is None:
                problems.append(f"acknowledged transfer {op_id} is missing")
        for k in range(COUNTERS):
            v = int(db.get(b"ctr/%d" % k) or 0)
            acked = model.counters.get(k, 0)
            if not acked <= v <= acked + threads:
                problems.append(f"counter {k} = {v}, acknowledged up to {acked}")
            if v < model.seen_counters.get(k, 0):
                problems.append(f"counter {k} went back from {model.seen_counters[k]} to {v}")
            model.seen_counters[k] = v
            model.counters[k] = max(acked, v)  # an unacked increment that survived is now fact
        report = db.verify()
        if not report.ok:
            problems.extend(report.problems)
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
               log: Callable[[str], None] = print) -> Tally:
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
            [sys.executable, "-m", "bench.crash", "--worker", path, str(rng.randrange(1 << 30)),
             str(run), str(threads), sync],
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
        problems = check_store(path, model, threads)
        log(f"kill {tally.kills:4d}: {n:5d} acks this run, {tally.acks:7d} total, "
            f"sync={sync}, {'OK' if not problems else 'VIOLATION'}")
        if problems:
            tally.violations = problems
            break
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench crash",
        description="Crash-recovery torture test: SIGKILL a writer at random moments and "
                    "check that every acknowledged write survived, whole.")
    parser.add_argument("--target", choices=["engine"], default="engine",
                        help="what to crash: a single engine process")
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
    parser.add_argument("--worker", nargs=5, metavar=("PATH", "SEED", "RUN", "THREADS", "SYNC"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        path, wseed, wrun, wthreads, wsync = args.worker
        _worker(path, int(wseed), int(wrun), int(wthreads), wsync)
        return 0
    if args.duration <= 0 or args.kill_interval <= 0 or args.threads < 1:
        parser.error("--duration and --kill-interval must be positive, --threads >= 1")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"bench crash: target={args.target} seed={seed} duration={args.duration}s")
    path = args.dir or tempfile.mkdtemp(prefix="stratakv-crash-")
    tally = run_engine(path, seed=seed, duration=args.duration,
                       kill_interval=args.kill_interval, threads=args.threads)
    if tally.violations:
        print(f"FAILED after {tally.kills} kills; reproduce with --seed {seed}")
        for v in tally.violations[:20]:
            print(f"  {v}")
        return 1
    print(f"PASSED: {tally.kills} kills survived, {tally.acks} acknowledged operations "
          f"checked, 0 violations (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
