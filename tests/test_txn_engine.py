"""The transaction API of the engine: lifecycle, own writes, retries, stats, durability, input."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import engine
from engine.fs import MemFS


@pytest.fixture(params=["ssi", "occ"])
def db(request: pytest.FixtureRequest) -> Iterator[engine.Engine]:
    """A fresh in-memory engine for each isolation level."""
    e = engine.open("/db", fs=MemFS(), isolation=request.param)
    yield e
    e.close()


@pytest.fixture
def ssi_db() -> Iterator[engine.Engine]:
    e = engine.open("/db", fs=MemFS())
    yield e
    e.close()


def certifier_idle(db: engine.Engine) -> bool:
    stats = db.stats()
    return set(stats["certifier"].values()) == {0} and stats["snapshots"] == 0


# -- lifecycle -------------------------------------------------------------------------------


def test_context_manager_commits_on_clean_exit(db: engine.Engine) -> None:
    """``with db.transaction()`` commits when the block ends normally."""
    with db.transaction() as tx:
        tx.put(b"a", b"1")
        tx.put(b"b", b"2")
        assert db.get(b"a") is None  # buffered until commit
    assert db.get(b"a") == b"1" and db.get(b"b") == b"2"
    assert tx.sequence == db.last_sequence
    assert db.stats()["txn_commits"] == 1
    assert certifier_idle(db)


def test_context_manager_rolls_back_on_exception(db: engine.Engine) -> None:
    """An exception inside ``with db.transaction()`` discards the writes and propagates."""
    db.put(b"a", b"old")
    before = db.last_sequence
    with pytest.raises(ZeroDivisionError), db.transaction() as tx:
        tx.put(b"a", b"new")
        tx.put(b"b", b"new")
        _ = 1 / 0
    assert db.get(b"a") == b"old" and db.get(b"b") is None
    assert db.last_sequence == before
    assert tx.sequence is None
    assert db.stats()["txn_commits"] == 0
    assert certifier_idle(db)
    with pytest.raises(engine.TransactionClosed):
        tx.get(b"a")


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_transaction_closed_after_it_ends(db: engine.Engine, end: str) -> None:
    """Every operation after commit or rollback raises TransactionClosed; rollback is a no-op."""
    tx = db.begin()
    tx.put(b"k", b"v")
    getattr(tx, end)()
    for op in (lambda: tx.get(b"k"), lambda: tx.put(b"k", b"v"), lambda: tx.delete(b"k"),
               lambda: tx.scan(), tx.commit):
        with pytest.raises(engine.TransactionClosed):
            op()
    tx.rollback()
    assert (db.get(b"k") == b"v") == (end == "commit")
    assert certifier_idle(db)


def test_transaction_closed_after_serialization_failure(db: engine.Engine) -> None:
    """A transaction whose commit failed is closed, and its snapshot and state are released."""
    t1, t2 = db.begin(), db.begin()
    t1.put(b"k", b"1")
    t2.put(b"k", b"2")
    t1.commit()
    with pytest.raises(engine.SerializationFailure) as exc:
        t2.commit()
    assert exc.value.reason == "write_write" and exc.value.retryable
    with pytest.raises(engine.TransactionClosed):
        t2.get(b"k")
    with pytest.raises(engine.TransactionClosed):
        t2.commit()
    t2.rollback()
    assert db.get(b"k") == b"1"
    assert certifier_idle(db)


def test_failure_during_a_read_closes_the_transaction(ssi_db: engine.Engine) -> None:
    """When SSI fails a transaction at a read, later operations raise TransactionClosed."""
    db = ssi_db
    db.put(b"x", b"0")
    db.put(b"y", b"0")
    pivot = db.begin()
    pivot.get(b"x")
    pivot.get(b"y")
    t_out = db.begin()
    t_out.put(b"y", b"1")
    t_out.commit()
    reader = db.begin(read_only=True)  # sees t_out
    pivot.put(b"x", b"1")
    pivot.commit()
    with pytest.raises(engine.SerializationFailure) as exc:
        reader.get(b"x")
    assert exc.value.reason == "dangerous_structure"
    with pytest.raises(engine.TransactionClosed):
        reader.get(b"y")
    assert certifier_idle(db)


def test_begin_after_close_fails() -> None:
    """Starting a transaction on a closed engine raises ClosedError."""
    db = engine.open("/db", fs=MemFS())
    db.close()
    with pytest.raises(engine.ClosedError):
        db.begin()


def test_sequence_and_snapshot_sequence(db: engine.Engine) -> None:
    """tx.sequence is the commit's sequence (None without writes); snapshot_sequence its view."""
    db.put(b"a", b"1")
    tx = db.begin()
    assert tx.snapshot_sequence == db.last_sequence
    db.put(b"b", b"1")
    tx.put(b"c", b"1")
    before_commit = tx.sequence
    assert before_commit is None
    tx.commit()
    assert tx.sequence == db.last_sequence == tx.snapshot_sequence + 2
    ro = db.begin(read_only=True)
    ro.get(b"a")
    ro.commit()
    assert ro.sequence is None
    empty = db.begin()
    empty.commit()
    assert empty.sequence is None and db.last_sequence == tx.sequence


# -- reads: snapshot plus own writes ---------------------------------------------------------


def test_reads_see_the_snapshot_not_later_commits(db: engine.Engine) -> None:
    """get and scan read the state as of begin, whatever commits meanwhile."""
    db.put(b"a", b"1")
    tx = db.begin(read_only=True)
    db.put(b"a", b"2")
    db.put(b"b", b"2")
    db.delete(b"a")
    assert tx.get(b"a") == b"1" and tx.get(b"b") is None
    assert list(tx.scan()) == [(b"a", b"1")]
    db.flush()
    assert tx.get(b"a") == b"1"
    assert list(tx.scan(reverse=True)) == [(b"a", b"1")]


def test_read_your_own_writes_in_get(db: engine.Engine) -> None:
    """get returns the transaction's own latest write, and None after its own delete."""
    db.put(b"k", b"committed")
    tx = db.begin()
    tx.put(b"k", b"mine")
    assert tx.get(b"k") == b"mine"
    tx.put(b"k", b"mine2")
    assert tx.get(b"k") == b"mine2"
    tx.delete(b"k")
    assert tx.get(b"k") is None
    tx.put(b"new", b"n")
    assert tx.get(b"new") == b"n"
    assert db.get(b"k") == b"committed"  # invisible to others
    tx.commit()
    assert db.get(b"k") is None and db.get(b"new") == b"n"


def test_scan_overlays_own_writes(db: engine.Engine) -> None:
    """scan merges own puts and deletes over the snapshot, forward and reverse, within bounds."""
    for k in (b"b", b"d", b"f", b"h"):
        db.put(k, b"snap-" + k)
    tx = db.begin()
    tx.put(b"a", b"own-a")  # before every snapshot key
    tx.put(b"d", b"own-d")  # overwrites a snapshot key
    tx.delete(b"f")  # hides a snapshot key
    tx.put(b"g", b"own-g")  # between snapshot keys
    tx.delete(b"x")  # deleting an absent key
    tx.put(b"z", b"own-z")  # after every snapshot key
    expected = [(b"a", b"own-a"), (b"b", b"snap-b"), (b"d", b"own-d"), (b"g", b"own-g"),
                (b"h", b"snap-h"), (b"z", b"own-z")]
    assert list(tx.scan()) == expected
    assert list(tx.scan(reverse=True)) == expected[::-1]
    assert list(tx.scan(b"c", b"h")) == [(b"d", b"own-d"), (b"g", b"own-g")]
    assert list(tx.scan(b"c", b"h", reverse=True)) == [(b"g", b"own-g"), (b"d", b"own-d")]
    assert list(tx.scan(b"f", b"g")) == []
    assert list(tx.scan(end=b"b")) == [(b"a", b"own-a")]
    assert list(tx.scan(start=b"y", reverse=True)) == [(b"z", b"own-z")]
    assert list(tx.scan(b"h", b"c")) == []


@pytest.mark.parametrize("seed", range(6))
def test_scan_overlay_matches_a_dict_model(db: engine.Engine, seed: int) -> None:
    """Randomised: scans over snapshot (memtable and tables) plus own writes equal a dict model."""
    rng = random.Random(seed)
    keys = [b"k%02d" % i for i in range(30)]
    model: dict[bytes, bytes] = {}
    for k in rng.sample(keys, 15):
        db.put(k, b"s" + k)
        model[k] = b"s" + k
    if seed % 2:
        db.flush()
    for k in rng.sample(keys, 5):
        db.delete(k)
        model.pop(k, None)
    tx = db.begin()
    db.put(keys[0], b"later")  # committed after the snapshot: never visible
    for _ in range(20):
        k = rng.choice(keys)
        if rng.random() < 0.4:
            tx.delete(k)
            model.pop(k, None)
        else:
            v = b"t%d" % rng.randrange(1000)
            tx.put(k, v)
            model[k] = v
    for _ in range(20):
        lo, hi = sorted(rng.sample([None, *keys, b"k99"], 2), key=lambda b: b or b"")
        reverse = rng.random() < 0.5
        want = sorted(((k, v) for k, v in model.items()
                       if (lo is None or k >= lo) and (hi is None or k < hi)), reverse=reverse)
        assert list(tx.scan(lo, hi, reverse=reverse)) == want, (lo, hi, reverse)
    for k in keys:
        assert tx.get(k) == model.get(k)
    tx.rollback()


# -- read-only transactions ------------------------------------------------------------------


def test_read_only_transaction_refuses_writes(db: engine.Engine) -> None:
    """put and delete in a read-only transaction raise InvalidArgument and buffer nothing."""
    db.put(b"k", b"v")
    with db.transaction(read_only=True) as tx:
        assert tx.read_only
        with pytest.raises(engine.InvalidArgument):
            tx.put(b"k", b"w")
        with pytest.raises(engine.InvalidArgument):
            tx.delete(b"k")
        assert tx.get(b"k") == b"v"
        assert list(tx.scan()) == [(b"k", b"v")]
    assert db.get(b"k") == b"v" and tx.sequence is None
    assert db.stats()["txn_commits"] == 1


# -- run_transaction -------------------------------------------------------------------------



def test_run_transaction_retries_then_reraises(db: engine.Engine) -> None:
    """A body that always conflicts runs max_retries + 1 times, then the failure propagates."""
    calls: list[engine.Transaction] = []

    def body(tx: engine.Transaction) -> None:
        calls.append(tx)
        tx.get(b"k")
        db.put(b"k", b"from outside")  # commits after tx's snapshot
        tx.put(b"k", b"from tx")

    with pytest.raises(engine.SerializationFailure) as exc:
        db.run_transaction(body, max_retries=3, backoff_base=0.0001)
    assert exc.value.reason == "write_write"
    assert len(calls) == 4 and len({id(t) for t in calls}) == 4
    assert db.get(b"k") == b"from outside"
    stats = db.stats()
    assert stats["txn_aborts"].get("write_write") == 4 and stats["txn_commits"] == 0
    assert certifier_idle(db)


def test_run_transaction_returns_after_transient_conflicts(db: engine.Engine) -> None:
    """Conflicts in the first attempts are retried; the result of the committed one returns."""
    attempts = 0

    def body(tx: engine.Transaction) -> int:
        nonlocal attempts
        attempts += 1
        n = int(tx.get(b"n") or b"0")
        if attempts <= 2:
            db.put(b"n", b"%d" % (n + 10))
        tx.put(b"n", b"%d" % (n + 1))
        return n + 1

    assert db.run_transaction(body, backoff_base=0.0001) == 21
    assert attempts == 3 and db.get(b"n") == b"21"
    assert db.stats()["txn_commits"] == 1


def test_run_transaction_other_errors_propagate_at_once(db: engine.Engine) -> None:
    """A non-serialization error is not retried, and the attempt's writes are discarded."""
    calls = 0

    def body(tx: engine.Transaction) -> None:
        nonlocal calls
        calls += 1
        tx.put(b"k", b"v")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        db.run_transaction(body)
    assert calls == 1 and db.get(b"k") is None
    assert certifier_idle(db)


def test_run_transaction_read_only(db: engine.Engine) -> None:
    """run_transaction(read_only=True) hands the body a read-only transaction."""
    db.put(b"k", b"v")

    def body(tx: engine.Transaction) -> bytes | None:
        assert tx.read_only
        with pytest.raises(engine.InvalidArgument):
            tx.put(b"k", b"w")
        return tx.get(b"k")

    assert db.run_transaction(body, read_only=True) == b"v"


# -- stats -----------------------------------------------------------------------------------


def test_stats_count_commits_and_aborts_by_reason() -> None:
    """stats() counts commits and each abort reason (write_write, dangerous_structure, ...)."""
    db = engine.open("/db", fs=MemFS())
    try:
        for _ in range(3):
            with db.transaction() as tx:
                tx.put(b"c", b"1")
        t1, t2 = db.begin(), db.begin()
        t1.put(b"k", b"1")
        t2.put(b"k", b"2")
        t1.commit()
        with pytest.raises(engine.SerializationFailure):
            t2.commit()
        a, b = db.begin(), db.begin()
        for t in (a, b):
            t.get(b"alice")
            t.get(b"bob")
        a.put(b"alice", b"off")
        b.put(b"bob", b"off")
        a.commit()
        with pytest.raises(engine.SerializationFailure):
            b.commit()
        db.begin().rollback()
        stats = db.stats()
        assert stats["txn_commits"] == 5
        assert stats["txn_aborts"]["write_write"] == 1
        assert stats["txn_aborts"]["dangerous_structure"] == 1
    finally:
        db.close()
    occ = engine.open("/db", fs=MemFS(), isolation="occ")
    try:
        r = occ.begin()
        r.get(b"x")
        occ.put(b"x", b"1")
        r.put(b"y", b"1")
        with pytest.raises(engine.SerializationFailure):
            r.commit()
        assert occ.stats()["txn_aborts"]["stale_read"] == 1
        assert occ.stats()["txn_commits"] == 0
    finally:
        occ.close()


def test_too_old_transaction_fails_and_is_counted() -> None:
    """A transaction older than max_txn_age fails with too_old; begin() expires it."""
    db = engine.open("/db", fs=MemFS(), max_txn_age_s=0.3)
    try:
        old = db.begin()
        stale = db.begin()
        time.sleep(0.35)
        young = db.begin()  # expires both older ones
        assert db.stats()["certifier"]["active"] == 1
        with pytest.raises(engine.SerializationFailure) as exc:
            old.get(b"k")
        assert exc.value.reason == "too_old"
        with pytest.raises(engine.SerializationFailure) as exc:
            stale.commit()
        assert exc.value.reason == "too_old"
        young.put(b"k", b"v")
        young.commit()
        assert db.stats()["txn_aborts"]["too_old"] == 2
        assert certifier_idle(db)
    finally:
        db.close()


# -- conflicts with plain writes -------------------------------------------------------------


def test_plain_batch_conflicts_with_transaction(db: engine.Engine) -> None:
    """A write batch committed after a transaction's snapshot makes its write of the key fail."""
    tx = db.begin()
    with db.batch() as b:
        b.put(b"k", b"batch")
        b.put(b"other", b"batch")
    tx.put(b"k", b"tx")
    with pytest.raises(engine.SerializationFailure) as exc:
        tx.commit()
    assert exc.value.reason == "write_write"
    assert db.get(b"k") == b"batch"


# -- durability and atomicity ----------------------------------------------------------------


def test_transaction_is_one_batch_that_survives_reopen() -> None:
    """All writes of a commit share one sequence and are all there after close and reopen."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    db.put(b"k000", b"old")
    db.put(b"gone", b"old")
    before = db.last_sequence
    with db.transaction() as tx:
        for i in range(200):
            tx.put(b"k%03d" % i, b"v%d" % i)
        tx.delete(b"gone")
    assert tx.sequence == db.last_sequence == before + 1
    db.close()
    with engine.open("/db", fs=fs) as again:
        assert again.last_sequence == before + 1
        assert again.get(b"gone") is None
        assert [v for _, v in again.scan(b"k", b"l")] == [b"v%d" % i for i in range(200)]


def test_committed_transaction_survives_power_failure() -> None:
    """A commit is on stable storage when it returns: a crash image right after holds it all."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    with db.transaction() as tx:
        for i in range(50):
            tx.put(b"k%02d" % i, b"v")
    image = fs.crash_clone()
    db.close()
    with engine.open("/db", fs=image) as rec:
        assert len(list(rec.scan())) == 50


def test_no_transaction_is_half_there_after_a_crash() -> None:
    """Crash images taken while transactions commit hold each one wholly or not at all."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    stop = threading.Event()
    acked: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            tid = w * 100_000 + n
            with db.transaction() as tx:
                for part in range(4):
                    tx.put(b"t%d/%d" % (tid, part), b"x" * 50)
            with lock:
                acked.append(tid)
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    rng = random.Random(5)
    images = []
    try:
        for _ in range(4):
            stop.wait(0.01)
            with lock:
                acked_now = list(acked)
            images.append((fs.crash_clone(random.Random(rng.random())), acked_now))
    finally:
        stop.set()
        for th in threads:
            th.join()
        db.close()
    for image, acked_then in images:
        with engine.open("/db", fs=image) as rec:
            parts: dict[bytes, int] = {}
            for k, _ in rec.scan():
                tid = k.split(b"/")[0]
                parts[tid] = parts.get(tid, 0) + 1
            assert all(n == 4 for n in parts.values()), "a transaction is half there"
            assert all(b"t%d" % tid in parts for tid in acked_then), "an acked commit was lost"


def _failing_wal(op: str, path: str) -> None:
    if op in ("write", "sync") and path.endswith(".log"):
        raise OSError(5, "injected EIO")


def test_commit_failing_on_wal_error_writes_nothing_and_is_released() -> None:
    """A commit whose WAL write fails raises StorageError, is invisible, and is forgotten."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    try:
        db.put(b"a", b"1")
        tx = db.begin()
        tx.put(b"a", b"2")
        tx.put(b"b", b"2")
        fs.set_fault(_failing_wal)
        with pytest.raises(engine.StorageError):
            tx.commit()
        fs.set_fault(None)
        assert db.get(b"a") == b"1" and db.get(b"b") is None
        stats = db.stats()
        assert stats["txn_commits"] == 0 and stats["txn_rollbacks"]["storage_error"] == 1
        assert set(stats["txn_aborts"].values()) == {0}
        assert certifier_idle(db)
        with db.transaction(read_only=True) as ro:  # reads keep working
            assert ro.get(b"a") == b"1"
    finally:
        db.close()


def test_commit_refused_by_read_only_engine_releases_certifier_state() -> None:
    """A transaction whose commit is refused after a storage error leaves no certifier state."""
    # Fails today: the engine's commit path (_LocalTransactions.commit -> Engine._write ->
    # _enqueue) raises from _check_writable before certifying and never aborts the TxnState,
    # so the certifier keeps an ACTIVE transaction that nobody can end; it pins the state of
    # every later transaction until max_txn_age expires it.
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    try:
        t1, t2 = db.begin(), db.begin()
        t1.put(b"k", b"1")
        t2.put(b"j", b"2")
        fs.set_fault(_failing_wal)
        with pytest.raises(engine.StorageError):
            t1.commit()
        fs.set_fault(None)
        with pytest.raises(engine.StorageError):
            t2.commit()  # the engine is read-only now
        with pytest.raises(engine.TransactionClosed):
            t2.commit()
        assert db.stats()["certifier"]["active"] == 0, "t2's state leaked"
        with db.transaction(read_only=True) as ro:
            ro.get(b"k")
        assert db.stats()["certifier"] == dict.fromkeys(db.stats()["certifier"], 0)
    finally:
        db.close()


def test_rolled_back_transaction_leaves_nothing() -> None:
    """A rolled-back transaction writes nothing: no data, no sequence, not after reopen either."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    db.put(b"a", b"1")
    before = db.last_sequence
    tx = db.begin()
    for i in range(20):
        tx.put(b"r%02d" % i, b"v")
    tx.delete(b"a")
    tx.rollback()
    assert db.last_sequence == before and db.get(b"a") == b"1"
    db.close()
    with engine.open("/db", fs=fs) as again:
        assert again.last_sequence == before
        assert list(again.scan()) == [(b"a", b"1")]


# -- bad input -------------------------------------------------------------------------------


def test_type_errors_raise_before_anything_is_buffered(db: engine.Engine) -> None:
    """Non-bytes keys or values raise TypeError and leave the transaction's buffer untouched."""
    tx = db.begin()
    bad_calls: list[Callable[[], object]] = [
        lambda: tx.put("k", b"v"),  # type: ignore[arg-type]
        lambda: tx.put(b"k", "v"),  # type: ignore[arg-type]
        lambda: tx.put(b"k", None),  # type: ignore[arg-type]
        lambda: tx.delete(1),  # type: ignore[arg-type]
        lambda: tx.get("k"),  # type: ignore[arg-type]
        lambda: tx.scan("a", b"z"),  # type: ignore[arg-type]
        lambda: tx.scan(b"a", 5),  # type: ignore[arg-type]
    ]
    for call in bad_calls:
        with pytest.raises(TypeError):
            call()
    assert tx.get(b"k") is None
    assert list(tx.scan()) == []
    tx.commit()
    assert tx.sequence is None
    assert db.get(b"k") is None and db.last_sequence == 0


def test_oversized_input_raises_before_anything_is_buffered() -> None:
    """Too-large keys, values or batches raise InvalidArgument and keep the buffer as it was."""
    db = engine.open("/db", fs=MemFS(), max_key_bytes=8, max_value_bytes=16,
                     max_batch_bytes=64)
    try:
        tx = db.begin()
        tx.put(b"a", b"1")
        with pytest.raises(engine.InvalidArgument):
            tx.put(b"k" * 9, b"v")
        with pytest.raises(engine.InvalidArgument):
            tx.put(b"b", b"v" * 17)
        with pytest.raises(engine.InvalidArgument):
            tx.get(b"k" * 9)
        for i in range(4):
            tx.put(b"c%d" % i, b"v" * 10)
        with pytest.raises(engine.InvalidArgument):
            tx.put(b"overflow", b"v" * 16)  # the batch would exceed max_batch_bytes
        assert [k for k, _ in tx.scan()] == [b"a", b"c0", b"c1", b"c2", b"c3"]
        tx.commit()
        assert [k for k, _ in db.scan()] == [b"a", b"c0", b"c1", b"c2", b"c3"]
    finally:
        db.close()


def test_bytes_like_keys_and_values_are_copied(db: engine.Engine) -> None:
    """bytearray and memoryview arguments work and later mutation does not leak in."""
    key, value = bytearray(b"key"), bytearray(b"value")
    with db.transaction() as tx:
        tx.put(key, memoryview(value))
        key[0] = value[0] = ord("X")
        assert tx.get(b"key") == b"value"
    assert db.get(b"key") == b"value"
