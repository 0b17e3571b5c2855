"""The engine's public API: reads, writes, scans, snapshots, bad input, lifecycle."""

from __future__ import annotations

import threading

import pytest

import engine
from engine.fs import FileSystem, MemFS


def test_put_get_delete_overwrite(db: engine.Engine) -> None:
    """Basic operations; a missing key is None, not an exception."""
    assert db.get(b"k") is None
    db.put(b"k", b"1")
    db.put(b"k", b"2")
    assert db.get(b"k") == b"2"
    db.delete(b"k")
    assert db.get(b"k") is None
    db.delete(b"never-existed")
    db.put(b"", b"empty key works")
    assert db.get(b"") == b"empty key works"
    db.put(b"empty-value", b"")
    assert db.get(b"empty-value") == b""


def test_bytes_like_arguments_are_accepted(db: engine.Engine) -> None:
    """bytearray and memoryview work as keys and values and are copied."""
    key = bytearray(b"key")
    value = bytearray(b"value")
    db.put(key, memoryview(value))
    key[0] = ord("X")
    value[0] = ord("X")
    assert db.get(b"key") == b"value"


def test_scan_bounds_are_half_open(db: engine.Engine) -> None:
    """scan(start, end) yields start <= key < end, ascending or descending."""
    for i in range(10):
        db.put(b"k%d" % i, b"v%d" % i)
    db.delete(b"k5")
    assert [k for k, _ in db.scan(b"k2", b"k7")] == [b"k2", b"k3", b"k4", b"k6"]
    assert [k for k, _ in db.scan(b"k2", b"k7", reverse=True)] == [b"k6", b"k4", b"k3", b"k2"]
    assert [k for k, _ in db.scan(end=b"k2")] == [b"k0", b"k1"]
    assert [k for k, _ in db.scan(start=b"k8")] == [b"k8", b"k9"]
    assert list(db.scan(b"k7", b"k2")) == []
    assert list(db.scan(b"k3", b"k3")) == []
    assert len(list(db.scan())) == 9


def test_scan_is_a_consistent_view(db: engine.Engine) -> None:
    """Writes made while a scan is being consumed do not show up in it."""
    for i in range(200):
        db.put(b"%04d" % i, b"old")
    it = db.scan()
    first = next(it)
    for i in range(200):
        db.put(b"%04d" % i, b"new")
    db.put(b"9999", b"new")
    rest = list(it)
    assert first == (b"0000", b"old")
    assert all(v == b"old" for _, v in rest) and len(rest) == 199


def test_snapshot_sees_a_fixed_state(db: engine.Engine) -> None:
    """A snapshot keeps reading the values of the moment it was taken."""
    db.put(b"a", b"1")
    db.put(b"b", b"1")
    with db.snapshot() as snap:
        db.put(b"a", b"2")
        db.delete(b"b")
        db.put(b"c", b"2")
        assert snap.get(b"a") == b"1"
        assert snap.get(b"b") == b"1"
        assert snap.get(b"c") is None
        assert list(snap.scan()) == [(b"a", b"1"), (b"b", b"1")]
    with pytest.raises(engine.ClosedError):
        snap.get(b"a")


def test_batch_is_atomic_and_last_write_wins(db: engine.Engine) -> None:
    """A batch applies all its operations at one sequence; later ops on a key win."""
    db.put(b"gone", b"x")
    before = db.last_sequence
    with db.batch() as b:
        b.put(b"a", b"1")
        b.put(b"a", b"2")
        b.delete(b"gone")
        b.put(b"c", b"3")
    assert db.last_sequence == before + 1
    assert (db.get(b"a"), db.get(b"gone"), db.get(b"c")) == (b"2", None, b"3")


def test_batch_discarded_on_exception(db: engine.Engine) -> None:
    """An exception inside ``with db.batch()`` writes nothing."""
    with pytest.raises(RuntimeError), db.batch() as b:
        b.put(b"a", b"1")
        raise RuntimeError("boom")
    assert db.get(b"a") is None
    assert db.last_sequence == 0


@pytest.mark.parametrize("bad", ["str", None, 42, 1.5, ["list"]])
def test_bad_types_raise_typeerror_before_writing(db: engine.Engine, bad: object) -> None:
    """Non-bytes keys/values raise TypeError naming the argument; nothing is written."""
    with pytest.raises(TypeError, match="key"):
        db.put(bad, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value"):
        db.put(b"k", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        db.get(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        db.delete(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError), db.batch() as b:
        b.put(b"ok", b"ok")
        b.put(bad, b"v")  # type: ignore[arg-type]
    assert db.last_sequence == 0
    assert db.get(b"k") is None and db.get(b"ok") is None


def test_oversized_arguments_raise_invalid_argument(fs_path: tuple[FileSystem, str]) -> None:
    """Keys, values and batches over their limits fail with InvalidArgument; nothing written."""
    fs, path = fs_path
    with engine.open(path, fs=fs, max_key_bytes=8, max_value_bytes=16,
                     max_batch_bytes=40) as db:
        with pytest.raises(engine.InvalidArgument, match="max_key_bytes"):
            db.put(b"k" * 9, b"v")
        with pytest.raises(engine.InvalidArgument, match="max_value_bytes"):
            db.put(b"k", b"v" * 17)
        with pytest.raises(engine.InvalidArgument, match="max_batch_bytes"), db.batch() as b:
            for i in range(5):
                b.put(b"k%d" % i, b"v" * 10)
        db.put(b"k" * 8, b"v" * 16)  # exactly at the limits is fine
        assert db.last_sequence == 1
        assert [k for k, _ in db.scan()] == [b"k" * 8]


def test_invalid_options_are_rejected() -> None:
    """Options are validated before the directory is touched."""
    fs = MemFS()
    with pytest.raises(engine.InvalidArgument, match="sync"):
        engine.open("/db", fs=fs, sync="sometimes")
    with pytest.raises(engine.InvalidArgument, match="memtable_bytes"):
        engine.open("/db", fs=fs, memtable_bytes=10)
    with pytest.raises(TypeError):
        engine.open("/db", fs=fs, no_such_option=1)
    assert not fs.exists("/db")


def test_use_after_close_raises_closed_error(fs_path: tuple[FileSystem, str]) -> None:
    """Every operation on a closed engine raises ClosedError; close is idempotent."""
    fs, path = fs_path
    db = engine.open(path, fs=fs)
    db.put(b"a", b"1")
    db.close()
    db.close()
    for op in (lambda: db.put(b"a", b"2"), lambda: db.get(b"a"), lambda: db.delete(b"a"),
               lambda: db.scan(), db.batch, db.snapshot, db.begin, db.flush):
        with pytest.raises(engine.ClosedError):
            op()
    with engine.open(path, fs=fs) as again:
        assert again.get(b"a") == b"1"


def test_second_open_of_same_directory_is_refused(fs_path: tuple[FileSystem, str]) -> None:
    """Two engines never share a directory (flock on LOCK)."""
    fs, path = fs_path
    with engine.open(path, fs=fs), pytest.raises(engine.LockedError):
        engine.open(path, fs=fs)
    engine.open(path, fs=fs).close()  # released on close


def test_apply_is_idempotent_and_persists_last_sequence(fs_path: tuple[FileSystem, str]) -> None:
    """apply() at a chosen sequence: <= last is a no-op; gaps allowed; survives reopen."""
    fs, path = fs_path
    b = engine.WriteBatch()
    b.put(b"x", b"1")
    with engine.open(path, fs=fs) as db:
        assert db.apply(b, 5) is True
        assert db.apply(b, 5) is False
        assert db.apply(engine.WriteBatch(), 3) is False
        assert db.last_sequence == 5
        assert db.apply(engine.WriteBatch(), 9) is True  # empty entries still advance
        with pytest.raises(engine.InvalidArgument):
            db.apply(b, 0)
        with pytest.raises(TypeError):
            db.apply(b, "7")  # type: ignore[arg-type]
    with engine.open(path, fs=fs) as db:
        assert db.last_sequence == 9
        assert db.get(b"x") == b"1"
        db.flush()
    with engine.open(path, fs=fs) as db:
        assert db.last_sequence == 9
        assert db.apply(b, 9) is False


def test_concurrent_writers_and_readers(db: engine.Engine) -> None:
    """Many threads writing and reading see their own writes; nothing is lost."""
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(200):
                key = b"t%02d-%04d" % (t, i)
                db.put(key, key)
                assert db.get(key) == key
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sum(1 for _ in db.scan()) == 16 * 200
    assert db.last_sequence == 16 * 200
    assert db.stats()["write_groups"] <= 16 * 200


def test_readers_never_see_half_a_batch(db: engine.Engine) -> None:
    """While batches of 10 keys commit, a reader scanning sees each batch whole or not at all."""
    stop = threading.Event()
    seen_partial: list[list[bytes]] = []

    def reader() -> None:
        while not stop.is_set():
            values = [v for _, v in db.scan()]
            counts: dict[bytes, int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            bad = [v for v, n in counts.items() if n != 10]
            if bad:
                seen_partial.append(bad)

    th = threading.Thread(target=reader)
    th.start()
    for i in range(300):
        with db.batch() as b:
            for j in range(10):
                b.put(b"%03d-%d" % (j, i % 7), b"batch-%d" % i)
    stop.set()
    th.join()
    assert not seen_partial


def test_stats_report_levels_and_counters(db: engine.Engine) -> None:
    """stats() exposes sequence, memtable size and per-level shape."""
    db.put(b"a", b"1")
    st = db.stats()
    assert st["last_sequence"] == 1
    assert st["memtable_bytes"] > 0
    assert len(st["levels"]) == db.options.num_levels
    assert st["writes"] == 1


def test_simulated_crash_keeps_wal_writes_and_drops_the_rest() -> None:
    """simulate_crash(): WAL'd writes survive reopen; with wal=False the memtable is gone."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    db.put(b"logged", b"1")
    db.simulate_crash()
    with pytest.raises(engine.ClosedError):
        db.put(b"after", b"x")
    with engine.open("/db", fs=fs) as again:
        assert again.get(b"logged") == b"1"
    fs2 = MemFS()
    db = engine.open("/db", fs=fs2, wal=False)
    db.put(b"flushed", b"1")
    db.flush()
    db.put(b"memtable-only", b"2")
    db.simulate_crash()
    with engine.open("/db", fs=fs2, wal=False) as again:
        assert again.get(b"flushed") == b"1"
        assert again.get(b"memtable-only") is None
        assert again.last_sequence == 1


def test_stats_has_every_documented_counter_from_the_start() -> None:
    """A fresh engine's stats() already holds every counter (zeros) and each key is documented.

    It used to hold only the counters something had incremented: ``flushes``
    appeared after the first flush, ``txn_aborts`` was an empty dict.
    """
    from typing import get_args

    from engine.errors import SerializationReason

    fs = MemFS()
    with engine.open("/db", fs=fs) as db:
        fresh = db.stats()
        for name in ("writes", "write_groups", "flushes", "bytes_flushed", "compactions",
                     "trivial_moves", "stall_l0_slowdown", "stall_l0_stop", "stall_memtable",
                     "wal_batches_replayed", "bytes_compacted_in", "bytes_compacted_out"):
            assert fresh[name] == 0, name
        assert set(fresh["txn_aborts"]) == set(get_args(SerializationReason))
        assert set(fresh["txn_aborts"].values()) == {0}
        assert fresh["txn_rollbacks"] == {"rollback": 0, "refused": 0, "storage_error": 0}
        for i in range(50):
            db.put(b"k%d" % i, b"v")
        with db.transaction() as tx:
            tx.put(b"t", b"1")
        db.flush()
        db.compact()
        busy = db.stats()
    assert set(busy) == set(fresh), "a key appeared only after activity"
    assert busy["flushes"] >= 1 and busy["writes"] == 51
    doc = engine.Engine.stats.__doc__ or ""
    for key in fresh:
        assert f"``{key}``" in doc, f"stats() key {key} is not documented"


def test_max_txn_age_is_a_checked_deprecated_alias_of_max_txn_age_s() -> None:
    """The old name of the setting still works, warns, is validated and cannot contradict."""
    with pytest.warns(DeprecationWarning, match="max_txn_age_s"):
        opts = engine.Options(max_txn_age=5.0)
    assert opts.max_txn_age_s == 5.0 and opts.max_txn_age == 5.0  # type: ignore[attr-defined]
    assert opts.replace(sync="none").max_txn_age_s == 5.0
    assert engine.Options(max_txn_age_s=2.0).max_txn_age == 2.0  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning), pytest.raises(engine.InvalidArgument,
                                                          match="max_txn_age_s"):
        engine.open("/db", fs=MemFS(), max_txn_age=-1)
    with pytest.warns(DeprecationWarning), pytest.raises(engine.InvalidArgument,
                                                          match="contradicts"):
        engine.Options(max_txn_age=1.0, max_txn_age_s=3.0)


def test_options_docstring_documents_every_field() -> None:
    """help(engine.Options) describes every field (slotted dataclass fields have no docstrings)."""
    import dataclasses

    doc = engine.Options.__doc__ or ""
    missing = [f.name for f in dataclasses.fields(engine.Options) if f"``{f.name}``" not in doc]
    assert not missing, f"Options fields not documented: {missing}"


class _FlipFirstWrite:
    """A writable file that flips one byte of the first thing appended (a planted fault)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self._flipped = False

    def append(self, data: bytes) -> None:
        if not self._flipped and len(data) > 8:
            data = bytes([data[0] ^ 0x40]) + bytes(data[1:])
            self._flipped = True
        self._inner.append(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@pytest.mark.parametrize("paranoid", [True, False])
def test_paranoid_checks_catch_a_table_damaged_on_write(
        monkeypatch: pytest.MonkeyPatch, paranoid: bool) -> None:
    """With paranoid_checks a flushed table is re-read before it joins the store.

    The fault flips a byte of the first data block on its way to the file.
    Paranoid: the flush fails with CorruptionError and writes stop (reads of
    the memtable keep working). Without: the damaged table is installed and
    only a later read finds it -- the check is what caught it.
    """
    from engine.sstable import TableBuilder

    real_new_builder = engine.Engine._new_builder

    def damaged(self: engine.Engine, number: int) -> TableBuilder:
        builder = real_new_builder(self, number)
        builder._file = _FlipFirstWrite(builder._file)  # type: ignore[assignment]
        return builder

    monkeypatch.setattr(engine.Engine, "_new_builder", damaged)
    fs = MemFS()
    db = engine.open("/db", fs=fs, paranoid_checks=paranoid, block_cache_bytes=0)
    for i in range(100):
        db.put(b"key%03d" % i, b"value %d" % i)
    if paranoid:
        with pytest.raises(engine.CorruptionError, match="paranoid check"):
            db.flush()
        assert db.get(b"key007") == b"value 7"  # still served from the memtable
        with pytest.raises(engine.EngineError):
            db.put(b"more", b"x")
        assert db.stats()["flushes"] == 0
    else:
        db.flush()
        assert db.stats()["flushes"] == 1
        with pytest.raises(engine.CorruptionError):
            db.get(b"key007")
    db.close()


def test_paranoid_checks_must_be_a_bool() -> None:
    with pytest.raises(engine.InvalidArgument, match="paranoid_checks"):
        engine.Options(paranoid_checks="yes").validate()  # type: ignore[arg-type]
