"""Recovery: torn WAL tails, mid-log corruption, power-loss images, failing disks."""

from __future__ import annotations

import errno
import logging
import random
import struct
import threading

import pytest

import engine
from engine.encoding import FORMAT_VERSION, FileKind, crc, mask_crc
from engine.fs import MemFS
from engine.record import HEADER_SIZE


def wal_path(fs: MemFS, path: str = "/db") -> str:
    logs = [n for n in fs.listdir(path) if n.endswith(".log")]
    assert len(logs) == 1, logs
    return f"{path}/{logs[0]}"


def filled(n: int, **options: object) -> MemFS:
    """A MemFS whose store holds keys k0..k{n-1}, each put in its own WAL record."""
    fs = MemFS()
    db = engine.open("/db", fs=fs, **options)  # type: ignore[arg-type]
    for i in range(n):
        db.put(b"k%d" % i, b"v%d" % i * 3)
    clone = fs.process_crash_clone()  # as if killed: nothing flushed to a table
    db.close()
    return clone


def rewrite(fs: MemFS, path: str, data: bytes) -> None:
    f = fs.create(path)
    f.append(data)
    f.sync()
    f.close()


def test_torn_tail_at_every_offset_of_last_record(caplog: pytest.LogCaptureFixture) -> None:
    """Truncating the WAL anywhere inside its last record: open succeeds with all before it."""
    base = filled(5)
    path = wal_path(base)
    data = base.read_file(path)
    last_record = len(filled(4).read_file(wal_path(filled(4))))
    assert last_record < len(data)
    for cut in range(last_record + 1, len(data)):
        fs = base.process_crash_clone()
        rewrite(fs, path, data[:cut])
        with caplog.at_level(logging.WARNING), engine.open("/db", fs=fs) as db:
            assert [k for k, _ in db.scan()] == [b"k0", b"k1", b"k2", b"k3"], cut
            assert db.get(b"k4") is None
            assert db.last_sequence == 4
        assert "torn" in caplog.text
        caplog.clear()
        with engine.open("/db", fs=fs) as db:  # and the cut is durable: reopen is clean
            assert db.last_sequence == 4


def test_flipped_byte_in_earlier_record_is_corruption() -> None:
    """A damaged record followed by good ones: CorruptionError naming the WAL and offset."""
    fs = filled(6)
    path = wal_path(fs)
    data = bytearray(fs.read_file(path))
    header_record = HEADER_SIZE + 22  # file header record: tag, magic, version, kind, number
    target = header_record + HEADER_SIZE + 20  # inside the first write group's payload
    data[target] ^= 0x01
    rewrite(fs, path, bytes(data))
    with pytest.raises(engine.CorruptionError) as err:
        engine.open("/db", fs=fs)
    assert err.value.path == path
    assert err.value.offset == header_record
    assert path in str(err.value) and str(header_record) in str(err.value)


def test_newer_wal_format_version_is_refused() -> None:
    """A WAL whose header carries a newer format version is refused with a clear message."""
    fs = filled(2)
    path = wal_path(fs)
    data = bytearray(fs.read_file(path))
    payload = bytearray(data[HEADER_SIZE : HEADER_SIZE + 22])
    struct.pack_into("<I", payload, 9, FORMAT_VERSION + 1)
    head = struct.pack("<IHB", mask_crc(crc(bytes(payload), crc(b"\x01"))), 22, 1)
    data[: HEADER_SIZE + 22] = head + payload
    rewrite(fs, path, bytes(data))
    with pytest.raises(engine.CorruptionError, match="newer than supported"):
        engine.open("/db", fs=fs)


def test_missing_current_with_store_files_is_corruption() -> None:
    """Store files without CURRENT are not silently treated as a new, empty store."""
    fs = filled(2)
    fs.remove("/db/CURRENT")
    with pytest.raises(engine.CorruptionError, match="CURRENT"):
        engine.open("/db", fs=fs)


def _batch_writer(db: engine.Engine, t: int, stop: threading.Event, lock: threading.Lock,
                  acked: list[int]) -> None:
    """Commit 4-key batches until stopped; record each id after its commit returned."""
    i = 0
    while not stop.is_set():
        batch_id = t * 1_000_000 + i
        with db.batch() as b:
            for j in range(4):
                b.put(b"b%d/%d" % (batch_id, j), b"x" * 40)
        with lock:
            acked.append(batch_id)
        i += 1


def test_power_loss_images_keep_every_acknowledged_write(seed: int) -> None:
    """Crash images taken while 8 threads commit batches: acknowledged batches survive whole."""
    rng = random.Random(seed)
    for round_ in range(20):
        fs = MemFS()
        db = engine.open("/db", fs=fs, memtable_bytes=16 * 1024, target_file_bytes=8 * 1024,
                         level_base_bytes=32 * 1024, block_bytes=512)
        acked: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()
        threads = [threading.Thread(target=_batch_writer, args=(db, t, stop, lock, acked))
                   for t in range(8)]
        for th in threads:
            th.start()
        images = []
        for _ in range(3):
            stop.wait(rng.uniform(0.005, 0.05))
            with lock:
                acked_now = list(acked)
            images.append((fs.crash_clone(random.Random(rng.random())), acked_now))
        stop.set()
        for th in threads:
            th.join()
        db.close()
        for image, acked_then in images:
            with engine.open("/db", fs=image) as rec:
                keys = [k for k, _ in rec.scan()]
                per_batch: dict[bytes, int] = {}
                for k in keys:
                    bid = k.split(b"/")[0]
                    per_batch[bid] = per_batch.get(bid, 0) + 1
                assert all(n == 4 for n in per_batch.values()), f"round {round_}: torn batch"
                for bid in acked_then:
                    assert b"b%d" % bid in per_batch, f"round {round_}: lost batch {bid}"
                assert rec.verify().ok


def test_disk_full_fails_the_write_and_keeps_the_store_readable() -> None:
    """A failing WAL write raises StorageError; reads work; later writes fail; reopen is clean."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)
    db.put(b"a", b"1")

    def full(op: str, path: str) -> None:
        if op == "write" and path.endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device", path)

    fs.set_fault(full)
    with pytest.raises(engine.StorageError, match="No space left"):
        db.put(b"b", b"2")
    assert db.get(b"a") == b"1"
    assert db.get(b"b") is None
    fs.set_fault(None)
    with pytest.raises(engine.StorageError):
        db.put(b"c", b"3")  # the engine cannot know what reached the disk: read-only now
    db.close()
    with engine.open("/db", fs=fs) as again:
        assert again.get(b"a") == b"1"
        assert again.get(b"c") is None
        again.put(b"c", b"3")
        assert again.get(b"c") == b"3"


def test_sync_failure_fails_the_commit() -> None:
    """An fdatasync error is reported to every writer of the group, never acknowledged."""
    fs = MemFS()
    db = engine.open("/db", fs=fs)

    def bad_sync(op: str, path: str) -> None:
        if op == "sync" and path.endswith(".log"):
            raise OSError(errno.EIO, "I/O error", path)

    fs.set_fault(bad_sync)
    with pytest.raises(engine.StorageError):
        db.put(b"a", b"1")
    fs.set_fault(None)
    db.close()


def test_a_crash_during_the_current_update_leaves_a_temp_file_that_open_deletes() -> None:
    """Killed between writing CURRENT.tmp and renaming it: the old CURRENT holds; open cleans up.

    CURRENT is replaced through engine.fs.atomic_write, whose temporary is
    ``CURRENT.tmp`` (the next install reuses and renames it); a store written
    by an older version may hold a ``<n>.dbtmp`` instead, which open must
    delete. A power-loss image holds no temporary at all.
    """
    fs = MemFS()
    with engine.open("/db", fs=fs) as db:
        db.put(b"k", b"v")

    def killed_before_rename(op: str, path: str) -> None:
        if op == "rename" and path.endswith("/CURRENT"):
            raise OSError(errno.EIO, "killed", path)

    fs.set_fault(killed_before_rename)
    with pytest.raises(OSError):
        engine.open("/db", fs=fs)
    fs.set_fault(None)
    killed = fs.process_crash_clone()
    power_loss = fs.crash_clone()
    assert "CURRENT.tmp" in killed.listdir("/db")
    assert "CURRENT.tmp" not in power_loss.listdir("/db")  # its directory entry was never synced
    killed.create("/db/000042.dbtmp").close()  # an older version's unfinished CURRENT update
    for image in (killed, power_loss):
        with engine.open("/db", fs=image) as db:
            assert db.get(b"k") == b"v"
            names = image.listdir("/db")
            assert "CURRENT.tmp" not in names and not any(n.endswith(".dbtmp") for n in names)
            assert db.verify().ok
        assert sum(n.startswith("MANIFEST-") for n in image.listdir("/db")) == 1


def test_recovery_replays_across_wal_segments_and_flushes() -> None:
    """A store killed after memtable switches reopens with every write of every segment."""
    fs = MemFS()
    db = engine.open("/db", fs=fs, memtable_bytes=8 * 1024)
    model = {}
    for i in range(2000):
        key = b"key%05d" % (i % 700)
        model[key] = b"value%d" % i
        db.put(key, model[key])
    image = fs.process_crash_clone()
    db.close()
    with engine.open("/db", fs=image) as rec:
        assert dict(rec.scan()) == model
        assert rec.last_sequence == 2000
        names = image.listdir("/db")
        assert sum(n.endswith(".log") for n in names) == 1
        assert rec.verify().ok


def test_file_kinds_in_names() -> None:
    """WAL, table and manifest names follow LevelDB's scheme (a sanity check of encoding)."""
    from engine.encoding import file_name, parse_file_name

    for kind in FileKind:
        assert parse_file_name(file_name(kind, 42)) == (kind, 42)
    assert parse_file_name("LOCK") is None


def _torn_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "torn" in r.getMessage()]


def test_torn_wal_tail_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """One torn tail, one warning: the log reader used to warn as well as the WAL recovery."""
    base = filled(3)
    path = wal_path(base)
    data = base.read_file(path)
    rewrite(base, path, data[:-3])
    with caplog.at_level(logging.WARNING), engine.open("/db", fs=base) as db:
        assert db.last_sequence == 2
    warnings = _torn_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert path in warnings[0] and "offset" in warnings[0]


def test_torn_replication_log_tail_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The replication log's recovery warns once for a torn tail (it shares the log reader)."""
    from replication.consensus import LogEntry
    from replication.node_log import NodeLog

    fs = MemFS()
    lg = NodeLog(fs, "/log", 0)
    lg.append([LogEntry(1, 1, b"one"), LogEntry(2, 1, b"two")])
    lg.sync()
    lg.close()
    seg = "/log/" + next(n for n in fs.listdir("/log") if n.endswith(".rlog"))
    rewrite(fs, seg, fs.read_file(seg)[:-2])
    with caplog.at_level(logging.WARNING):
        reopened = NodeLog(fs, "/log", 0)
    assert reopened.last_index == 1
    warnings = _torn_warnings(caplog)
    assert len(warnings) == 1, warnings
