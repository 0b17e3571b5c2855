"""Damaged files: every flipped byte is reported as CorruptionError, never as a wrong answer.

The store lives on the real file system (``tmp_path``) so that bytes can be
flipped in place between runs. Every test checks three things: the error is
a :class:`engine.CorruptionError`, it names the damaged file (and the offset
of the damaged block where there is one), and no read ever returns a value
that differs from the model.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.cache import LRUCache
from engine.encoding import FORMAT_VERSION, crc, mask_crc
from engine.fs import MemFS, OSFileSystem
from engine.invariants import VerifyReport, check_table
from engine.options import Options
from engine.record import HEADER_SIZE, read_log
from engine.sstable import FOOTER_SIZE, Table, TableBuilder

OPTS: dict[str, Any] = dict(memtable_bytes=4096, block_bytes=256, target_file_bytes=4096,
                            sync="none", l0_compaction_trigger=2)
NKEYS = 500
FOOTER = struct.Struct("<QIQIQIII8s")  # index, filter, properties handles; version; crc; magic


def key(i: int) -> bytes:
    return b"key%05d" % i


def build_store(path: str, compression: str = "lz4") -> dict[bytes, bytes]:
    """A store of several tables, fully compacted (so each key lives in one table), closed."""
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    with engine.open(path, compression=compression, **OPTS) as db:
        for i in range(3000):
            k = key(rng.randrange(NKEYS))
            if i % 7 == 0:
                db.delete(k)
                model.pop(k, None)
            else:
                v = b"value-%d-" % i + rng.randbytes(rng.randrange(30))
                db.put(k, v)
                model[k] = v
        db.compact()
        assert len(db._sv.version.levels[0]) == 0
        assert len(db._sv.version.files()) >= 3
    return model


def tables_of(path: str) -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".sst"))


def flip(path: str, offset: int, mask: int = 0x01) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= mask
    Path(path).write_bytes(bytes(data))


def footer(path: str) -> tuple[int, ...]:
    data = Path(path).read_bytes()
    return FOOTER.unpack(data[-FOOTER_SIZE:])


def open_table(path: str) -> Table:
    number = int(os.path.basename(path).split(".")[0])
    return Table(OSFileSystem(), path, number, LRUCache(0))


def reads_never_lie(db: engine.Engine, model: dict[bytes, bytes], bad: str
                    ) -> set[bytes]:
    """Every get returns the model's value or raises CorruptionError naming ``bad``.

    Returns the keys whose reads failed.
    """
    failed = set()
    for i in range(NKEYS):
        k = key(i)
        try:
            got = db.get(k)
        except engine.CorruptionError as exc:
            assert exc.path == bad, exc
            failed.add(k)
        else:
            assert got == model.get(k), k
    return failed


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, tuple[str, dict[bytes, bytes]]]:
    """One pristine store per compression, built once and copied by each test."""
    out = {}
    for compression in ("lz4", "none"):
        path = str(tmp_path_factory.mktemp("template") / compression)
        out[compression] = (path, build_store(path, compression))
    return out


def copy_store(templates: dict[str, tuple[str, dict[bytes, bytes]]], tmp_path: Path,
               compression: str = "lz4") -> tuple[str, dict[bytes, bytes]]:
    src, model = templates[compression]
    path = str(tmp_path / "db")
    shutil.copytree(src, path)
    os.remove(os.path.join(path, "LOCK"))
    return path, dict(model)


@pytest.fixture
def store(templates: dict[str, tuple[str, dict[bytes, bytes]]], tmp_path: Path
          ) -> tuple[str, dict[bytes, bytes]]:
    return copy_store(templates, tmp_path)


def test_undamaged_store_is_clean(store: tuple[str, dict[bytes, bytes]]) -> None:
    """Baseline: the store built for these tests opens, reads back and verifies clean."""
    path, model = store
    with engine.open(path, **OPTS) as db:
        assert reads_never_lie(db, model, "") == set()
        assert list(db.scan()) == sorted(model.items())
        report = db.verify()
        assert report.ok, report
        assert report.tables == len(tables_of(path))


@pytest.mark.parametrize("compression", ["lz4", "none"])
@pytest.mark.parametrize("where", ["body-first", "body-middle", "body-last", "type", "crc"])
def test_flipped_data_block_byte(templates: dict[str, tuple[str, dict[bytes, bytes]]],
                                 tmp_path: Path, compression: str, where: str) -> None:
    """A flipped data-block byte fails reads of that block and verify(); nothing else lies."""
    path, model = copy_store(templates, tmp_path, compression)
    sst = tables_of(path)[1]
    t = open_table(sst)
    block = 1 if t.num_blocks > 1 else 0
    offset, size = t._offsets[block], t._sizes[block]
    in_block = set(t.block(block).keys)
    t.close()
    assert in_block
    at = {"body-first": 0, "body-middle": size // 2, "body-last": size - 1, "type": size,
          "crc": size + 2}[where]
    flip(sst, offset + at)
    with engine.open(path, **OPTS) as db:
        failed = reads_never_lie(db, model, sst)
        assert failed == in_block  # exactly the keys of the damaged block, no others
        with pytest.raises(engine.CorruptionError) as info:
            for _ in db.scan():
                pass
        assert (info.value.path, info.value.offset) == (sst, offset)
        with pytest.raises(engine.CorruptionError):
            list(db.scan(min(in_block), max(in_block) + b"\x00", reverse=True))
        report = db.verify()
        assert not report.ok
        assert any(sst in p and f"offset {offset}" in p for p in report.problems), report


METADATA = ["index", "filter", "properties", "footer-index-handle", "footer-version",
            "footer-crc", "footer-magic"]
VERIFY_METADATA = ["index", "filter", "properties", "footer-magic"]


def metadata_offset(sst: str, where: str) -> tuple[int, int]:
    """(byte to flip, offset the error must report) for a metadata region of ``sst``."""
    size = os.path.getsize(sst)
    ioff, isize, foff, fsize, poff, psize, *_ = footer(sst)
    foot = size - FOOTER_SIZE
    return {
        "index": (ioff + isize // 2, ioff),
        "filter": (foff + fsize // 2, foff),
        "properties": (poff + psize // 2, poff),
        "footer-index-handle": (foot + 1, foot),
        "footer-version": (foot + 36, foot),
        "footer-crc": (foot + 41, foot),
        "footer-magic": (foot + 47, foot),
    }[where]


@pytest.mark.parametrize("where", METADATA)
def test_flipped_table_metadata_byte_fails_open(store: tuple[str, dict[bytes, bytes]],
                                                where: str) -> None:
    """A flipped byte in the index, filter, properties or footer makes open fail, naming it."""
    path, _ = store
    sst = tables_of(path)[0]
    at, reported = metadata_offset(sst, where)
    flip(sst, at)
    with pytest.raises(engine.CorruptionError) as info:
        engine.open(path, **OPTS)
    assert info.value.path == sst
    assert info.value.offset == reported
    assert sst in str(info.value)


@pytest.mark.parametrize("where", VERIFY_METADATA)
def test_verify_rereads_table_metadata(store: tuple[str, dict[bytes, bytes]],
                                       where: str) -> None:
    """verify() on an open store finds a table whose index/filter/properties/footer rotted."""
    path, _ = store
    sst = tables_of(path)[0]
    with engine.open(path, **OPTS) as db:
        at, _ = metadata_offset(sst, where)
        flip(sst, at)  # damage after open: only a re-read from disk can notice
        report = db.verify()
        assert not report.ok, f"verify() missed a flipped {where} byte in {sst}"
        assert any(sst in p for p in report.problems), report


def test_every_table_byte_is_protected() -> None:
    """Flipping any single byte of a table is caught by opening it or by check_table."""
    fs = MemFS()
    fs.mkdirs("/t")
    opts = Options(block_bytes=128, compression="lz4").validate()
    b = TableBuilder(fs.create("/t/000001.sst"), 1, opts)
    entries = [(b"k%03d" % i, -s, None if s % 5 == 0 else b"v%d" % s * 3)
               for i in range(40) for s in (i + 100, i + 50)]
    for e in entries:
        b.add(*e)
    b.finish()
    good = fs.read_file("/t/000001.sst")
    assert 1000 < len(good) < 6000
    for offset in range(len(good)):
        bad = bytearray(good)
        bad[offset] ^= 0x20
        f = fs.create("/t/000002.sst")
        f.append(bytes(bad))
        f.close()
        report = VerifyReport()
        try:
            table = Table(fs, "/t/000002.sst", 2, LRUCache(0))
        except engine.CorruptionError as exc:
            assert exc.path == "/t/000002.sst"
            continue
        check_table(fs, "/t/000002.sst", 2, report)
        assert not report.ok, f"flip at offset {offset} of {len(good)} went unnoticed"
        for i in range(table.num_blocks):  # and reads either fail or are right
            try:
                blk = table.read_block_uncached(i)
                got = blk.entries(0, len(blk))
            except engine.CorruptionError:
                continue
            assert set(got) <= set(entries)


def manifest_path(path: str) -> str:
    current = Path(path, "CURRENT").read_text().split("\n")[0]
    return os.path.join(path, current)


def manifest_records(path: str) -> list[tuple[int, bytes]]:
    mpath = manifest_path(path)
    return read_log(mpath, Path(mpath).read_bytes()).records


def store_with_edits(path: str, model: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Add three flush edits (and no compaction after them) to the store's live manifest."""
    quiet = {**OPTS, "memtable_bytes": 1 << 20, "l0_compaction_trigger": 8,
             "l0_slowdown_trigger": 8}
    with engine.open(path, **quiet) as db:
        for round_ in range(3):
            for i in range(0, NKEYS, 3):
                v = b"round-%d" % round_
                db.put(key(i), v)
                model[key(i)] = v
            db.flush()
        assert len(db._sv.version.levels[0]) == 3
    records = manifest_records(path)
    assert len(records) == 5  # header, snapshot edit, three flush edits
    return model


@pytest.mark.parametrize("record", [0, 1, 2], ids=["header", "snapshot-edit", "middle-edit"])
def test_flipped_manifest_byte_before_last_edit(store: tuple[str, dict[bytes, bytes]],
                                                record: int) -> None:
    """Damage to a manifest record that valid records follow fails open with its offset."""
    path, model = store
    store_with_edits(path, model)
    mpath = manifest_path(path)
    offset, payload = manifest_records(path)[record]
    flip(mpath, offset + HEADER_SIZE + len(payload) // 2)
    with pytest.raises(engine.CorruptionError) as info:
        engine.open(path, **OPTS)
    assert (info.value.path, info.value.offset) == (mpath, offset)


def test_flipped_byte_in_last_manifest_edit_never_lies(store: tuple[str, dict[bytes, bytes]]
                                                       ) -> None:
    """A flipped byte in the last (durable, acted-upon) manifest edit must not lose data."""
    path, model = store
    store_with_edits(path, model)
    mpath = manifest_path(path)
    offset, payload = manifest_records(path)[-1]
    flip(mpath, offset + HEADER_SIZE + len(payload) // 2)
    try:
        db = engine.open(path, **OPTS)
    except engine.CorruptionError as exc:
        assert exc.path == mpath
        return
    with db:
        assert reads_never_lie(db, model, mpath) == set(), "stale values after manifest damage"


def test_flipped_byte_in_only_manifest_edit(store: tuple[str, dict[bytes, bytes]]) -> None:
    """A manifest whose single edit is damaged cannot be recovered: CorruptionError naming it."""
    path, _ = store
    with engine.open(path, **OPTS):
        pass  # a fresh manifest: file header plus one snapshot edit
    records = manifest_records(path)
    assert len(records) == 2
    mpath = manifest_path(path)
    offset, payload = records[1]
    flip(mpath, offset + HEADER_SIZE + len(payload) // 2)
    with pytest.raises(engine.CorruptionError) as info:
        engine.open(path, **OPTS)
    assert info.value.path == mpath


def test_every_flipped_current_byte(store: tuple[str, dict[bytes, bytes]]) -> None:
    """Any single flipped bit in CURRENT is a CorruptionError naming CURRENT."""
    path, model = store
    current = os.path.join(path, "CURRENT")
    good = Path(current).read_bytes()
    for offset in range(len(good)):
        for mask in (0x01, 0x80):
            bad = bytearray(good)
            bad[offset] ^= mask
            Path(current).write_bytes(bytes(bad))
            with pytest.raises(engine.CorruptionError) as info:
                engine.open(path, **OPTS)
            assert info.value.path == current, (offset, mask)
    Path(current).write_bytes(good)
    with engine.open(path, **OPTS) as db:
        assert list(db.scan()) == sorted(model.items())


def test_current_naming_missing_manifest(store: tuple[str, dict[bytes, bytes]]) -> None:
    """CURRENT naming a manifest that does not exist is a CorruptionError saying which."""
    path, _ = store
    mpath = manifest_path(path)
    os.remove(mpath)
    with pytest.raises(engine.CorruptionError, match=os.path.basename(mpath)):
        engine.open(path, **OPTS)


def test_missing_current_with_store_files(store: tuple[str, dict[bytes, bytes]]) -> None:
    """A directory with store files but no CURRENT is refused, not silently re-created."""
    path, _ = store
    os.remove(os.path.join(path, "CURRENT"))
    with pytest.raises(engine.CorruptionError) as info:
        engine.open(path, **OPTS)
    assert info.value.path == os.path.join(path, "CURRENT")
    assert tables_of(path)  # nothing was deleted


def test_missing_table_file(store: tuple[str, dict[bytes, bytes]]) -> None:
    """A table referenced by the manifest but absent fails open with a message naming it."""
    path, _ = store
    sst = tables_of(path)[1]
    os.remove(sst)
    with pytest.raises(engine.CorruptionError, match="missing") as info:
        engine.open(path, **OPTS)
    assert info.value.path == sst
    assert os.path.basename(sst) in str(info.value)


def test_truncated_table_file(store: tuple[str, dict[bytes, bytes]]) -> None:
    """A table cut short (so its size disagrees with the manifest) fails open naming it."""
    path, _ = store
    sst = tables_of(path)[0]
    data = Path(sst).read_bytes()
    Path(sst).write_bytes(data[:-1])
    with pytest.raises(engine.CorruptionError) as info:
        engine.open(path, **OPTS)
    assert info.value.path == sst


def test_newer_table_format_version_is_refused(store: tuple[str, dict[bytes, bytes]]) -> None:
    """A table whose footer says a newer format version (with a valid crc) is refused by version."""
    path, _ = store
    sst = tables_of(path)[0]
    data = bytearray(Path(sst).read_bytes())
    foot = len(data) - FOOTER_SIZE
    fields = list(FOOTER.unpack_from(data, foot))
    assert fields[6] == FORMAT_VERSION
    fields[6] = FORMAT_VERSION + 1
    head = FOOTER.pack(*fields)[:40]
    fields[7] = mask_crc(crc(head))
    data[foot:] = FOOTER.pack(*fields)
    Path(sst).write_bytes(bytes(data))
    with pytest.raises(engine.CorruptionError, match=f"version {FORMAT_VERSION + 1}") as info:
        engine.open(path, **OPTS)
    assert info.value.path == sst
    assert "newer" in str(info.value)
