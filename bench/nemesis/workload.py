"""A nemesis client process: threads of register ops and list-append transactions, recorded.

``python -m bench.nemesis.workload --endpoints E0,E1,.. --client C --threads T --seed S
--until T_MONOTONIC --out FILE`` runs until the given ``time.monotonic()``
instant (system-wide on Linux, so the runner and every client share one
clock) or SIGTERM, then writes one JSON object per line to ``FILE``: every
register operation (``{"type": "reg", ...}``) and every transaction attempt
(``{"type": "txn", ...}``, :class:`bench.nemesis.check.Attempt`) with its
invocation and completion times and outcome. The endpoints are the
client's own proxy links, node ``i`` at position ``i`` (``by_id``).

Workloads (half the threads each, at least one):

* registers ``r0..r7``: put (a value unique to the run), get, delete;
  with ``--follower-reads`` a get first asks a random node directly (a
  correct node that does not lead answers not-leader; then the normal get
  runs) -- what exposes a node that serves reads without ReadIndex;
* list-append on ``l0..l5``: read two or three keys, append the
  transaction's id to one or two of them (values are space-separated
  ids); some transactions are read-only.

Outcomes: ``ok``; ``fail`` (the store said it certainly did not happen:
Unavailable, NotLeader, SerializationFailure); ``unknown`` (AmbiguousCommit
or an unexpected error: it may have happened).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from typing import Any

from bench.nemesis.check import NOT_COMMITTED, Attempt
from replication.client import RemoteStore, RemoteTransaction, parse_endpoints
from replication.errors import AmbiguousCommit, NotLeader, Unavailable

__all__ = ["LIST_KEYS", "REGISTER_KEYS", "main"]

REGISTER_KEYS = [f"r{i}" for i in range(8)]
LIST_KEYS = [f"l{i}" for i in range(6)]


class Recorder:
    """The process's history, appended to by every thread."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records.append(record)


def register_thread(store: RemoteStore, name: str, rng: random.Random, rec: Recorder,
                    running: threading.Event, follower_reads: bool) -> None:
    n = 0
    while running.is_set():
        key = rng.choice(REGISTER_KEYS)
        r = rng.random()
        kind = "get" if r < 0.5 else "put" if r < 0.92 else "delete"
        value: str | None = f"{name}-{n}" if kind == "put" else None
        n += 1
        invoke = time.monotonic()
        outcome, error = "ok", ""
        try:
            if kind == "get":
                value = follower_get(store, key, rng) if follower_reads else store.get(key)
            elif kind == "put":
                assert value is not None
                store.put(key, value)
            else:
                store.delete(key)
        except AmbiguousCommit:
            outcome = "unknown"
        except NOT_COMMITTED as exc:
            outcome, error = "fail", type(exc).__name__
        except Exception as exc:
            outcome, error = "unknown", f"{type(exc).__name__}: {exc}"
        complete = time.monotonic()
        rec.add({"type": "reg", "client": name, "kind": kind, "key": key, "value": value,
                 "invoke": invoke, "complete": complete, "outcome": outcome, "error": error})


def follower_get(store: RemoteStore, key: str, rng: random.Random) -> str | None:
    """Ask a random node directly first; on not-leader (a correct follower) the normal get."""
    address = rng.choice(store.endpoints)
    try:
        value = store.call_node(address, "get", {"key": key})
    except (NotLeader, Unavailable, OSError):
        return store.get(key)
    return None if value is None else str(value)


def txn_thread(store: RemoteStore, name: str, rng: random.Random, rec: Recorder,
               running: threading.Event) -> None:
    n = 0
    while running.is_set():
        attempt = Attempt(f"{name}-{n}", rng.random() < 0.25, time.monotonic())
        n += 1
        attempt.record(lambda: run_append(store, attempt, rng))  # noqa: B023 (called at once)
        rec.add({"type": "txn", **attempt.to_json()})


def run_append(store: RemoteStore, attempt: Attempt, rng: random.Random) -> None:
    """Read some list keys; unless read-only, append ``attempt.txn_id`` to one or two."""
    tx: RemoteTransaction = store.transaction(read_only=attempt.read_only)
    try:
        attempt.snapshot = tx.snapshot_sequence
        for key in rng.sample(LIST_KEYS, 3 if attempt.read_only else 2):
            attempt.reads[key.encode()] = tx.get(key)
        if not attempt.read_only:
            for k in rng.sample(sorted(attempt.reads), rng.choice((1, 2))):
                old = attempt.reads[k]
                tx.put(k.decode(), attempt.txn_id if old is None else f"{old} {attempt.txn_id}")
                attempt.writes.append(k)
        tx.commit()
    except BaseException:
        tx.rollback()
        raise
    attempt.sequence = tx.sequence


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nemesis.workload")
    p.add_argument("--endpoints", required=True)
    p.add_argument("--client", type=int, required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--until", type=float, required=True, help="time.monotonic() to stop at")
    p.add_argument("--out", required=True)
    p.add_argument("--timeout", type=float, default=4.0)
    p.add_argument("--follower-reads", action="store_true")
    args = p.parse_args(argv)
    running = threading.Event()
    running.set()
    signal.signal(signal.SIGTERM, lambda *_: running.clear())
    rec = Recorder()
    store = RemoteStore(parse_endpoints(args.endpoints), timeout=args.timeout,
                        attempt_timeout=1.0, by_id=True)
    threads = []
    registers = max(1, args.threads // 2)
    for t in range(max(2, args.threads)):
        name = f"c{args.client}.{t}"
        rng = random.Random(args.seed * 1000 + args.client * 100 + t)
        if t < registers:
            threads.append(threading.Thread(
                target=register_thread, args=(store, name, rng, rec, running,
                                              args.follower_reads), daemon=True))
        else:
            threads.append(threading.Thread(target=txn_thread,
                                            args=(store, name, rng, rec, running), daemon=True))
    for th in threads:
        th.start()
    while running.is_set() and time.monotonic() < args.until:
        time.sleep(0.05)
    running.clear()
    for th in threads:
        th.join(args.timeout * 3 + 5)
    stuck = sum(th.is_alive() for th in threads)
    with rec.lock, open(args.out, "w") as f:
        for r in rec.records:
            f.write(json.dumps(r) + "\n")
    store.close()
    if stuck:
        print(f"client {args.client}: {stuck} threads never returned", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
