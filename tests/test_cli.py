"""``python -m engine``: the offline inspection tool, run as a user runs it (a subprocess).

Two stores are built once per module and copied per test: ``big`` (small
memtables, so many flushes and compactions: tables in L0/L1 plus a newest
WAL segment with a few records) and ``small`` (a handful of known writes, so
dumps can be checked line by line). Damage is made by flipping bytes in the
copy. Every command must leave the directory byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.cache import LRUCache
from engine.fs import OSFileSystem
from engine.manifest import Manifest
from engine.record import HEADER_SIZE, read_log
from engine.sstable import Table

ROOT = Path(__file__).resolve().parent.parent
BIG_OPTS: dict[str, object] = dict(memtable_bytes=4096, block_bytes=256,
                                   target_file_bytes=4096, l0_compaction_trigger=2,
                                   sync="none")
BIG_WRITES = 1500
TAIL_WRITES = 5  # written after the last flush: they stay in the newest WAL segment

# ------------------------------------------------------------------ helpers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, check=False)


def listing(path: Path) -> dict[str, tuple[int, str, int]]:
    """name -> (size, sha256 of the contents, mtime_ns) for every file in ``path``."""
    out = {}
    for p in sorted(path.iterdir()):
        st = p.stat()
        out[p.name] = (st.st_size, hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


def files(path: Path, suffix: str) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name.endswith(suffix))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def live_tables(path: Path) -> list[tuple[int, int]]:
    """(level, number) of every table the manifest lists, read without opening the store."""
    state = Manifest.recover(OSFileSystem(), str(path), 7)
    return [(level, f.number) for level, f in state.version.files()]


# ------------------------------------------------------------------ stores


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    big = root / "big"
    rng = random.Random(11)
    with engine.open(str(big), **BIG_OPTS) as db:  # type: ignore[arg-type]
        for i in range(BIG_WRITES):
            k = b"key%04d" % rng.randrange(400)
            if i % 10 == 0:
                db.delete(k)
            else:
                db.put(k, b"value-%d-" % i + rng.randbytes(rng.randrange(20)))
        db.flush()
        for i in range(TAIL_WRITES):
            db.put(b"tail%d" % i, b"t" * i)
    small = root / "small"
    with engine.open(str(small)) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"\x00\xff")
        db.delete(b"c")
        db.flush()  # table: a@1, b@2, c@3 (tombstone)
        db.put(b"k", b"v")  # WAL: seq 4
        with db.batch() as batch:  # WAL: seq 5, three operations
            batch.put(b"x", b"1")
            batch.put(b"y", b"2")
            batch.delete(b"c")
    return {"big": big, "small": small}


@pytest.fixture
def big(templates: dict[str, Path], tmp_path: Path) -> Path:
    dest = tmp_path / "big"
    shutil.copytree(templates["big"], dest)
    return dest


@pytest.fixture
def small(templates: dict[str, Path], tmp_path: Path) -> Path:
    dest = tmp_path / "small"
    shutil.copytree(templates["small"], dest)
    return dest


def test_the_big_store_has_what_the_tests_need(big: Path) -> None:
    assert len(live_tables(big)) >= 3
    assert len(files(big, ".log")) == 1
    wal = files(big, ".log")[0]
    assert len(read_log(str(wal), wal.read_bytes()).records) == 1 + TAIL_WRITES


# ------------------------------------------------------------------ usage


def test_help() -> None:
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for word in ("stats", "verify", "dump-sst", "dump-wal", "dump-manifest", "exit status"):
        assert word in r.stdout
    expected = {"stats": "--json", "verify": "exit status", "dump-sst": "--blocks",
                "dump-wal": "torn tail", "dump-manifest": "version edit"}
    for command, word in expected.items():
        r = cli(command, "--help")
        assert r.returncode == 0, (command, r.stderr)
        assert r.stdout.startswith(f"usage: python -m engine {command}"), r.stdout
        assert word in r.stdout, (command, r.stdout)


@pytest.mark.parametrize("args, message", [
    ((), "required: COMMAND"),
    (("frobnicate",), "invalid choice"),
    (("stats",), "required: PATH"),
    (("dump-sst", "x.sst", "--limit", "-1"), "must be >= 0"),
    (("dump-wal", "x.log", "--limit", "many"), "not a whole number"),
    (("verify", "--no-such-flag", "."), "unrecognized arguments"),
])
def test_bad_arguments_exit_2(args: tuple[str, ...], message: str) -> None:
    r = cli(*args)
    assert r.returncode == 2, r
    assert "usage: python -m engine" in r.stderr
    assert message in r.stderr, r.stderr


def test_bad_paths_exit_2(tmp_path: Path, small: Path) -> None:
    missing = tmp_path / "nope"
    for args in (("stats", str(missing)), ("verify", str(missing)),
                 ("dump-sst", str(missing)), ("dump-wal", str(missing)),
                 ("dump-manifest", str(missing))):
        r = cli(*args)
        assert r.returncode == 2, (args, r)
        assert f"{missing} does not exist" in r.stderr, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("verify", str(empty))
    assert r.returncode == 2 and "not a stratakv store" in r.stderr, r
    r = cli("dump-wal", str(small))
    assert r.returncode == 2 and "is not a file" in r.stderr, r
    r = cli("dump-wal", str(files(small, ".sst")[0]))
    assert r.returncode == 2 and "use dump-sst" in r.stderr, r


# ------------------------------------------------------------------ stats


def test_stats_reports_levels_tables_and_wal(big: Path) -> None:
    r = cli("stats", str(big))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    manifest = next(p.name for p in big.iterdir() if p.name.startswith("MANIFEST-"))
    assert manifest in out
    for level, number in live_tables(big):
        line = next(x for x in out.splitlines() if x.startswith(f"L{level}") and
                    f"{number:06d}.sst" in x)
        assert "MISSING" not in line
    wal = files(big, ".log")[0].name
    assert f"{wal}" in out and "live, newest" in out
    assert f"{BIG_WRITES + TAIL_WRITES} with the WAL" in out
    assert "in use         no" in out


def test_stats_json_matches_the_files(big: Path) -> None:
    r = cli("stats", "--json", str(big))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    state = Manifest.recover(OSFileSystem(), str(big), 7)
    assert doc["last_sequence"] == state.last_sequence
    assert doc["last_sequence_with_wal"] == BIG_WRITES + TAIL_WRITES
    assert doc["log_number"] == state.log_number
    assert {t["name"] for t in doc["tables"]} == {p.name for p in files(big, ".sst")}
    for t in doc["tables"]:
        assert t["bytes"] == t["manifest_bytes"] == (big / t["name"]).stat().st_size
    by_level = {lv["level"]: lv for lv in doc["levels"]}
    for level, tables in enumerate(state.version.levels):
        if tables:
            assert by_level[level]["files"] == len(tables)
            assert by_level[level]["entries"] == sum(f.entries for f in tables)
    [wal] = doc["wal_segments"]
    assert wal["live"] and wal["batches"] == TAIL_WRITES and wal["torn"] is None
    assert doc["total_bytes"] == sum(p.stat().st_size for p in big.iterdir())
    assert doc["missing_tables"] == []


def test_read_only_commands_leave_the_store_unchanged(big: Path, tmp_path: Path) -> None:
    # A torn WAL tail is what engine.open() would repair (truncate): the tool must not.
    wal = files(big, ".log")[0]
    data = wal.read_bytes()
    wal.write_bytes(data[:-3])
    before = listing(big)
    table = str(files(big, ".sst")[0])
    for args in (("stats", str(big)), ("stats", "--json", str(big)), ("verify", str(big)),
                 ("verify", "--json", str(big)), ("dump-sst", "--blocks", table),
                 ("dump-wal", str(wal)), ("dump-manifest", str(big)),
                 ("get", str(big), "tail1"), ("scan", str(big)), ("scan", str(big), "key01")):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert listing(big) == before, args
    # The check above can see a change: opening the store (recovery) makes several.
    opened = tmp_path / "opened"
    shutil.copytree(big, opened, copy_function=shutil.copy2)
    assert listing(opened) == before
    engine.open(str(opened)).close()
    assert listing(opened) != before


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks")
def test_an_open_store_is_reported_in_use(small: Path) -> None:
    with engine.open(str(small)):
        r = cli("stats", str(small))
        assert r.returncode == 0, r.stderr
        assert "in use         yes" in r.stdout
        r = cli("verify", str(small))
        assert r.returncode == 0, r.stdout
        assert "an engine has the store open" in r.stdout


# ------------------------------------------------------------------ verify


def test_verify_a_good_store(big: Path) -> None:
    r = cli("verify", str(big))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("OK:")
    for _, number in live_tables(big):
        assert f"{number:06d}.sst" in r.stdout
    doc = json.loads(cli("verify", "--json", str(big)).stdout)
    assert doc["ok"] and doc["problems"] == [] and doc["tables"] == len(live_tables(big))
    assert doc["wal_batches"] == TAIL_WRITES


def test_verify_finds_a_flipped_byte_in_a_data_block(big: Path) -> None:
    level, number = live_tables(big)[-1]
    path = big / f"{number:06d}.sst"
    table = Table(OSFileSystem(), str(path), number, LRUCache(0))
    offset = table.block_offset(1)
    table.close()
    flip(path, offset + 3)
    r = cli("verify", str(big))
    assert r.returncode == 1, r.stdout
    problem = next(x for x in r.stdout.splitlines() if x.startswith("PROBLEM"))
    assert path.name in problem and f"L{level}" in problem
    assert f"{path} at offset {offset}" in problem and "checksum mismatch" in problem
    assert r.stdout.splitlines()[-1].startswith("CORRUPT:")
    doc = json.loads(cli("verify", "--json", str(big)).stdout)
    assert not doc["ok"] and str(path) in doc["problems"][0]
    # dump-sst prints what precedes the damage, then the error, and exits 1.
    r = cli("dump-sst", str(path))
    assert r.returncode == 1
    assert "properties:" in r.stdout and " : PUT " in r.stdout
    assert f"corruption in {path} at offset {offset}" in r.stderr


def test_verify_finds_a_flipped_byte_in_a_mid_wal_record(big: Path) -> None:
    wal = files(big, ".log")[0]
    records = read_log(str(wal), wal.read_bytes()).records
    damaged = records[2][0]  # a write group with valid records after it
    flip(wal, damaged + HEADER_SIZE + 4)
    r = cli("verify", str(big))
    assert r.returncode == 1, r.stdout
    problem = next(x for x in r.stdout.splitlines() if x.startswith("PROBLEM"))
    assert wal.name in problem and f"{wal} at offset {damaged}" in problem
    r = cli("dump-wal", str(wal))
    assert r.returncode == 1
    assert f"corruption in {wal} at offset {damaged}" in r.stderr
    assert "batch seq" in r.stdout  # the record before the damage is still shown


def test_verify_torn_wal_tail_is_a_note(big: Path) -> None:
    wal = files(big, ".log")[0]
    last = read_log(str(wal), wal.read_bytes()).records[-1][0]
    with open(wal, "r+b") as f:
        f.truncate(last + 10)
    r = cli("verify", str(big))
    assert r.returncode == 0, r.stdout
    note = next(x for x in r.stdout.splitlines() if x.startswith("note"))
    assert wal.name in note and f"torn record at offset {last}" in note
    r = cli("dump-wal", str(wal))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith(f"note: torn tail at offset {last}")
    assert f"{TAIL_WRITES - 1} batches" in r.stdout


def test_verify_names_a_missing_table(big: Path) -> None:
    level, number = live_tables(big)[0]
    (big / f"{number:06d}.sst").unlink()
    r = cli("verify", str(big))
    assert r.returncode == 1
    problem = next(x for x in r.stdout.splitlines() if x.startswith("PROBLEM"))
    assert f"{number:06d}.sst" in problem and "missing" in problem and f"L{level}" in problem


def test_verify_finds_a_damaged_manifest(big: Path) -> None:
    manifest = next(p for p in big.iterdir() if p.name.startswith("MANIFEST-"))
    records = read_log(str(manifest), manifest.read_bytes()).records
    flip(manifest, records[1][0] + HEADER_SIZE + 2)
    r = cli("verify", str(big))
    assert r.returncode == 1
    assert any(x.startswith("PROBLEM") and manifest.name in x for x in r.stdout.splitlines())
    # With the manifest unreadable, every table in the directory is still checked.
    assert r.stdout.count("table ?") == len(files(big, ".sst"))
    assert cli("stats", str(big)).returncode == 1
    assert cli("dump-manifest", str(big)).returncode == 1


# ------------------------------------------------------------------ dumps


def test_dump_sst(small: Path) -> None:
    [table] = files(small, ".sst")
    r = cli("dump-sst", str(table))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-4:] == ["entries:", "  b'a' @ 1 : PUT b'1'", "  b'b' @ 2 : PUT b'\\x00\\xff'",
                          "  b'c' @ 3 : DELETE"]
    for fact in ("entries          3", "deletions        1", "min_seq          1",
                 "max_seq          3", "smallest         b'a'", "largest          b'c'"):
        assert fact in r.stdout, fact
    r = cli("dump-sst", "--hex", "--limit", "2", str(table))
    assert r.stdout.splitlines()[-3:] == ["  61 @ 1 : PUT 31", "  62 @ 2 : PUT 00ff",
                                          "... more entries not shown (--limit 2)"]
    r = cli("dump-sst", "--blocks", "--limit", "0", str(table))
    lines = r.stdout.splitlines()
    assert "blocks (1):" in lines and "entries:" not in lines
    row = lines[lines.index("blocks (1):") + 2].split()
    assert row[:2] == ["0", "0"] and row[5:] == ["3", "b'a'", "b'c'"]


def test_dump_sst_of_a_big_table(big: Path) -> None:
    number = live_tables(big)[0][1]
    path = big / f"{number:06d}.sst"
    table = Table(OSFileSystem(), str(path), number, LRUCache(0))
    props, blocks = table.props, table.num_blocks
    table.close()
    r = cli("dump-sst", "--blocks", str(path))
    assert r.returncode == 0, r.stderr
    assert f"blocks ({blocks}):" in r.stdout
    assert sum(" @ " in x for x in r.stdout.splitlines()) == props.entries
    assert sum(x.endswith(": DELETE") for x in r.stdout.splitlines()) == props.deletions


def test_dump_wal(small: Path) -> None:
    [wal] = files(small, ".log")
    r = cli("dump-wal", str(wal))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1:] == [
        "write group @ offset 29: 1 batch",
        "  batch seq 4: 1 op",
        "    PUT    b'k' : b'v'",
        "write group @ offset 64: 1 batch",
        "  batch seq 5: 3 ops",
        "    PUT    b'x' : b'1'",
        "    PUT    b'y' : b'2'",
        "    DELETE b'c'",
        "summary: 2 write groups, 2 batches, 4 operations, sequences 4..5",
    ]
    r = cli("dump-wal", "--limit", "1", str(wal))
    assert "... 1 more batch not shown (--limit 1)" in r.stdout
    assert "seq 5" not in r.stdout


def test_dump_manifest(small: Path) -> None:
    r = cli("dump-manifest", str(small))
    assert r.returncode == 0, r.stderr
    [table] = files(small, ".sst")
    manifest = next(p for p in small.iterdir() if p.name.startswith("MANIFEST-"))
    assert f"CURRENT names {manifest}" in r.stdout
    assert "edit 1 @ offset 29:" in r.stdout
    assert f"add    L0 {table.name}" in r.stdout
    assert "seq 1..3" in r.stdout and "keys b'a' .. b'c'" in r.stdout
    assert "last_sequence 3" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("  L0: 1 table")
    by_file = cli("dump-manifest", str(manifest))
    assert by_file.returncode == 0
    assert by_file.stdout == r.stdout.split("\n", 1)[1]  # the same, less the CURRENT line


# ------------------------------------------------------------------ get, scan, other file kinds


def test_get_prints_the_current_value(small: Path) -> None:
    """get reads tables and WAL: newest version wins, a tombstone is 'not found' (exit 1)."""
    assert cli("get", str(small), "a").stdout == "1\n"  # in the table
    assert cli("get", str(small), "x").stdout == "1\n"  # only in the WAL
    r = cli("get", str(small), "c")  # put never, deleted twice
    assert (r.returncode, r.stdout) == (1, "")
    assert "c: not found" in r.stderr
    assert cli("get", str(small), "b").stdout == "\\x00\\xff\n"  # escapes, not raw bytes
    r = cli("get", "--hex", str(small), "62")
    assert (r.returncode, r.stdout) == (0, "00ff\n")
    r = cli("get", "--hex", str(small), "zz")
    assert r.returncode == 2 and "not hex" in r.stderr


def test_scan_prints_a_key_range(small: Path) -> None:
    """scan [START [END]]: START inclusive, END exclusive, deleted keys absent, --limit."""
    def scan(*args: str) -> list[str]:
        r = cli("scan", str(small), *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    assert scan() == ["a : 1", "b : \\x00\\xff", "k : v", "x : 1", "y : 2"]
    assert scan("b") == ["b : \\x00\\xff", "k : v", "x : 1", "y : 2"]
    assert scan("b", "x") == ["b : \\x00\\xff", "k : v"]
    assert scan("--limit", "2") == ["a : 1", "b : \\x00\\xff"]
    assert scan("6b", "79", "--hex") == ["6b : 76", "78 : 31"]
    assert scan("z") == []


def test_get_and_scan_match_the_engine_on_the_big_store(big: Path) -> None:
    """Read from the files, the tool sees exactly what engine.open() would show."""
    r = cli("scan", "--hex", str(big))
    assert r.returncode == 0, r.stderr
    shown = [tuple(bytes.fromhex(h) for h in line.split(" : ")) for line in r.stdout.splitlines()]
    with engine.open(str(big)) as db:
        assert shown == list(db.scan())
        k, v = shown[len(shown) // 2]
    assert cli("get", "--hex", str(big), k.hex()).stdout.strip() == v.hex()


def test_dump_wal_of_a_replication_log_names_the_replication_tool(tmp_path: Path) -> None:
    """A healthy .rlog used to be reported as corruption; now: what it is and what reads it."""
    import replication

    with replication.open(str(tmp_path / "c"), nodes=3) as store:
        store.put("k", "v")
    rlog = tmp_path / "c" / "node-0" / "log" / "000001.rlog"
    r = cli("dump-wal", str(rlog))
    assert r.returncode == 2, r.stderr
    assert "corruption" not in r.stderr
    assert "replication log segment" in r.stderr
    assert f"python -m replication dump-rlog {rlog}" in r.stderr
    r = cli("stats", str(tmp_path / "c"))
    assert r.returncode == 2
    assert "not a stratakv store" not in r.stderr
    assert "cluster directory" in r.stderr and "python -m replication stats" in r.stderr
    assert str(tmp_path / "c" / "node-2" / "engine-000001") in r.stderr
    for command in ("verify", "dump-manifest", "scan"):
        r = cli(command, str(tmp_path / "c"))
        assert r.returncode == 2 and "python -m replication stats" in r.stderr, command
