"""Randomised multi-threaded transaction workloads whose recorded histories are checked.

* Random read/write transactions record what every read saw (values name their
  writer) and are checked with ``tests.checkers.check_serializable``.
* Bank transfers keep the total constant in every snapshot and at the end.
* Doctors on call never leave a shift empty (write skew must be prevented).

Each operation sleeps ``THINK_S`` so transactions overlap under the GIL. Every
test prints its seed; ``STRATAKV_SEED=...`` replays the random choices (the
thread interleaving itself is not reproducible).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

import engine
from engine.fs import MemFS
from tests.checkers import CommittedTxn, check_serializable

T = TypeVar("T")

THINK_S = 0.0002
SEQ_SCALE = 1_000_000  # commit_seq of a writer = sequence * SEQ_SCALE; see _commit_seq


def think() -> None:
    time.sleep(THINK_S)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``n`` threads; re-raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,), name=f"worker-{i}") for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


# -- (a) random transactions checked for serializability -------------------------------------


@dataclass
class Attempt:
    """What one attempt of a transaction did."""

    txn_id: str
    reads: dict[bytes, str | None] = field(default_factory=dict)
    seen: dict[bytes, bytes | None] = field(default_factory=dict)
    writes: dict[bytes, bytes] = field(default_factory=dict)


class History:
    """Thread-safe record of committed and aborted attempts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed: list[CommittedTxn] = []
        self.aborted: list[str] = []
        self._offsets = itertools.count(1)

    def commit_seq(self, tx: engine.Transaction) -> int:
        """Position of a committed transaction in the checker's version order.

        Writers are ordered by their commit sequence. A transaction that wrote nothing
        (read-only, or read-write that chose no write) has no sequence; it reads at
        ``snapshot_sequence`` s and, if it serializes at its snapshot, sits right
        after the last commit with sequence <= s. Since several such transactions may
        share s, each gets s * SEQ_SCALE + a unique offset (the obvious 2s+1 would
        collide). The checker derives its edges from the reads and the writers' order
        only, so any unique number is sound for a transaction without writes.
        """
        if tx.sequence is not None:
            return tx.sequence * SEQ_SCALE
        with self.lock:
            offset = next(self._offsets)
        assert offset < SEQ_SCALE
        return tx.snapshot_sequence * SEQ_SCALE + offset

    def add_committed(self, attempt: Attempt, tx: engine.Transaction) -> None:
        txn = CommittedTxn(attempt.txn_id, self.commit_seq(tx), tuple(attempt.reads.items()),
                           tuple(attempt.writes))
        with self.lock:
            self.committed.append(txn)

    def add_aborted(self, attempt: Attempt) -> None:
        with self.lock:
            self.aborted.append(attempt.txn_id)


KEYS = [b"k%02d" % i for i in range(20)]


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


Body = Callable[[engine.Transaction, Attempt], None]


def random_body(rng: random.Random, read_only: bool) -> Body:
    """A random transaction: gets, scans and (unless read-only) puts over ``KEYS``."""
    plan: list[tuple[str, bytes, bytes]] = []
    for _ in range(rng.randint(2, 6)):
        r = rng.random()
        if r < 0.15:
            lo, hi = sorted(rng.sample(KEYS, 2))
            plan.append(("scan", lo, hi))
        elif r < 0.6 or read_only:
            plan.append(("get", rng.choice(KEYS), b""))
        else:
            plan.append(("put", rng.choice(KEYS), b""))

    def body(tx: engine.Transaction, attempt: Attempt) -> None:
        def saw(key: bytes, value: bytes | None) -> None:
            if key in attempt.writes:  # own write overlays the snapshot
                assert value == attempt.writes[key], f"{attempt.txn_id} lost own write"
                return
            if key in attempt.seen:  # repeatable read from the snapshot
                assert attempt.seen[key] == value, (
                    f"{attempt.txn_id} read {key!r} twice: {attempt.seen[key]!r}, {value!r}")
                return
            attempt.seen[key] = value
            attempt.reads[key] = _decode(value)

        for op, a, b in plan:
            think()
            if op == "get":
                saw(a, tx.get(a))
            elif op == "scan":
                found = dict(tx.scan(a, b))
                assert all(a <= k < b for k in found)
                for key in KEYS:
                    if a <= key < b:
                        saw(key, found.get(key))
            else:
                value = attempt.txn_id.encode()
                tx.put(a, value)
                attempt.writes[a] = value

    return body


def check_history(db: engine.Engine, history: History) -> None:
    """The recorded history is serializable and the store ends in its final versions."""
    result = check_serializable(history.committed, history.aborted)
    assert result.ok, f"not serializable: cycle={result.cycle} anomalies={result.anomalies[:5]}"
    last: dict[bytes, tuple[int, str]] = {}
    for txn in history.committed:
        for key in txn.writes:
            if key not in last or last[key][0] < txn.commit_seq:
                last[key] = (txn.commit_seq, txn.txn_id)
    for key in KEYS:
        want = last.get(key)
        assert _decode(db.get(key)) == (want[1] if want else None), key


def commit_with_run_transaction(db: engine.Engine, history: History, body: Body, prefix: str,
                                read_only: bool) -> None:
    """Run ``body`` through db.run_transaction; every attempt but the last one aborted."""
    holder: list[tuple[Attempt, engine.Transaction]] = []

    def fn(tx: engine.Transaction) -> None:
        if holder:
            history.add_aborted(holder[-1][0])
        attempt = Attempt(f"{prefix}.{len(holder)}")
        holder.append((attempt, tx))
        body(tx, attempt)

    db.run_transaction(fn, max_retries=10_000, backoff_base=0.0002, backoff_max=0.002,
                       read_only=read_only)
    attempt, tx = holder[-1]
    history.add_committed(attempt, tx)


def commit_with_retry_loop(db: engine.Engine, history: History, body: Body, prefix: str,
                           read_only: bool) -> None:
    """Run ``body`` with a hand-written retry loop."""
    for n in itertools.count():
        attempt = Attempt(f"{prefix}.{n}")
        tx = db.begin(read_only=read_only)
        try:
            body(tx, attempt)
            tx.commit()
        except engine.SerializationFailure:
            tx.rollback()
            history.add_aborted(attempt)
            continue
        history.add_committed(attempt, tx)
        return


def random_workload(isolation: str, seed: int, threads: int, per_thread: int,
                    **options: object) -> History:
    """Run random transactions from ``threads`` threads, then check the recorded history."""
    db = engine.open("/db", fs=MemFS(), isolation=isolation, sync="none", **options)
    history = History()

    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        run = commit_with_run_transaction if w % 2 else commit_with_retry_loop
        for n in range(per_thread):
            read_only = rng.random() < 0.2
            run(db, history, random_body(rng, read_only), f"t{w}.{n}", read_only)

    try:
        run_threads(threads, worker)
        assert len(history.committed) == threads * per_thread
        check_history(db, history)
        stats = db.stats()
        assert stats["txn_commits"] == threads * per_thread
        assert sum(stats["txn_aborts"].values()) == len(history.aborted)
        assert set(stats["certifier"].values()) == {0}
    finally:
        db.close()
    return history


@pytest.mark.parametrize(("isolation", "threads", "per_thread"),
                         [("ssi", 16, 250), ("occ", 8, 250)])
def test_random_transactions_are_serializable(isolation: str, threads: int, per_thread: int,
                                              seed: int) -> None:
    """Thousands of concurrent random transactions form a serializable history (Adya DSG)."""
    history = random_workload(isolation, seed, threads, per_thread)
    assert history.aborted, "no conflicts: the workload did not exercise the certifier"


def test_random_transactions_serializable_across_flushes(seed: int) -> None:
    """Snapshot reads stay serializable while tiny memtables flush and compact underneath."""
    random_workload("ssi", seed, 8, 150, memtable_bytes=4096, target_file_bytes=4096,
                    level_base_bytes=16384, block_bytes=512)


# -- (b) bank transfers ----------------------------------------------------------------------


def test_bank_transfers_keep_the_total(seed: int) -> None:
    """Concurrent transfers between 30 accounts keep the sum constant in every snapshot read."""
    accounts = [b"acct/%02d" % i for i in range(30)]
    initial = 100
    total = initial * len(accounts)
    db = engine.open("/db", fs=MemFS(), sync="none")
    with db.transaction() as tx:
        for a in accounts:
            tx.put(a, b"%d" % initial)
    audits: list[int] = []
    transfers = 0
    lock = threading.Lock()

    def transfer(rng: random.Random) -> Callable[[engine.Transaction], bool]:
        src, dst = rng.sample(accounts, 2)
        amount = rng.randint(1, 40)

        def fn(tx: engine.Transaction) -> bool:
            think()
            a = int(tx.get(src) or b"0")
            think()
            b = int(tx.get(dst) or b"0")
            if a < amount:
                return False
            think()
            tx.put(src, b"%d" % (a - amount))
            tx.put(dst, b"%d" % (b + amount))
            return True

        return fn

    def audit(tx: engine.Transaction) -> int:
        if len(audits) % 2:
            balances = [int(v) for _, v in tx.scan(b"acct/", b"acct0")]
            assert len(balances) == len(accounts)
        else:
            balances = []
            for a in accounts:
                if len(balances) % 8 == 0:
                    think()
                balances.append(int(tx.get(a) or b"0"))
        assert min(balances) >= 0, "overdraft"
        return sum(balances)

    def worker(w: int) -> None:
        nonlocal transfers
        rng = random.Random(seed * 1000 + w)
        for _ in range(200):
            if w < 2 and rng.random() < 0.5:
                seen = db.run_transaction(audit, read_only=True, max_retries=10_000,
                                          backoff_base=0.0002, backoff_max=0.002)
                with lock:
                    audits.append(seen)
            elif db.run_transaction(transfer(rng), max_retries=10_000, backoff_base=0.0002,
                                    backoff_max=0.002):
                with lock:
                    transfers += 1

    try:
        run_threads(10, worker)
        assert audits and all(s == total for s in audits), f"sums seen: {set(audits)}"
        final = [int(v) for _, v in db.scan(b"acct/", b"acct0")]
        assert sum(final) == total and min(final) >= 0
        assert transfers > 0
    finally:
        db.close()


# -- (c) doctors on call ---------------------------------------------------------------------


def test_doctors_on_call_never_all_off(seed: int) -> None:
    """Doctors leave a shift only if another stays; concurrently, a shift never ends up empty."""
    shifts = [b"shift%d/" % s for s in range(6)]
    doctors = {s: [s + b"doc%d" % d for d in range(2)] for s in shifts}
    db = engine.open("/db", fs=MemFS(), sync="none")
    with db.transaction() as tx:
        for s in shifts:
            for d in doctors[s]:
                tx.put(d, b"on")
    empty_seen: list[str] = []
    went_off = 0
    lock = threading.Lock()

    def on_call(tx: engine.Transaction, shift: bytes, by_scan: bool) -> list[bytes]:
        if by_scan:
            think()
            return [k for k, v in tx.scan(shift, shift[:-1] + b"0") if v == b"on"]
        on = []
        for d in doctors[shift]:
            think()
            if tx.get(d) == b"on":
                on.append(d)
        return on

    def go_off(shift: bytes, doctor: bytes, by_scan: bool
               ) -> Callable[[engine.Transaction], bool]:
        def fn(tx: engine.Transaction) -> bool:
            on = on_call(tx, shift, by_scan)
            if doctor not in on or len(on) < 2:
                return False
            think()
            tx.put(doctor, b"off")
            return True
        return fn

    def come_back(doctor: bytes) -> Callable[[engine.Transaction], None]:
        def fn(tx: engine.Transaction) -> None:
            think()
            if tx.get(doctor) == b"off":
                tx.put(doctor, b"on")
        return fn

    def audit(tx: engine.Transaction) -> list[bytes]:
        return [s for s in shifts if not on_call(tx, s, by_scan=True)]

    def retry(fn: Callable[[engine.Transaction], T], read_only: bool = False) -> T:
        return db.run_transaction(fn, read_only=read_only, max_retries=10_000,
                                  backoff_base=0.0002, backoff_max=0.002)

    def worker(w: int) -> None:
        nonlocal went_off
        rng = random.Random(seed * 1000 + w)
        for _ in range(150):
            shift = rng.choice(shifts[:3]) if rng.random() < 0.7 else rng.choice(shifts)
            doctor = rng.choice(doctors[shift])
            r = rng.random()
            if r < 0.1:
                empty = retry(audit, read_only=True)
                if empty:
                    with lock:
                        empty_seen.append(repr(empty))
            elif r < 0.6:
                if retry(go_off(shift, doctor, rng.random() < 0.5)):
                    with lock:
                        went_off += 1
            else:
                retry(come_back(doctor))

    try:
        run_threads(10, worker)
        assert not empty_seen, f"empty shifts seen by auditors: {empty_seen[:3]}"
        for s in shifts:
            assert any(db.get(d) == b"on" for d in doctors[s]), f"{s!r} has nobody on call"
        assert went_off > 0
        assert db.stats()["txn_aborts"].get("dangerous_structure", 0) > 0, (
            "no write skew was attempted: the workload did not overlap")
    finally:
        db.close()




def test_begin_waits_for_certified_commits_to_become_visible() -> None:
    """A transaction begun while an earlier commit waits for its fsync starts after it.

    So it cannot read around a certified commit (and conflict with it); the
    write-skew interleaving this once let through (see test_ssi's
    test_write_skew_with_a_pending_first_committer_is_prevented) cannot arise.
    """
    fs = engine.MemFS()
    db = engine.open("/db", fs=fs, sync="always")
    db.put(b"d0", b"on")
    db.put(b"d1", b"on")
    release = threading.Event()
    fs.set_fault(lambda op, path: release.wait(10) if op == "sync" else None)
    t1 = db.begin()
    t1.get(b"d0")
    t1.get(b"d1")
    t1.put(b"d0", b"off")
    c1 = threading.Thread(target=t1.commit)
    c1.start()
    while db.stats()["txn_commits"] == 0:  # T1 certified; its fsync is blocked
        time.sleep(0.001)
    began: list[engine.Transaction] = []
    b2 = threading.Thread(target=lambda: began.append(db.begin()))
    b2.start()
    time.sleep(0.05)
    assert not began, "begin() did not wait for the certified commit"
    release.set()
    c1.join()
    b2.join()
    fs.set_fault(None)
    t2 = began[0]
    assert (t2.get(b"d0"), t2.get(b"d1")) == (b"off", b"on")
    t2.rollback()
    db.close()
