"""``python -m bench crash``: kill a writer with SIGKILL at random moments, check every ack.

A *worker* process opens a store and runs random work from several threads
(thread ``t``, operation ``i`` of run ``r`` has the id ``r.t.i``), writing
one report line per operation *after* it returned:

* ``B <id> <slot> <n>``  a batch that rewrote slot ``<slot>`` of its thread:
  keys ``batch/<t>/<slot>/<j>`` for ``j < n`` (values start with the id),
  the slot's other keys deleted, and ``batchn/<t>/<slot>`` = ``<id> <n>``;
* ``T <id>``             a transfer transaction between two of the
  ``ACCOUNTS`` accounts that also sets the thread's journal ``xfer/<t>`` to
  the id;
* ``C <id> <k> <v>``     a read-increment-write transaction took counter
  ``k`` to ``v``;
* ``A <id> <kind> <where>`` (cluster only) the outcome is unknown
  (AmbiguousCommit): it may or may not be there -- whole; ``U <id>`` it
  failed with ``Unavailable`` and is not there.

Workers overwrite a bounded key space, so the store stays small however
long the run, and every check reads the *whole* store: the cost of a kill
does not grow with the kills before it.

The parent reads the reports through a pipe, kills the worker, reopens the
store itself, and checks:

1. every batch slot is whole: exactly the ``n`` keys its ``batchn`` key
   names, each written by that batch -- no batch is partly there;
2. every slot and journal holds its last acknowledged operation, or a later
   one of the same thread that was still in flight (at most one per thread:
   it ran after the thread's last report) or ambiguous -- nothing
   acknowledged is lost, nothing reappears from an earlier run;
3. the accounts always sum to ``ACCOUNTS * OPENING_BALANCE``;
4. each counter is at least its highest acknowledged value, at most that plus
   the number of worker threads (one unacknowledged increment in flight per
   thread), and never goes backwards across kills;
5. ``verify()`` finds nothing wrong.

What a check finds becomes the known state for the next run. The first
violation stops the run with exit status 1 and the seed that reproduces it.
Options are tiny so that flushes and compactions run all the time and kills
land in the middle of them.

Workers are forked from the parent, which has already imported the engine
(and, for the cluster target, ``replication``): a kill costs a fork, the
store's recovery and the check, not a fresh interpreter's imports, which
is what brings the loop past 3 kills a second on two cores. The parent runs
no thread of its own when it forks (the pipe reader of the previous run has
been joined and the checked store closed). Each worker is a separate
process killed with a real ``SIGKILL``.

``--target cluster`` runs the same work through a 3-node
:class:`replication.KeyValueStore` whose worker also crashes and restarts
single nodes (the leader included) while it runs; the parent kills the whole
process and reopens the cluster. Replica engines keep no WAL of their own, so
this is what proves that the consensus log alone brings back every
acknowledged transaction.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import engine
from replication import AmbiguousCommit, Unavailable

ACCOUNTS = 16
OPENING_BALANCE = 1000
COUNTERS = 8
SLOTS = 16  # batch slots per worker thread
BATCH_KEYS = 6  # a batch writes 1..BATCH_KEYS keys of its slot and deletes the others

_WORKER_OPTIONS: dict[str, Any] = {
    "memtable_bytes": 64 * 1024, "block_bytes": 1024, "target_file_bytes": 16 * 1024,
    "level_base_bytes": 64 * 1024, "l0_compaction_trigger": 2,
}


# ---------------------------------------------------------------------- worker


class _Ops(Protocol):
    """The three kinds of work, over an engine or a cluster."""

    def batch(self, puts: dict[str, str], deletes: list[str]) -> None: ...
    def transfer(self, src: int, dst: int, amount: int, journal: str, op_id: str) -> None: ...
    def increment(self, k: int) -> int: ...


class _EngineOps:
    def __init__(self, db: engine.Engine) -> None:
        self.db = db
        if db.get(b"acct/00") is None:
            with db.batch() as b:
                for a in range(ACCOUNTS):
                    b.put(b"acct/%02d" % a, b"%d" % OPENING_BALANCE)

    def batch(self, puts: dict[str, str], deletes: list[str]) -> None:
        with self.db.batch() as b:
            for k, v in puts.items():
                b.put(k.encode(), v.encode())
            for k in deletes:
                b.delete(k.encode())

    def transfer(self, src: int, dst: int, amount: int, journal: str, op_id: str) -> None:
        def body(tx: engine.Transaction) -> None:
            _transfer(tx.get, tx.put, src, dst, amount, journal, op_id)
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

    def batch(self, puts: dict[str, str], deletes: list[str]) -> None:
        def body(tx: Any) -> None:
            for k, v in puts.items():
                tx.put(k, v)
            for k in deletes:
                tx.delete(k)
        self.store.run_transaction(body, max_retries=1000)

    def transfer(self, src: int, dst: int, amount: int, journal: str, op_id: str) -> None:
        def body(tx: Any) -> None:
            _transfer(lambda k: _b(tx.get(k.decode())), lambda k, v: tx.put(k.decode(),
                      v.decode()), src, dst, amount, journal, op_id)
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
              src: int, dst: int, amount: int, journal: str, op_id: str) -> None:
    """Move ``amount`` between two accounts if covered; journal the transfer either way."""
    a = int(get(b"acct/%02d" % src) or 0)
    b = int(get(b"acct/%02d" % dst) or 0)
    if a >= amount:
        put(b"acct/%02d" % src, b"%d" % (a - amount))
        put(b"acct/%02d" % dst, b"%d" % (b + amount))
    put(journal.encode(), op_id.encode())


def _increment(get: Callable[[bytes], bytes | None], put: Callable[[bytes, bytes], None],
               k: int) -> int:
    v = int(get(b"ctr/%d" % k) or 0) + 1
    put(b"ctr/%d" % k, b"%d" % v)
    return v


def _worker(target: str, path: str, seed: int, run: int, threads: int, sync: str,
            out: IO[str]) -> None:
    """Run random work from ``threads`` threads, writing one line per report to ``out``.

    Never returns: the parent kills the process.
    """
    out_lock = threading.Lock()

    def report(line: str) -> None:
        with out_lock:
            out.write(line + "\n")
            out.flush()

    ops: _Ops
    cluster = None
    if target == "cluster":
        from replication import Cluster

        cluster = Cluster.open(path, 3, engine=_WORKER_OPTIONS, request_timeout_s=5.0)
        ops = _ClusterOps(cluster.store())
    else:
        ops = _EngineOps(engine.open(path, sync=sync, **_WORKER_OPTIONS))
    report("READY")

    def loop(tid: int) -> None:
        rng = random.Random(seed * 1000 + tid)
        i = 0
        while True:
            i += 1
            op_id = f"{run}.{tid}.{i}"
            r = rng.random()
            try:
                if r < 0.4:
                    kind, where = "B", rng.randrange(SLOTS)
                    n = rng.randint(1, BATCH_KEYS)
                    base = f"{tid}/{where:02d}"
                    puts = {f"batch/{base}/{j}":
                            f"{op_id}:{rng.randbytes(rng.randint(2, 50)).hex()}"
                            for j in range(n)}
                    puts[f"batchn/{base}"] = f"{op_id} {n}"
                    ops.batch(puts, [f"batch/{base}/{j}" for j in range(n, BATCH_KEYS)])
                    report(f"B {op_id} {where} {n}")
                elif r < 0.7:
                    kind, where = "T", tid
                    src, dst = rng.sample(range(ACCOUNTS), 2)
                    ops.transfer(src, dst, rng.randint(1, 100), f"xfer/{tid}", op_id)
                    report(f"T {op_id}")
                else:
                    kind, where = "C", rng.randrange(COUNTERS)
                    report(f"C {op_id} {where} {ops.increment(where)}")
            except AmbiguousCommit:
                report(f"A {op_id} {kind} {where}")
            except Unavailable:
                report(f"U {op_id}")
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
class Known:
    """What one batch slot or journal key may hold: its known state, or an ambiguous later one."""

    certain: str | None = None  # the last acknowledged (or checked) operation id; None: empty
    maybe: set[str] = field(default_factory=set)  # ambiguous operations since


def _op(op_id: str) -> tuple[int, int, int]:
    run, tid, i = op_id.split(".")
    return int(run), int(tid), int(i)


@dataclass
class Model:
    """What the parent knows was acknowledged, across every run."""

    slots: dict[tuple[int, int], Known] = field(default_factory=dict)  # (thread, slot)
    journals: dict[int, Known] = field(default_factory=dict)  # thread -> xfer/<thread>
    counters: dict[int, int] = field(default_factory=dict)
    seen_counters: dict[int, int] = field(default_factory=dict)
    ambiguous_counters: dict[int, int] = field(default_factory=dict)
    ambiguous: int = 0
    run: int = 0
    reported: dict[int, int] = field(default_factory=dict)  # this run: thread -> last i reported

    def begin_run(self, run: int) -> None:
        self.run = run
        self.reported = {}

    def ack(self, line: str) -> None:
        parts = line.split()
        if not parts or parts[0] == "READY":
            return
        op_id = parts[1]
        run, tid, i = _op(op_id)
        if run == self.run:
            self.reported[tid] = max(self.reported.get(tid, 0), i)
        if parts[0] == "B":
            self.slots[tid, int(parts[2])] = Known(op_id)
        elif parts[0] == "T":
            self.journals[tid] = Known(op_id)
        elif parts[0] == "C":
            k, v = int(parts[2]), int(parts[3])
            self.counters[k] = max(self.counters.get(k, 0), v)
        elif parts[0] == "A":  # outcome unknown: may be there (whole) or not
            self.ambiguous += 1
            kind, where = parts[2], int(parts[3])
            if kind == "B":
                self.slots.setdefault((tid, where), Known()).maybe.add(op_id)
            elif kind == "T":
                self.journals.setdefault(tid, Known()).maybe.add(op_id)
            else:
                self.ambiguous_counters[where] = self.ambiguous_counters.get(where, 0) + 1

    def in_flight(self, op_id: str) -> bool:
        """Whether ``op_id`` may have been running unreported when this run's worker died."""
        run, tid, i = _op(op_id)
        return run == self.run and i > self.reported.get(tid, 0)

    def settle(self, what: str, known: Known, stored: str | None) -> list[str]:
        """Check ``stored`` against ``known``, then make it the known state."""
        problems = []
        if stored != known.certain and stored not in known.maybe and not (
                stored is not None and self.in_flight(stored)):
            if stored is None:
                problems.append(f"acknowledged {what} {known.certain} is missing")
            elif known.certain is None:
                problems.append(f"{what} {stored} was never acknowledged nor in flight")
            else:
                problems.append(f"acknowledged {what} {known.certain} is lost: holds {stored}")
        known.certain, known.maybe = stored, set()
        return problems


def check_view(get: Callable[[bytes], bytes | None],
               scan: Callable[[bytes, bytes], list[tuple[bytes, bytes]]],
               model: Model, slack: int) -> list[str]:
    """Rules 1-4 of the module docstring over any store's reads.

    ``slack`` is how many increments per counter may have been in flight
    unacknowledged (threads, plus ambiguous outcomes).
    """
    problems: list[str] = []
    written: dict[tuple[int, int], dict[int, str]] = {}
    for key, value in scan(b"batch/", b"batch0"):
        _, t, s, j = key.decode().split("/")
        written.setdefault((int(t), int(s)), {})[int(j)] = value.decode().split(":")[0]
    heads: dict[tuple[int, int], tuple[str, int]] = {}
    for key, value in scan(b"batchn/", b"batchn0"):
        _, t, s = key.decode().split("/")
        head_id, count = value.decode().split()
        heads[int(t), int(s)] = (head_id, int(count))
    for slot, (op_id, n) in sorted(heads.items()):
        got = written.get(slot, {})
        if sorted(got) != list(range(n)) or set(got.values()) != {op_id}:
            mine = sum(1 for j, v in got.items() if v == op_id and j < n)
            problems.append(f"batch {op_id}: {mine} of {n} keys present"
                            + (f", and {len(got) - mine} of other batches" if len(got) > mine
                               else ""))
    for tid, slot_no in sorted(written.keys() - heads.keys()):
        problems.append(f"batch slot {tid}/{slot_no}: keys present without its batchn key")
    for slot in sorted(model.slots.keys() | heads.keys()):
        problems += model.settle("batch", model.slots.setdefault(slot, Known()),
                                 heads[slot][0] if slot in heads else None)
    journals = {int(k.decode().split("/")[1]): v.decode() for k, v in scan(b"xfer/", b"xfer0")}
    for tid in sorted(model.journals.keys() | journals.keys()):
        problems += model.settle("transfer", model.journals.setdefault(tid, Known()),
                                 journals.get(tid))
    balances = [int(v) for _, v in scan(b"acct/", b"acct0")]
    if balances and (len(balances) != ACCOUNTS or sum(balances) != ACCOUNTS * OPENING_BALANCE):
        problems.append(f"accounts: {len(balances)} accounts summing to {sum(balances)}")
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


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Move the worker's report lines into ``lines``; ``None`` marks its death."""
    with stream:
        for line in stream:
            lines.put(line.strip())
    lines.put(None)


def fork_worker(target: str, path: str, seed: int, run: int, threads: int,
                sync: str) -> tuple[int, IO[str]]:
    """Fork a worker from this process (its imports already done); return (pid, report pipe).

    The child never returns into the caller's code: it leaves through
    ``os._exit``, so no ``finally`` or ``atexit`` of the parent runs twice.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; killed, so coverage never sees it end
        status = 1
        try:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it, no traceback
            _worker(target, path, seed, run, threads, sync,
                    os.fdopen(write_fd, "w", encoding="utf-8"))
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, os.fdopen(read_fd, encoding="utf-8")


@dataclass
class Tally:
    kills: int = 0
    acks: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def kills_per_s(self) -> float:
        return self.kills / self.seconds if self.seconds else 0.0


def run_engine(path: str, *, seed: int, duration: float, kill_interval: float,
               threads: int = 4, max_kills: int | None = None,
               log: Callable[[str], None] = print, target: str = "engine") -> Tally:
    """Kill-and-check loop against one store directory; stops at the first violation."""
    rng = random.Random(seed)
    model = Model()
    tally = Tally()
    started = time.monotonic()
    deadline = started + duration
    check = check_cluster if target == "cluster" else check_store
    run = 0
    while time.monotonic() < deadline and (max_kills is None or tally.kills < max_kills):
        run += 1
        sync = rng.choice(["always", "always", "none"])
        model.begin_run(run)
        pid, stream = fork_worker(target, path, rng.randrange(1 << 30), run, threads, sync)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(stream, lines), daemon=True)
        reader.start()
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            first = "nothing in 60 s"
        if first != "READY":
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            tally.violations.append(f"run {run}: worker did not start ({first!r})")
            break
        time.sleep(rng.uniform(0, kill_interval))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reader.join()
        n = 0
        while (line := lines.get()) is not None:
            model.ack(line)
            n += 1
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            tally.violations.append(f"run {run}: the worker died before the kill "
                                    f"(wait status {status})")
            break
        tally.kills += 1
        tally.acks += n
        problems = check(path, model, threads)
        log(f"kill {tally.kills:4d}: {n:5d} acks this run, {tally.acks:7d} total, "
            f"{'sync=' + sync if target == 'engine' else f'{model.ambiguous} ambiguous'}, "
            f"{'OK' if not problems else 'VIOLATION'}")
        if problems:
            tally.violations = problems
            break
    tally.seconds = time.monotonic() - started
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
    args = parser.parse_args(argv)
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
    rate = f"{tally.kills} kills in {tally.seconds:.0f} s ({tally.kills_per_s:.2f} kills/s)"
    if tally.violations:
        print(f"FAILED after {rate}; reproduce with --seed {seed}")
        for v in tally.violations[:20]:
            print(f"  {v}")
        inspect = "python -m replication stats" if args.target == "cluster" else \
            "python -m engine verify"
        print(f"kept {path} for inspection ({inspect} {path})")
        return 1
    print(f"PASSED: {rate} survived, {tally.acks} acknowledged operations checked, "
          f"0 violations (seed {seed})")
    if scratch:
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
