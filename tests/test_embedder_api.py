"""What embedders expect (issue 17): multi_get, prefix scans, per-write sync, read-only open."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

import engine
from engine.fs import FileSystem, MemFS
from engine.ssi import TxnState

SMALL = {"memtable_bytes": 4096, "block_bytes": 256, "target_file_bytes": 2048,
         "level_base_bytes": 4096, "l0_compaction_trigger": 2}


@pytest.fixture(params=["ssi", "occ"])
def txn_db(request: pytest.FixtureRequest) -> Iterator[engine.Engine]:
    e = engine.open("/db", fs=MemFS(), isolation=request.param)
    yield e
    e.close()


def _fill_every_source(db: engine.Engine, rng: random.Random, model: dict[bytes, bytes]
                       ) -> None:
    """Writes that leave versions in levels, L0, immutable memtables and the memtable."""
    keys = [b"k%03d" % i for i in range(300)]
    for round_ in range(4):
        for _ in range(400):
            k = rng.choice(keys)
            if rng.random() < 0.2:
                db.delete(k)
                model.pop(k, None)
            else:
                v = b"%d-" % round_ + rng.randbytes(rng.randrange(40))
                db.put(k, v)
                model[k] = v
        if round_ == 1:
            db.compact()
        elif round_ == 2:
            db.flush()


# ---------------------------------------------------------------------- multi_get


def test_multi_get_equals_a_loop_of_get(fs_path: tuple[FileSystem, str], seed: int) -> None:
    """Values from every source, tombstones, overwrites, duplicates and absent keys, in order."""
    fs, path = fs_path
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    with engine.open(path, fs=fs, **SMALL) as db:
        _fill_every_source(db, rng, model)
        stats = db.stats()
        assert sum(lv["files"] for lv in stats["levels"]) > 1
        for _ in range(50):
            keys = [rng.choice([b"k%03d" % rng.randrange(320), b"", b"\xff", b"k"])
                    for _ in range(rng.randrange(0, 60))]
            got = db.multi_get(keys)
            assert got == [db.get(k) for k in keys] == [model.get(k) for k in keys]
        assert db.multi_get([]) == []
        assert db.multi_get(iter([b"k001", b"k001"])) == [model.get(b"k001")] * 2
        assert db.multi_get([bytearray(b"k002"), memoryview(b"k003")]) == [
            model.get(b"k002"), model.get(b"k003")]


def test_multi_get_reads_one_consistent_state(fs_path: tuple[FileSystem, str]) -> None:
    """Keys always written together in one batch are never seen from two different batches."""
    fs, path = fs_path
    keys = [b"pair-a", b"pair-b", b"pair-c"]
    with engine.open(path, fs=fs, sync="none", memtable_bytes=8192) as db:
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                with db.batch() as b:
                    for k in keys:
                        b.put(k, b"%08d" % i + bytes(50))
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            torn = 0
            for _ in range(3000):
                values = db.multi_get([keys[2], keys[0], keys[1], keys[0]])
                torn += len(set(values)) > 1
        finally:
            stop.set()
            t.join()
        assert torn == 0, f"{torn} multi_gets mixed two batches"


def test_snapshot_multi_get_sees_the_snapshot(fs_path: tuple[FileSystem, str]) -> None:
    fs, path = fs_path
    with engine.open(path, fs=fs, **SMALL) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"1")
        with db.snapshot() as snap:
            db.put(b"a", b"2")
            db.delete(b"b")
            db.put(b"c", b"2")
            db.flush()
            assert snap.multi_get([b"c", b"b", b"a"]) == [None, b"1", b"1"]
            assert db.multi_get([b"c", b"b", b"a"]) == [b"2", None, b"2"]
        with pytest.raises(engine.ClosedError):
            snap.multi_get([b"a"])


@pytest.mark.parametrize("bad", ["str", None, 42, ["list"]])
def test_multi_get_bad_keys_raise_typeerror_naming_the_position(db: engine.Engine,
                                                                 bad: object) -> None:
    with pytest.raises(TypeError, match=r"keys\[1\] must be bytes-like"):
        db.multi_get([b"ok", bad])  # type: ignore[list-item]
    with db.snapshot() as snap, pytest.raises(TypeError, match=r"keys\[0\]"):
        snap.multi_get([bad])  # type: ignore[list-item]
    with db.transaction() as tx, pytest.raises(TypeError, match=r"keys\[2\]"):
        tx.multi_get([b"a", b"b", bad])  # type: ignore[list-item]


def test_multi_get_refuses_a_single_key_and_non_iterables(db: engine.Engine) -> None:
    for single in (b"abc", "abc", bytearray(b"ab")):
        with pytest.raises(TypeError, match="iterable of keys"):
            db.multi_get(single)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable of keys"):
        db.multi_get(42)  # type: ignore[arg-type]


def test_multi_get_oversized_key_and_closed_engine() -> None:
    db = engine.open("/db", fs=MemFS(), max_key_bytes=4)
    with pytest.raises(engine.InvalidArgument, match=r"keys\[1\].*max_key_bytes"):
        db.multi_get([b"ok", b"toolong"])
    db.close()
    with pytest.raises(engine.ClosedError):
        db.multi_get([b"a"])


def test_transaction_multi_get_own_writes_win(txn_db: engine.Engine) -> None:
    db = txn_db
    db.put(b"a", b"old")
    db.put(b"b", b"old")
    tx = db.begin()
    tx.put(b"a", b"mine")
    tx.delete(b"b")
    tx.put(b"new", b"mine")
    db.put(b"c", b"later")  # after the snapshot: invisible (and a stale read for OCC)
    assert tx.multi_get([b"b", b"a", b"new", b"c", b"a"]) == [
        None, b"mine", b"mine", None, b"mine"]
    tx.rollback()


def test_transaction_multi_get_reads_are_tracked(txn_db: engine.Engine) -> None:
    """Write skew through multi_get: each reads both keys, writes one; one of them must fail."""
    db = txn_db
    db.put(b"x", b"1")
    db.put(b"y", b"1")
    t1, t2 = db.begin(), db.begin()
    assert t1.multi_get([b"x", b"y"]) == [b"1", b"1"]
    assert t2.multi_get([b"y", b"x"]) == [b"1", b"1"]
    t1.put(b"x", b"0")
    t2.put(b"y", b"0")
    t1.commit()
    with pytest.raises(engine.SerializationFailure) as info:
        t2.commit()
    assert info.value.reason in ("dangerous_structure", "stale_read")


class _ReadOnlyPointBackend:
    """An engine backend stripped to the TransactionBackend protocol (no read_many)."""

    def __init__(self, inner: engine.db._LocalTransactions) -> None:
        self._inner = inner
        self.options = inner.options
        self.reads: list[bytes] = []

    def read(self, state: TxnState, key: bytes) -> bytes | None:
        self.reads.append(key)
        return self._inner.read(state, key)

    def scan(self, state: TxnState, lo: bytes | None, hi: bytes | None, reverse: bool
             ) -> Iterator[tuple[bytes, bytes]]:
        return self._inner.scan(state, lo, hi, reverse)

    def commit(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int
               ) -> int | None:
        return self._inner.commit(state, ops, nbytes)

    def rollback(self, state: TxnState) -> None:
        self._inner.rollback(state)


def test_transaction_multi_get_without_read_many_reads_each_key_once(db: engine.Engine) -> None:
    """A backend with only ``read`` (the replicated leader's) serves multi_get key by key."""
    db.put(b"a", b"1")
    tx = db.begin()
    backend = _ReadOnlyPointBackend(db._transactions)
    tx._backend = backend
    tx.put(b"b", b"2")
    assert tx.multi_get([b"a", b"b", b"a", b"c"]) == [b"1", b"2", b"1", None]
    assert backend.reads == [b"a", b"c"]
    tx.rollback()


# ---------------------------------------------------------------------- prefix scans

PREFIX_KEYS = [b"", b"a", b"a/", b"a/1", b"a/2\xff", b"a0", b"a\xff", b"b", b"\xfe\xff",
               b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\x01", b"\xff\xff\xff"]


@pytest.mark.parametrize("prefix", [b"", b"a", b"a/", b"a/2", b"a\xff", b"\xfe", b"\xff",
                                    b"\xff\xff", b"\xff\xff\xff", b"zz"])
def test_prefix_scan_returns_exactly_the_keys_with_the_prefix(
        fs_path: tuple[FileSystem, str], prefix: bytes) -> None:
    """Forward and reverse, from memtables and tables, all-0xff prefixes included."""
    fs, path = fs_path
    with engine.open(path, fs=fs, **SMALL) as db:
        for i, k in enumerate(PREFIX_KEYS):
            db.put(k, b"%d" % i)
            if i == len(PREFIX_KEYS) // 2:
                db.flush()
        want = [(k, b"%d" % i) for i, k in enumerate(PREFIX_KEYS) if k.startswith(prefix)]
        want.sort()
        assert list(db.scan(prefix=prefix)) == want
        assert list(db.scan(prefix=bytearray(prefix), reverse=True)) == want[::-1]
        with db.snapshot() as snap:
            if want:
                db.delete(want[0][0])
            assert list(snap.scan(prefix=prefix)) == want
        with db.transaction() as tx:
            tx.put(prefix + b"\x00new", b"own")
            got = list(tx.scan(prefix=prefix))
            assert got == sorted([*want[1:], (prefix + b"\x00new", b"own")])


def test_prefix_bounds() -> None:
    from engine.batch import prefix_bounds
    assert prefix_bounds(b"a/") == (b"a/", b"a0")
    assert prefix_bounds(b"a\xff\xff") == (b"a\xff\xff", b"b")
    assert prefix_bounds(b"\x00") == (b"\x00", b"\x01")
    assert prefix_bounds(b"\xff\xff") == (b"\xff\xff", None)
    assert prefix_bounds(b"") == (b"", None)


def test_prefix_with_start_or_end_is_invalid(db: engine.Engine) -> None:
    """Ambiguous bounds are refused on engine, snapshot and transaction; a bad type names prefix."""
    with db.snapshot() as snap, db.transaction() as tx:
        for scan in (db.scan, snap.scan, tx.scan):
            with pytest.raises(engine.InvalidArgument, match="prefix"):
                scan(b"a", prefix=b"a")
            with pytest.raises(engine.InvalidArgument, match="prefix"):
                scan(end=b"b", prefix=b"a")
            with pytest.raises(TypeError, match="prefix must be bytes-like"):
                scan(prefix="a")  # type: ignore[arg-type]


@pytest.mark.parametrize(("p1", "p2"), [(b"a/", b"b/"), (b"\xff", b"a/")])
def test_prefix_scans_count_as_read_phantoms_conflict(txn_db: engine.Engine, p1: bytes,
                                                      p2: bytes) -> None:
    """Write skew through phantoms: each scans a prefix, then inserts into the other's."""
    db = txn_db
    t1, t2 = db.begin(), db.begin()
    assert list(t1.scan(prefix=p1)) == []
    assert list(t2.scan(prefix=p2)) == []
    t1.put(p2 + b"x", b"1")
    t2.put(p1 + b"y", b"1")
    t1.commit()
    with pytest.raises(engine.SerializationFailure) as info:
        t2.commit()
    assert info.value.reason in ("dangerous_structure", "stale_read")


def test_insert_at_the_prefix_successor_is_no_phantom(txn_db: engine.Engine) -> None:
    """``a0`` is outside prefix ``a/`` (its exclusive bound): no conflict, both commit."""
    db = txn_db
    t1, t2 = db.begin(), db.begin()
    list(t1.scan(prefix=b"a/"))
    list(t2.scan(prefix=b"b/"))
    t1.put(b"b0", b"1")
    t2.put(b"a0", b"1")
    t1.commit()
    t2.commit()
    assert db.multi_get([b"a0", b"b0"]) == [b"1", b"1"]


# ---------------------------------------------------------------------- per-write durability


def _after_power_cut(fs: MemFS) -> engine.Engine:
    """The store as a power failure now would leave it (only synced bytes survive)."""
    return engine.open("/db", fs=fs.crash_clone())


@pytest.mark.parametrize("default", ["always", "none"])
def test_unsynced_writes_may_be_lost_synced_ones_and_their_past_never(default: str) -> None:
    """sync=False writes are lost by a power cut; a sync=True write brings its past with it."""
    fs = MemFS()
    db = engine.open("/db", fs=fs, sync=default)
    db.put(b"base", b"1", sync=True)
    db.put(b"loose", b"1", sync=False)
    db.delete(b"base", sync=False)
    with db.batch(sync=False) as b:
        b.put(b"loose-batch", b"1")
    with db.transaction(sync=False) as tx:
        tx.put(b"loose-txn", b"1")
    with _after_power_cut(fs) as crashed:  # the MemFS clone drops every unsynced byte
        assert crashed.multi_get([b"base", b"loose", b"loose-batch", b"loose-txn"]) == [
            b"1", None, None, None]
    tx = db.begin()
    tx.put(b"synced-txn", b"1")
    tx.commit(sync=True)  # makes everything before it durable too
    with _after_power_cut(fs) as crashed:
        assert crashed.multi_get([b"base", b"loose", b"loose-batch", b"loose-txn",
                                  b"synced-txn"]) == [None, b"1", b"1", b"1", b"1"]
    db.put(b"after", b"1", sync=False)
    with db.batch(sync=True) as b:
        b.put(b"synced-batch", b"1")
    db.delete(b"loose", sync=True)
    with _after_power_cut(fs) as crashed:
        assert crashed.multi_get([b"after", b"synced-batch", b"loose"]) == [b"1", b"1", None]
    db.close()


def test_default_sync_none_loses_unsynced_writes_until_db_sync() -> None:
    fs = MemFS()
    db = engine.open("/db", fs=fs, sync="none")
    for i in range(20):
        db.put(b"k%02d" % i, b"v")
    assert db.persisted_sequence == 0
    with _after_power_cut(fs) as crashed:
        assert crashed.last_sequence == 0
    db.sync()
    assert db.persisted_sequence == db.last_sequence == 20
    with _after_power_cut(fs) as crashed:
        assert crashed.last_sequence == 20
        assert len(list(crashed.scan())) == 20
    db.close()


def test_a_synced_write_syncs_older_wal_segments_first() -> None:
    """Unsynced writes in a WAL segment left behind by a memtable switch are synced too.

    Without that, a power cut keeps the synced write (in the new segment) and
    loses earlier ones (in the old segment): a durable write without its past.
    """
    fs = MemFS()
    db = engine.open("/db", fs=fs, sync="none", memtable_bytes=4096)
    gate = threading.Event()

    def hold_flushes(op: str, path: str) -> None:
        if op == "create" and path.endswith(".sst"):
            gate.wait(timeout=30)

    fs.set_fault(hold_flushes)
    try:
        i = 0
        while db.stats()["immutable_memtables"] < 1:  # a switch; its flush held back
            db.put(b"key%04d" % i, bytes(60))
            i += 1
        db.put(b"last", b"1", sync=True)
        crashed = fs.crash_clone()
    finally:
        gate.set()
        fs.set_fault(None)
        db.close()
    with engine.open("/db", fs=crashed) as again:
        keys = [b"key%04d" % j for j in range(i)]
        assert None not in again.multi_get(keys), "an unsynced write before a synced one was lost"
        assert again.get(b"last") == b"1"


def test_a_group_with_one_synced_write_syncs() -> None:
    """A sync=False leader writing a group that holds a sync=True write must fsync.

    The first writer is held inside its WAL write until an unsynced and a
    synced writer are queued behind it; the unsynced one then leads a group
    of both.
    """
    fs = MemFS()
    db = engine.open("/db", fs=fs, sync="none")
    held, release = threading.Event(), threading.Event()

    def hold_first_write(op: str, path: str) -> None:
        if op == "write" and path.endswith(".log") and not held.is_set():
            held.set()
            release.wait(timeout=30)

    fs.set_fault(hold_first_write)
    threads = [threading.Thread(target=db.put, args=(b"first", b"1"))]
    threads[0].start()
    assert held.wait(timeout=30)
    threads.append(threading.Thread(target=db.put, args=(b"loose", b"1")))
    threads[1].start()
    while len(db._writers) < 2:
        threading.Event().wait(0.001)
    threads.append(threading.Thread(target=db.put, args=(b"synced", b"1"),
                                    kwargs={"sync": True}))
    threads[2].start()
    while len(db._writers) < 3:
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join(timeout=30)
    fs.set_fault(None)
    assert db.stats()["write_groups"] == 2  # [first], [loose, synced]
    with _after_power_cut(fs) as crashed:
        assert crashed.multi_get([b"first", b"loose", b"synced"]) == [b"1", b"1", b"1"]
    db.close()


def test_sync_argument_is_checked_before_writing(db: engine.Engine) -> None:
    for bad in ("yes", 1, "always"):
        with pytest.raises(TypeError, match="sync must be True, False or None"):
            db.put(b"k", b"v", sync=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sync"):
            db.delete(b"k", sync=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sync"):
            db.batch(sync=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sync"):
            db.transaction(sync=bad)  # type: ignore[arg-type]
        tx = db.begin()
        tx.put(b"k", b"v")
        with pytest.raises(TypeError, match="sync"):
            tx.commit(sync=bad)  # type: ignore[arg-type]
        tx.rollback()
    assert db.last_sequence == 0 and db.get(b"k") is None
    assert db.stats()["certifier"]["active"] == 0


def test_sync_true_without_a_wal_is_invalid() -> None:
    db = engine.open("/db", fs=MemFS(), wal=False)
    with pytest.raises(engine.InvalidArgument, match="wal=False"):
        db.put(b"k", b"v", sync=True)
    db.put(b"k", b"v", sync=False)
    db.sync()  # flushes instead
    assert db.persisted_sequence == 1
    db.close()


def _torn_older_segment(later_record: bool) -> MemFS:
    """A store whose older WAL segment ends in a torn record; the newer one has a record or not."""
    fs = MemFS()
    db = engine.open("/db", fs=fs, sync="none", memtable_bytes=1 << 20)
    db.put(b"a", b"1", sync=True)
    db.put(b"b", b"2" * 100)
    with db._mutex:
        db._switch_memtable()  # as a full memtable would; no flush runs before the crash
    if later_record:
        db.put(b"c", b"3")
    crashed = fs.process_crash_clone()
    db.simulate_crash()
    db.close()
    old = sorted(n for n in crashed.listdir("/db") if n.endswith(".log"))[0]
    path = "/db/" + old
    crashed.truncate(path, crashed.file_size(path) - 20)  # tear b's record
    return crashed


def test_torn_unsynced_tail_of_an_older_segment_is_cut_when_nothing_follows() -> None:
    """sync=False writes then a memtable switch then a power cut: a torn tail, not corruption."""
    with engine.open("/db", fs=_torn_older_segment(False)) as db:
        assert db.multi_get([b"a", b"b"]) == [b"1", None]


def test_torn_older_segment_followed_by_records_is_corruption() -> None:
    with pytest.raises(engine.CorruptionError, match="not the newest"):
        engine.open("/db", fs=_torn_older_segment(True))


# ---------------------------------------------------------------------- read-only open

_WRITE_CALLS = ["put", "delete", "batch", "write", "apply", "commit", "flush", "compact",
                "sync", "checkpoint"]


def _try_every_write(db: engine.Engine, scratch: str) -> dict[str, str]:
    """Call every write API; return {call: ReadOnlyError message} for those refused."""
    def commit() -> None:
        tx = db.begin()
        tx.put(b"k", b"v")
        tx.commit()

    calls = {
        "put": lambda: db.put(b"k", b"v"),
        "delete": lambda: db.delete(b"k"),
        "batch": lambda: db.batch(),
        "write": lambda: db.write(engine.WriteBatch()),
        "apply": lambda: db.apply(engine.WriteBatch(), db.last_sequence + 1),
        "commit": commit,
        "flush": db.flush,
        "compact": db.compact,
        "sync": db.sync,
        "checkpoint": lambda: db.checkpoint(scratch),
    }
    refused = {}
    for name, call in calls.items():
        try:
            call()
        except engine.ReadOnlyError as exc:
            refused[name] = str(exc)
    return refused


def test_read_only_refuses_every_write_call_naming_it(fs_path: tuple[FileSystem, str]) -> None:
    fs, path = fs_path
    with engine.open(path, fs=fs) as writer:
        writer.put(b"a", b"1")
        with engine.open(path, fs=fs, read_only=True) as ro:
            refused = _try_every_write(ro, path + "-copy")
            assert sorted(refused) == sorted(_WRITE_CALLS)
            for name, message in refused.items():
                assert message.startswith(name + ":") and "read_only=True" in message
            assert ro.get(b"a") == b"1" and ro.multi_get([b"a", b"b"]) == [b"1", None]
            with ro.transaction() as tx:  # a transaction that only reads commits
                assert tx.get(b"a") == b"1"
            assert ro.stats()["read_only"] and ro.stats()["certifier"]["active"] == 0
            assert ro.verify().ok
        assert not fs.exists(path + "-copy")
        with pytest.raises(engine.InvalidArgument, match="read_only=True"):
            writer.refresh()


def test_read_only_open_of_a_missing_store_creates_nothing(fs_path: tuple[FileSystem, str]
                                                           ) -> None:
    fs, path = fs_path
    with pytest.raises(engine.InvalidArgument, match="no store"):
        engine.open(path, fs=fs, read_only=True)
    assert not fs.exists(path)


def test_read_only_open_takes_no_lock(fs_path: tuple[FileSystem, str]) -> None:
    """A reader never blocks the writer: open read-only first, then the writer, then another."""
    fs, path = fs_path
    engine.open(path, fs=fs).close()
    with engine.open(path, fs=fs, read_only=True) as ro, engine.open(path, fs=fs) as writer:
        writer.put(b"k", b"v")
        assert ro.get(b"k") is None  # its view is as of its open
        ro.refresh()
        assert ro.get(b"k") == b"v"
        with pytest.raises(engine.LockedError):
            engine.open(path, fs=fs)


def _file_states(path: str) -> dict[str, tuple[int, int]]:
    import os
    return {name: (os.stat(os.path.join(path, name)).st_size,
                   os.stat(os.path.join(path, name)).st_mtime_ns)
            for name in sorted(os.listdir(path))}


def test_read_only_open_changes_no_file_and_ignores_a_torn_tail_in_memory(tmp_path: object
                                                                          ) -> None:
    """Names, sizes and mtimes are unchanged by a read-only open, reads, refresh and close."""
    import os
    path = os.path.join(str(tmp_path), "db")
    db = engine.open(path, **SMALL)
    model = {}
    for i in range(300):
        db.put(b"k%03d" % (i % 120), b"%d" % i)
        model[b"k%03d" % (i % 120)] = b"%d" % i
    db.simulate_crash()  # no close: the WAL still holds the latest writes
    wal = sorted(n for n in os.listdir(path) if n.endswith(".log"))[-1]
    with open(os.path.join(path, wal), "ab") as f:  # a torn record at the tail
        f.write(b"\x12\x34\x56\x78\x40\x00\x01partial")
    before = _file_states(path)
    with engine.open(path, read_only=True) as ro:
        assert dict(ro.scan()) == model
        assert ro.multi_get(list(model)) == list(model.values())
        ro.refresh()
        with ro.snapshot() as snap:
            assert dict(snap.scan(prefix=b"k1")) == {k: v for k, v in model.items()
                                                     if k.startswith(b"k1")}
    assert _file_states(path) == before
    with engine.open(path) as rw:  # a writable open cuts the tail, writes new files
        assert dict(rw.scan()) == model
    assert _file_states(path) != before


def test_read_only_view_survives_the_writer_deleting_its_tables(fs_path: tuple[FileSystem, str]
                                                                ) -> None:
    """The writer compacts away every table the reader has open: old reads stay right.

    Tables are opened when the view is loaded, so their open descriptors keep
    deleted files readable (POSIX unlink, MemFS the same); ``refresh()``
    moves to the writer's new tables, and snapshots taken before keep the old view.
    """
    fs, path = fs_path
    with engine.open(path, fs=fs, **SMALL) as writer:
        for i in range(200):
            writer.put(b"k%03d" % i, b"old")
        writer.flush()
        ro = engine.open(path, fs=fs, read_only=True)
        try:
            old_tables = [f.number for _, f in ro._sv.version.files()]
            snap = ro.snapshot()
            for i in range(200):
                writer.put(b"k%03d" % i, b"new")
            writer.compact()
            names = fs.listdir(path)
            assert not any(engine.db.file_name(engine.db.FileKind.TABLE, n) in names
                           for n in old_tables), "the writer should have deleted them"
            assert set(ro.multi_get([b"k%03d" % i for i in range(200)])) == {b"old"}
            assert {v for _, v in ro.scan()} == {b"old"}
            ro.refresh()
            assert {v for _, v in ro.scan()} == {b"new"}
            assert ro.get(b"k007") == b"new"
            assert snap.get(b"k007") == b"old"
            assert {v for _, v in snap.scan()} == {b"old"}
            snap.release()
        finally:
            ro.close()


def test_read_only_open_of_a_store_missing_a_table_is_a_clear_error() -> None:
    fs = MemFS()
    with engine.open("/db", fs=fs) as db:
        db.put(b"k", b"v")
        db.flush()
    table = next(n for n in fs.listdir("/db") if n.endswith(".sst"))
    fs.remove("/db/" + table)
    with pytest.raises(engine.CorruptionError, match=f"{table}.*missing"):
        engine.open("/db", fs=fs, read_only=True)


_READER = r"""
import json, sys, time
import engine

path, seconds = sys.argv[1], float(sys.argv[2])
keys = [b"g%03d" % i for i in range(20)]
db = engine.open(path, read_only=True)
bad, counters, refreshes = [], [], 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    with db.snapshot() as snap:
        values = snap.multi_get(keys)
        scanned = [v for _, v in snap.scan(prefix=b"g")]
        unique = sum(1 for _ in snap.scan(prefix=b"u"))
    counter = int(values[0][:8])
    if len(set(values)) != 1 or scanned != values or unique != counter + 1:
        bad.append([db.last_sequence, len(set(values)), len(scanned), unique, counter])
    counters.append(counter)
    db.refresh()
    refreshes += 1
refused = []
for call in (lambda: db.put(b"x", b"y"), db.flush, db.compact):
    try:
        call()
    except engine.ReadOnlyError as exc:
        refused.append(str(exc).split(":")[0])
db.close()
print(json.dumps({"bad": bad, "counters": counters, "refreshes": refreshes,
                  "refused": refused}))
"""


def test_read_only_process_reads_while_a_writer_writes(tmp_path: object) -> None:
    """A second process refreshes its view again and again while this one writes and compacts.

    Every batch sets 20 keys to its counter value and adds one key of its
    own, so a view mixing two batches shows unequal values and a view that
    lost a batch (a WAL segment deleted by a flush under the reader) misses
    a key; the counter never goes back from one refresh to the next.
    """
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    path = os.path.join(str(tmp_path), "db")
    writer = engine.open(path, sync="none", memtable_bytes=64 * 1024,
                         target_file_bytes=16 * 1024, level_base_bytes=64 * 1024,
                         l0_compaction_trigger=2)
    stop = threading.Event()
    written = [0]

    def write() -> None:
        i = 1
        while not stop.is_set():
            with writer.batch() as b:
                for k in range(20):
                    b.put(b"g%03d" % k, b"%08d" % i + bytes(60))
                b.put(b"u%08d" % i, b"")  # written once: losing any batch shows
            written[0] = i
            i += 1
            time.sleep(0.0005)

    with writer.batch() as b:
        for k in range(20):
            b.put(b"g%03d" % k, b"%08d" % 0 + bytes(60))
        b.put(b"u%08d" % 0, b"")
    thread = threading.Thread(target=write)
    thread.start()
    proc = subprocess.Popen([sys.executable, "-c", _READER, path, "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        stop.set()
        thread.join()
    stats = writer.stats()
    writer.close()
    assert proc.returncode == 0, err
    result = json.loads(out)
    print(f"refreshes={result['refreshes']} counters {result['counters'][0]}.."
          f"{result['counters'][-1]} of {written[0]} written; writer stats "
          f"flushes={stats['flushes']} compactions={stats['compactions']}")
    assert result["bad"] == []
    counters = result["counters"]
    assert counters == sorted(counters), "a refresh went back in time"
    assert result["refreshes"] >= 5 and counters[-1] > counters[0]
    assert result["refused"] == ["put", "flush", "compact"]
    assert stats["compactions"] > 0 and stats["flushes"] > 2, stats


# ---------------------------------------------------------------------- delete_range


def _keys(db: engine.Engine) -> list[bytes]:
    return [k for k, _ in db.scan()]


def test_delete_range_hides_the_range_everywhere_and_survives_flush_reopen_compact(
        fs_path: tuple[FileSystem, str]) -> None:
    fs, path = fs_path
    names = [b"r%03d" % i for i in range(300)]
    db = engine.open(path, fs=fs, **SMALL)
    for k in names:
        db.put(k, b"v" + k)
    db.flush()  # some in tables, some in the memtable
    for k in names[::3]:
        db.put(k, b"w" + k)
    db.delete_range(b"r100", b"r200")
    want = [k for k in names if not b"r100" <= k < b"r200"]

    def check(d: engine.Engine) -> None:
        assert _keys(d) == want
        assert [k for k, _ in d.scan(reverse=True)] == want[::-1]
        assert d.get(b"r150") is None and d.get(b"r099") is not None
        assert d.get(b"r200") is not None  # end is exclusive
        assert d.multi_get([b"r100", b"r199", b"r200"])[:2] == [None, None]
        assert list(d.scan(prefix=b"r1")) == []
        assert [k for k, _ in d.scan(b"r090", b"r210")] == [
            k for k in want if b"r090" <= k < b"r210"]

    check(db)
    db.put(b"r150", b"again")  # newer than the deletion: visible
    want = sorted([*want, b"r150"])
    check_again = [b"r150" in _keys(db)]
    db.close()
    db = engine.open(path, fs=fs, **SMALL)  # the WAL replays the tombstone
    check_again.append(db.get(b"r150") == b"again")
    want.remove(b"r150")
    db.delete(b"r150")
    check(db)
    db.flush()
    check(db)
    db.compact()
    check(db)
    props = [t.props for t in db._tables.values()]
    assert not any(p.range_tombstones for p in props), "a full compaction drops tombstones"
    assert sum(p.entries for p in props) == len(want)
    db.close()
    assert check_again == [True, True]


def test_delete_range_is_one_write_and_atomic(db: engine.Engine) -> None:
    for i in range(1000):
        db.put(b"k%04d" % i, bytes(100))
    writes, mem = db.stats()["writes"], db.stats()["memtable_bytes"]
    db.delete_range(b"k", b"l")
    stats = db.stats()
    assert stats["writes"] == writes + 1 and stats["last_sequence"] == 1001
    assert stats["memtable_bytes"] - mem < 200  # one entry, whatever the range holds
    assert _keys(db) == []


def test_snapshots_before_a_delete_range_keep_the_keys(fs_path: tuple[FileSystem, str]
                                                       ) -> None:
    """Through flush and full compaction a snapshot keeps what the deletion hides."""
    fs, path = fs_path
    with engine.open(path, fs=fs, **SMALL) as db:
        for i in range(100):
            db.put(b"k%03d" % i, b"%d" % i)
        with db.snapshot() as snap:
            db.delete_range(b"k010", b"k090")
            db.flush()
            db.compact()
            assert len(list(snap.scan())) == 100 and snap.get(b"k050") == b"50"
            assert snap.multi_get([b"k010", b"k089"]) == [b"10", b"89"]
            assert len(_keys(db)) == 20 and db.get(b"k050") is None
        assert any(t.props.range_tombstones for t in db._tables.values())
        db.compact()  # the snapshot is gone: now the tombstone and its keys go
        assert not any(t.props.range_tombstones for t in db._tables.values())
        assert len(_keys(db)) == 20


def test_delete_range_durability_follows_sync() -> None:
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    for i in range(10):
        db.put(b"k%d" % i, b"v")
    db.delete_range(b"k2", b"k5", sync=False)
    with _after_power_cut(fs) as crashed:
        assert len(_keys(crashed)) == 10  # the unsynced deletion is lost
    db.delete_range(b"k7", b"k9")
    with _after_power_cut(fs) as crashed:
        assert _keys(crashed) == [b"k0", b"k1", b"k5", b"k6", b"k9"]
    db.close()


def test_delete_range_bad_input(db: engine.Engine) -> None:
    with pytest.raises(TypeError, match="start must be bytes-like"):
        db.delete_range("a", b"b")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="end must be bytes-like"):
        db.delete_range(b"a", None)  # type: ignore[arg-type]
    with pytest.raises(engine.InvalidArgument, match="start < end"):
        db.delete_range(b"b", b"a")
    with pytest.raises(engine.InvalidArgument, match="start < end"):
        db.delete_range(b"a", b"a")
    assert db.last_sequence == 0


def test_delete_range_refused_read_only(fs_path: tuple[FileSystem, str]) -> None:
    fs, path = fs_path
    engine.open(path, fs=fs).close()
    with engine.open(path, fs=fs, read_only=True) as ro, \
            pytest.raises(engine.ReadOnlyError, match=r"^delete_range:"):
        ro.delete_range(b"a", b"b")


def test_read_only_view_honours_a_delete_range(fs_path: tuple[FileSystem, str]) -> None:
    fs, path = fs_path
    with engine.open(path, fs=fs) as db:
        for i in range(10):
            db.put(b"k%d" % i, b"v")
        db.delete_range(b"k3", b"k6")
        with engine.open(path, fs=fs, read_only=True) as ro:
            assert _keys(ro) == [b"k0", b"k1", b"k2", b"k6", b"k7", b"k8", b"k9"]
            assert ro.get(b"k4") is None


def test_delete_range_conflicts_with_transactions_that_read_the_range(txn_db: engine.Engine
                                                                      ) -> None:
    """A transaction that read a key the deletion removed is its rw-predecessor."""
    db = txn_db
    for k in (b"r5", b"x"):
        db.put(k, b"1")
    t_in = db.begin()
    assert t_in.get(b"x") == b"1"
    t = db.begin()
    assert t.get(b"r5") == b"1"
    db.delete_range(b"r0", b"r9")  # commits first: t -rw-> it
    t.put(b"x", b"2")  # t_in -rw-> t: t is a pivot whose out-neighbour committed first
    with pytest.raises(engine.SerializationFailure) as info:
        t.commit()
    assert info.value.reason in ("dangerous_structure", "stale_read")
    t_in.rollback()


def test_a_transaction_writing_into_a_concurrently_deleted_range_fails(txn_db: engine.Engine
                                                                       ) -> None:
    db = txn_db
    t = db.begin()
    t.put(b"r5", b"mine")
    db.delete_range(b"r0", b"r9")
    with pytest.raises(engine.SerializationFailure) as info:
        t.commit()
    assert info.value.reason == "write_write"
    assert db.get(b"r5") is None


def test_format_2_stores_are_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written by format version 2 (before range tombstones) opens and reads."""
    from engine import encoding, record, sstable
    fs = MemFS()
    with monkeypatch.context() as m:
        for mod in (encoding, record, sstable):
            m.setattr(mod, "FORMAT_VERSION", 2)
        with engine.open("/db", fs=fs, **SMALL) as db:
            for i in range(200):
                db.put(b"k%03d" % i, b"%d" % i)
            db.flush()
            db.put(b"wal", b"only")
            db.simulate_crash()
    with engine.open("/db", fs=fs) as db:
        assert {t.props.format_version for t in db._tables.values()} >= {2}
        assert db.get(b"k007") == b"7" and db.get(b"wal") == b"only"
        db.delete_range(b"k000", b"k100")
        assert len(_keys(db)) == 101


def test_filter_passing_agrees_with_may_contain() -> None:
    """multi_get's batched filter probe is may_contain's, blocked and version-1 layouts."""
    from engine.bloom import BloomFilter, build_filter, key_hash, key_hashes
    from tests.test_sstable import _v1_filter
    present = [b"p%05d" % i for i in range(3000)]
    probe = present[::7] + [b"a%05d" % i for i in range(3000)]
    hashes = key_hashes(probe)
    assert hashes == [key_hash(k) for k in probe]
    for flt in (BloomFilter(build_filter(key_hashes(present), 10)),
                BloomFilter(_v1_filter(key_hashes(present), 10), blocked=False)):
        want = [i for i in range(10, len(probe) - 5) if flt.may_contain(*hashes[i])]
        assert flt.passing(hashes, 10, len(probe) - 5) == want
        assert set(range(10, len(present[::7]))) <= set(want)  # no false negatives
