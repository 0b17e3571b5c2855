"""SSTable building blocks: block codec, bloom filter, table writer/reader, block cache.

Each pure codec is checked against a naive twin (a sorted list of entries and
a linear search) with hypothesis; the table tests use tiny ``block_bytes`` so
that every table has many blocks and the block-boundary logic is exercised.
"""

from __future__ import annotations

import random
import struct
from bisect import bisect_left
from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import sstable
from engine.block import Block, BlockBuilder, BlockFormatError
from engine.bloom import LINE_BITS, BloomFilter, build_filter, key_hash, num_probes
from engine.cache import LRUCache
from engine.errors import CorruptionError
from engine.fs import MemFS
from engine.iterators import visible
from engine.options import Options
from engine.sstable import Table, TableBuilder

Entry = tuple[bytes, int, bytes | None]  # (key, -sequence, value or None for a tombstone)

MAX_SEQ = (1 << 56) - 1

keys_st = st.binary(min_size=0, max_size=12)
value_st = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def versioned_entries(draw: st.DrawFn, max_keys: int = 30, max_versions: int = 6,
                      max_seq: int = MAX_SEQ) -> list[Entry]:
    """Entries in internal-key order: distinct keys, each with 1+ distinct sequences."""
    keys = draw(st.lists(keys_st, max_size=max_keys, unique=True))
    out: list[Entry] = []
    for key in keys:
        seqs = draw(st.lists(st.integers(0, max_seq), min_size=1, max_size=max_versions,
                             unique=True))
        for seq in seqs:
            out.append((key, -seq, draw(value_st)))
    out.sort(key=lambda e: (e[0], e[1]))
    return out


def model_get(entries: Iterable[Entry], key: bytes, seq: int) -> tuple[int, bytes | None] | None:
    """Naive twin of Block.get / Table.get: linear search for the newest version <= seq."""
    best: tuple[int, bytes | None] | None = None
    for k, negseq, value in entries:
        if k == key and -negseq <= seq and (best is None or -negseq > best[0]):
            best = (-negseq, value)
    return best


def build_block(entries: list[Entry]) -> Block:
    b = BlockBuilder()
    for e in entries:
        b.add(*e)
    return Block(b.finish())


# ---------------------------------------------------------------------- block codec


@given(versioned_entries())
def test_block_round_trip(entries: list[Entry]) -> None:
    """Every entry (tombstones, empty values, many versions) decodes back exactly, in order."""
    blk = build_block(entries)
    assert len(blk) == len(entries)
    assert blk.entries(0, len(blk)) == entries
    assert blk.keys == [e[0] for e in entries]


@given(versioned_entries(max_seq=40), st.lists(st.integers(0, 45), min_size=1, max_size=8),
       st.lists(keys_st, max_size=5))
def test_block_get_matches_model(entries: list[Entry], seqs: list[int],
                                 extra_keys: list[bytes]) -> None:
    """Block.get returns the newest version <= seq (value or tombstone) and None for no version."""
    blk = build_block(entries)
    for key in {e[0] for e in entries} | set(extra_keys):
        for seq in seqs:
            assert blk.get(key, seq) == model_get(entries, key, seq), (key, seq)


@given(versioned_entries(max_seq=40), st.integers(0, 45), st.data())
def test_block_visible_items_match_visible_of_entries(entries: list[Entry], seq: int,
                                                      data: st.DataObject) -> None:
    """Block.visible_items(start, stop, seq), the one-pass scan filter, equals visible()
    of the same entries: newest version <= seq per key, tombstones hidden."""
    blk = build_block(entries)
    start = data.draw(st.integers(0, len(entries)))
    stop = data.draw(st.integers(start, len(entries)))
    assert blk.visible_items(start, stop, seq) == visible(blk.entries(start, stop), seq)


def test_block_get_ignores_matches_straddling_keys() -> None:
    """Keys are stored back to back: a query equal to bytes spanning two keys, or to a
    key's prefix or suffix, is not found -- only whole keys are."""
    entries: list[Entry] = [(b"ab", -4, b"1"), (b"abab", -3, b"2"), (b"b", -2, b"3"),
                            (b"ba", -1, b"4")]
    blk = build_block(entries)
    stored = b"".join(e[0] for e in entries)
    present = {e[0]: (-e[1], e[2]) for e in entries}
    for i in range(len(stored)):
        for j in range(i, len(stored) + 1):
            query = stored[i:j]
            assert blk.get(query, MAX_SEQ) == present.get(query), query


def test_block_get_with_repetitive_keys() -> None:
    """Keys that contain each other many times over (a, aa, aaa, ...): every one is found,
    and nothing else is."""
    entries: list[Entry] = [(b"a" * n, -n, b"%d" % n) for n in range(1, 91)]
    entries.sort(key=lambda e: (e[0], e[1]))
    blk = build_block(entries)
    for n in range(1, 91):
        assert blk.get(b"a" * n, MAX_SEQ) == (n, b"%d" % n)
    assert blk.get(b"a" * 91, MAX_SEQ) is None and blk.get(b"aab", MAX_SEQ) is None
    assert blk.get(b"a" * 50, 49) is None


@given(st.integers(1, 5), st.data())
def test_block_get_with_fixed_width_keys(width: int, data: st.DataObject) -> None:
    """A block whose keys all have one width is searched in C through shared key
    slices: gets (present, absent, shorter and longer keys) and ``find`` match the model."""
    keys = data.draw(st.lists(st.binary(min_size=width, max_size=width), min_size=1,
                              max_size=40, unique=True))
    entries: list[Entry] = []
    for key in keys:
        for seq in data.draw(st.lists(st.integers(1, 30), min_size=1, max_size=3, unique=True)):
            entries.append((key, -seq, data.draw(value_st)))
    entries.sort(key=lambda e: (e[0], e[1]))
    blk = build_block(entries)
    assert blk._fixed_slices() is not None  # the fixed-width search is the one under test
    probes = set(keys) | set(data.draw(st.lists(st.binary(max_size=width + 1), max_size=10)))
    for key in probes:
        assert blk.find(key) == bisect_left([e[0] for e in entries], key)
        for seq in (0, 1, 15, 30):
            assert blk.get(key, seq) == model_get(entries, key, seq), (key, seq)


def test_block_with_uneven_widths_is_not_taken_for_fixed() -> None:
    """Key lengths 2, 1, 3 sum to 3 keys of width 2; the block must still be searched
    by its real offsets."""
    entries: list[Entry] = [(b"aa", -1, b"1"), (b"b", -1, b"2"), (b"ccc", -1, b"3")]
    blk = build_block(entries)
    assert blk._fixed_slices() is None
    for key, _, value in entries:
        assert blk.get(key, MAX_SEQ) == (1, value)
    for absent in (b"a", b"ab", b"bc", b"cc", b"cccc"):
        assert blk.get(absent, MAX_SEQ) is None


def test_block_get_at_sequences() -> None:
    """Hand-written case: a key with put, delete, put; reads before, between and after."""
    entries: list[Entry] = [(b"a", -1, b"a1"), (b"k", -30, b"new"), (b"k", -20, None),
                            (b"k", -10, b""), (b"z", -5, b"z5")]
    blk = build_block(entries)
    assert blk.get(b"k", 9) is None
    assert blk.get(b"k", 10) == (10, b"")
    assert blk.get(b"k", 19) == (10, b"")
    assert blk.get(b"k", 20) == (20, None)
    assert blk.get(b"k", 29) == (20, None)
    assert blk.get(b"k", 30) == (30, b"new")
    assert blk.get(b"k", MAX_SEQ) == (30, b"new")
    assert blk.get(b"j", MAX_SEQ) is None and blk.get(b"zz", MAX_SEQ) is None
    assert blk.value(2) is None and blk.value(3) == b""


def test_empty_block_round_trip() -> None:
    """A block with no entries decodes to an empty block."""
    blk = Block(BlockBuilder().finish())
    assert len(blk) == 0 and blk.get(b"x", MAX_SEQ) is None


@pytest.mark.parametrize("cut", [0, 3, 7])
def test_block_shorter_than_trailer_is_rejected(cut: int) -> None:
    """A block too short to hold its trailer raises BlockFormatError."""
    with pytest.raises(BlockFormatError):
        Block(b"\x00" * cut)


def test_block_with_inconsistent_counts_is_rejected() -> None:
    """A trailer claiming more entries than the block can hold raises BlockFormatError."""
    raw = bytearray(BlockBuilder().finish())
    raw[-8] = 5  # count := 5, but the block has no room for five entries
    with pytest.raises(BlockFormatError):
        Block(bytes(raw))


# ---------------------------------------------------------------------- bloom filter


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=20), max_size=300, unique=True), st.integers(1, 20))
def test_bloom_has_no_false_negatives(keys: list[bytes], bits_per_key: int) -> None:
    """Every key put into a filter is reported as possibly present."""
    flt = BloomFilter(build_filter([key_hash(k) for k in keys], bits_per_key))
    for k in keys:
        assert flt.may_contain(*key_hash(k)), k


def test_bloom_false_positive_rate_near_one_percent() -> None:
    """At 10 bits/key, 50,000 absent keys give about 1% false positives (0.6%..1.5%;
    theory for 512-bit lines and 6 probes: 0.96%)."""
    present = [b"user%08d" % i for i in range(10_000)]
    flt = BloomFilter(build_filter([key_hash(k) for k in present], 10))
    absent = [b"absent%08d" % i for i in range(50_000)]
    hits = sum(flt.may_contain(*key_hash(k)) for k in absent)
    rate = hits / len(absent)
    assert 0.006 <= rate <= 0.015, rate


def test_bloom_probes_of_a_key_stay_in_one_line() -> None:
    """Blocked layout: every bit one key sets lies in a single 64-byte line."""
    for key in (b"a", b"user00000042", b"\xff" * 16):
        data = build_filter([key_hash(key)], 10 * 100)  # a 1000-bit budget: 2 lines
        bits = data[:-5]
        lines = {i // (LINE_BITS // 8) for i, byte in enumerate(bits) if byte}
        assert len(lines) == 1 and sum(bin(b).count("1") for b in bits) == num_probes(1000)


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=24), min_size=1, max_size=60, unique=True),
       st.integers(1, 24))
def test_bloom_bits_follow_the_format(keys: list[bytes], bits_per_key: int) -> None:
    """The filter sets exactly the bits FORMAT.md's rule names (line h mod nlines, probe i
    at (p + i*s) mod 512), written here as the plain loop the rotated masks replace."""
    probes = num_probes(bits_per_key)
    nlines = max(1, -(-len(keys) * bits_per_key // 512))
    expected = bytearray(nlines * 64)
    for key in keys:
        h, d = key_hash(key)
        base, p, s = (h % nlines) * 512, (d >> 1) % 512, (d >> 10) | 1
        for i in range(probes):
            bit = base + (p + i * s) % 512
            expected[bit >> 3] |= 1 << (bit & 7)
    data = build_filter([key_hash(k) for k in keys], bits_per_key)
    assert data == bytes(expected) + struct.pack("<BI", probes, nlines * 512)


def _v1_filter(hashes: list[tuple[int, int]], bits_per_key: int) -> bytes:
    """Format version 1's unblocked filter, written from FORMAT.md's history section."""
    probes = max(1, min(30, int(bits_per_key * 0.6)))
    nbits = max(64, len(hashes) * bits_per_key)
    bits = bytearray((nbits + 7) // 8)
    for h, delta in hashes:
        for i in range(probes):
            pos = (h + i * delta) % nbits
            bits[pos >> 3] |= 1 << (pos & 7)
    return bytes(bits) + struct.pack("<BI", probes, nbits)


def test_version_1_tables_are_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table written with format version 1 (unblocked filter) opens, reads every key
    back, and its filter still passes every present key and rejects absent ones."""
    entries: list[Entry] = [(b"key%05d" % i, -1, b"v%d" % i) for i in range(2000)]
    with monkeypatch.context() as m:
        m.setattr(sstable, "build_filter", _v1_filter)
        m.setattr(sstable, "FORMAT_VERSION", 1)
        fs, _ = write_table(entries)
    table = Table(fs, "/t/000007.sst", 7, LRUCache(1 << 20))
    assert table.props.format_version == 1
    for key, negseq, value in entries:
        assert table.may_contain(*key_hash(key)) and table.get(key, 5) == (-negseq, value)
    absent = [b"nokey%05d" % i for i in range(2000)]
    assert sum(table.may_contain(*key_hash(k)) for k in absent) < 60
    with pytest.raises(ValueError, match="whole lines"):  # the version decides the layout
        BloomFilter(_v1_filter([key_hash(e[0]) for e in entries], 10), blocked=True)


def test_bloom_more_bits_fewer_false_positives() -> None:
    """A 20 bits/key filter has fewer false positives than a 4 bits/key one."""
    present = [b"p%06d" % i for i in range(2000)]
    absent = [b"a%06d" % i for i in range(10_000)]

    def fp(bits: int) -> int:
        flt = BloomFilter(build_filter([key_hash(k) for k in present], bits))
        return sum(flt.may_contain(*key_hash(k)) for k in absent)

    assert fp(20) < fp(4)


@pytest.mark.parametrize("data", [b"", b"\x00" * 4, b"\x00\x06\x00\x00\x00",
                                  b"\x00" * 8 + b"\x06" + (1000).to_bytes(4, "little"),
                                  b"\x00" * 8 + b"\x06" + (64).to_bytes(4, "little")])
def test_bloom_rejects_inconsistent_filter(data: bytes) -> None:
    """A filter too short, with zero bits, claiming more bits than stored, or (blocked)
    not made of whole 512-bit lines is refused."""
    with pytest.raises(ValueError):
        BloomFilter(data)


# ---------------------------------------------------------------------- tables


def write_table(entries: list[Entry], *, block_bytes: int = 64, compression: str = "none",
                bloom_bits_per_key: int = 10, number: int = 7,
                cache_bytes: int = 1 << 20) -> tuple[MemFS, Table]:
    fs = MemFS()
    fs.mkdirs("/t")
    path = f"/t/{number:06d}.sst"
    opts = Options(block_bytes=block_bytes, compression=compression,  # type: ignore[arg-type]
                   bloom_bits_per_key=bloom_bits_per_key).validate()
    builder = TableBuilder(fs.create(path), number, opts)
    for e in entries:
        builder.add(*e)
    props = builder.finish()
    assert props.file_size == fs.file_size(path)
    return fs, Table(fs, path, number, LRUCache(cache_bytes))


def nonempty_entries(max_seq: int = MAX_SEQ) -> st.SearchStrategy[list[Entry]]:
    return versioned_entries(max_keys=40, max_versions=8, max_seq=max_seq).filter(bool)


def all_blocks(table: Table) -> list[Block]:
    return [table.block(i) for i in range(table.num_blocks)]


@settings(max_examples=60)
@given(nonempty_entries(), st.sampled_from(["lz4", "none"]), st.sampled_from([64, 200, 4096]))
def test_table_round_trip(entries: list[Entry], compression: str, block_bytes: int) -> None:
    """A table returns exactly the entries written, whatever the compression and block size."""
    _, table = write_table(entries, compression=compression, block_bytes=block_bytes)
    assert list(table.entries()) == entries


@settings(max_examples=60)
@given(nonempty_entries(), st.sampled_from(["lz4", "none"]))
def test_table_blocks_never_split_a_key(entries: list[Entry], compression: str) -> None:
    """Invariants 2 and 3: a user key lives in one block; the index holds each block's last key."""
    _, table = write_table(entries, compression=compression, block_bytes=64)
    blocks = all_blocks(table)
    for a, b in pairwise(blocks):
        assert a.keys[-1] < b.keys[0]
    assert [blk.keys[-1] for blk in blocks] == table._index_keys


def test_many_versions_of_one_key_stay_in_one_block() -> None:
    """200 versions of one key exceed block_bytes many times over yet share one block."""
    entries: list[Entry] = [(b"a", -1, b"x" * 60)]
    entries += [(b"hot", -s, None if s % 7 == 0 else b"v%d" % s) for s in range(300, 100, -1)]
    entries += [(b"z", -2, b"y" * 60)]
    _, table = write_table(entries, block_bytes=64)
    blocks = all_blocks(table)
    assert len(blocks) == 3
    assert [len(set(b.keys)) for b in blocks] == [1, 1, 1]
    assert len(blocks[1]) == 200
    assert table.get(b"hot", 150) == (150, b"v150")
    assert table.get(b"hot", 147) == (147, None)


@settings(max_examples=60)
@given(nonempty_entries(max_seq=60), st.sampled_from(["lz4", "none"]),
       st.lists(st.integers(0, 65), min_size=1, max_size=6), st.lists(keys_st, max_size=6))
def test_table_get_matches_model(entries: list[Entry], compression: str, seqs: list[int],
                                 extra_keys: list[bytes]) -> None:
    """Table.get at any sequence equals the newest version <= seq of the written entries."""
    _, table = write_table(entries, compression=compression, block_bytes=64)
    for key in {e[0] for e in entries} | set(extra_keys):
        for seq in seqs:
            assert table.get(key, seq) == model_get(entries, key, seq), (key, seq)


def drain(table: Table, lo: bytes | None, hi: bytes | None, reverse: bool) -> list[list[Entry]]:
    cur = table.cursor(lo, hi, reverse)
    chunks = []
    while chunk := cur.next_chunk():
        chunks.append(chunk)
    assert cur.next_chunk() == []
    return chunks


@settings(max_examples=80)
@given(nonempty_entries(), st.sampled_from(["lz4", "none"]),
       st.one_of(st.none(), keys_st), st.one_of(st.none(), keys_st))
def test_table_cursor_ranges_match_model(entries: list[Entry], compression: str,
                                         lo: bytes | None, hi: bytes | None) -> None:
    """Forward and reverse cursors over [lo, hi) give the model's slice in key-complete chunks."""
    _, table = write_table(entries, compression=compression, block_bytes=64)
    want = [e for e in entries if (lo is None or e[0] >= lo) and (hi is None or e[0] < hi)]
    fwd = drain(table, lo, hi, reverse=False)
    rev = drain(table, lo, hi, reverse=True)
    assert [e for chunk in fwd for e in chunk] == want
    assert [e for chunk in reversed(rev) for e in chunk] == want
    for chunks in (fwd, rev):
        for chunk in chunks:
            assert chunk == sorted(chunk)
        keys_per_chunk = [{e[0] for e in chunk} for chunk in chunks]
        for i, a in enumerate(keys_per_chunk):  # key-complete: no key in two chunks
            for b in keys_per_chunk[i + 1:]:
                assert not a & b


def test_table_cursor_bounds_on_block_edges() -> None:
    """Cursor bounds equal to, between and beyond block boundary keys are exact."""
    entries: list[Entry] = [(b"k%02d" % i, -i, b"v" * 20) for i in range(1, 40)]
    _, table = write_table(entries, block_bytes=64)
    assert table.num_blocks > 5
    boundaries = [blk.keys[-1] for blk in all_blocks(table)]
    probes: list[bytes | None] = [None, b"", b"k", b"k00", b"zz"]
    for k in boundaries:
        probes += [k, k + b"\x00", k[:-1]]
    for lo in probes:
        for hi in probes:
            want = [e for e in entries
                    if (lo is None or e[0] >= lo) and (hi is None or e[0] < hi)]
            got = [e for c in drain(table, lo, hi, False) for e in c]
            got_rev = [e for c in reversed(drain(table, lo, hi, True)) for e in c]
            assert got == want and got_rev == want, (lo, hi)


@given(nonempty_entries(), st.sampled_from(["lz4", "none"]))
@settings(max_examples=40)
def test_table_properties(entries: list[Entry], compression: str) -> None:
    """Properties record entries, deletions, sequence range, key range and byte counts."""
    fs, table = write_table(entries, compression=compression, block_bytes=64, number=42)
    p = table.props
    seqs = [-e[1] for e in entries]
    assert p.number == 42 and table.number == 42
    assert p.entries == len(entries)
    assert p.deletions == sum(e[2] is None for e in entries)
    assert (p.min_seq, p.max_seq) == (min(seqs), max(seqs))
    assert (p.smallest, p.largest) == (entries[0][0], entries[-1][0])
    assert p.data_blocks == table.num_blocks
    assert p.raw_key_bytes == sum(len(e[0]) for e in entries)
    assert p.raw_value_bytes == sum(len(e[2]) for e in entries if e[2] is not None)
    assert p.compression == compression
    assert p.file_size == fs.file_size(table.path)


def test_lz4_compresses_data_blocks() -> None:
    """Compressible values give a smaller file with lz4 than without, with equal contents."""
    entries: list[Entry] = [(b"key%05d" % i, -i, b"abcd" * 50) for i in range(1, 300)]
    _, plain = write_table(entries, compression="none", block_bytes=1024)
    _, packed = write_table(entries, compression="lz4", block_bytes=1024)
    assert packed.props.file_size < plain.props.file_size // 2
    assert list(packed.entries()) == list(plain.entries()) == entries


def test_table_filter_skips_absent_keys() -> None:
    """A table's bloom filter rejects most absent keys; without bits it has no filter."""
    entries: list[Entry] = [(b"key%05d" % i, -1, b"v") for i in range(2000)]
    _, table = write_table(entries)
    assert all(table.may_contain(*key_hash(e[0])) for e in entries)
    absent = [b"nokey%05d" % i for i in range(2000)]
    assert sum(table.may_contain(*key_hash(k)) for k in absent) < 100
    _, nofilter = write_table(entries, bloom_bits_per_key=0)
    assert all(nofilter.may_contain(*key_hash(k)) for k in absent)


def test_builder_refuses_out_of_order_and_empty_tables() -> None:
    """Keys out of order and an empty table are programming errors the builder refuses."""
    fs = MemFS()
    fs.mkdirs("/t")
    b = TableBuilder(fs.create("/t/000001.sst"), 1, Options())
    b.add(b"b", -1, b"x")
    with pytest.raises(ValueError):
        b.add(b"a", -2, b"y")
    empty = TableBuilder(fs.create("/t/000002.sst"), 2, Options())
    with pytest.raises(ValueError):
        empty.finish()


def test_table_too_short_is_corruption() -> None:
    """A file shorter than a footer is a CorruptionError naming it."""
    fs = MemFS()
    fs.mkdirs("/t")
    f = fs.create("/t/000001.sst")
    f.append(b"short")
    f.close()
    with pytest.raises(CorruptionError) as info:
        Table(fs, "/t/000001.sst", 1, LRUCache(1000))
    assert info.value.path == "/t/000001.sst"


def test_table_reads_go_through_the_cache() -> None:
    """Repeated reads of a block hit the cache; a zero-byte cache never holds anything."""
    entries: list[Entry] = [(b"k%03d" % i, -1, b"v" * 10) for i in range(100)]
    _, table = write_table(entries)
    cache = table._cache
    table.get(b"k050", 5)
    misses = cache.misses
    table.get(b"k050", 5)
    assert cache.hits >= 1 and cache.misses == misses
    _, uncached = write_table(entries, cache_bytes=0)
    assert uncached.get(b"k050", 5) == (1, b"v" * 10)
    assert len(uncached._cache) == 0 and uncached._cache.used_bytes == 0


# ---------------------------------------------------------------------- LRU cache


@settings(max_examples=100)
@given(st.integers(0, 500),
       st.lists(st.tuples(st.sampled_from(["put", "get", "erase"]), st.integers(0, 15),
                          st.integers(0, 300)), max_size=80))
def test_lru_cache_matches_model_and_stays_bounded(
        capacity: int, ops: list[tuple[str, int, int]]) -> None:
    """The cache equals a naive CLOCK twin (a list with reference bits, and a doorkeeper
    set that turns a new key away the first time it would need an eviction); bytes stay
    bounded."""
    cache: LRUCache[str] = LRUCache(capacity)
    model: list[list[object]] = []  # [key, value, charge, referenced], in clock order
    missed_once: set[int] = set()

    def used() -> int:
        return sum(int(e[2]) for e in model)  # type: ignore[call-overload]

    for op, k, charge in ops:
        key = (k % 3) << 40 | k  # three "files"
        if op == "put":
            present = any(e[0] == key for e in model)
            admit = charge <= capacity
            if admit and not present and used() + charge > capacity:
                admit = key in missed_once
                if admit:
                    missed_once.discard(key)
                else:
                    if len(missed_once) >= max(64, len(model)):
                        missed_once.clear()
                    missed_once.add(key)
            if admit:
                model[:] = [e for e in model if e[0] != key]
                model.append([key, f"v{k}.{charge}", charge, False])
                while used() > capacity:
                    victim = model.pop(0)
                    if victim[0] == key or victim[3]:  # second chance, never the new entry
                        victim[3] = False
                        model.append(victim)
            cache.put(key, f"v{k}.{charge}", charge)
        elif op == "get":
            hit = next((e for e in model if e[0] == key), None)
            if hit is not None:
                hit[3] = True
            assert cache.get(key) == (hit[1] if hit else None)
        else:
            model[:] = [e for e in model if int(e[0]) >> 40 != k % 3]  # type: ignore[call-overload]
            cache.erase_file(k % 3)
        assert cache.used_bytes <= capacity
        assert cache.used_bytes == used()
        assert len(cache) == len(model)


def test_lru_evicts_least_recently_used_first() -> None:
    """CLOCK: a hit gives an entry a second chance, so the oldest untouched one goes first."""
    cache: LRUCache[str] = LRUCache(300)
    cache.put(1, "a", 100)
    cache.put(2, "b", 100)
    cache.put(3, "c", 100)
    assert cache.get(1) == "a"  # order now: b, c, a
    cache.put(4, "d", 100)
    cache.put(4, "d", 100)  # the doorkeeper admits a key on its second miss
    assert cache.get(2) is None
    assert [cache.get(k) for k in (1, 3, 4)] == ["a", "c", "d"]
    cache.put(5, "e", 250)
    cache.put(5, "e", 250)  # needs 250 of 300: evicts a, c and d (all older than e)
    assert cache.used_bytes == 250 and len(cache) == 1 and cache.get(5) == "e"


def test_full_cache_admits_a_key_only_on_its_second_miss() -> None:
    """Once full, a key missed for the first time is turned away (nothing is evicted for a
    block read once); missed again while remembered, it is admitted. A cache with room
    admits everything."""
    cache: LRUCache[str] = LRUCache(300)
    for k in (1, 2, 3):
        cache.put(k, f"v{k}", 100)  # room: admitted at once
    assert len(cache) == 3 and cache.rejected == 0
    cache.put(4, "v4", 100)
    assert cache.get(4) is None and [cache.get(k) for k in (1, 2, 3)] == ["v1", "v2", "v3"]
    assert cache.rejected == 1
    cache.put(4, "v4", 100)
    assert cache.get(4) == "v4" and len(cache) == 3 and cache.used_bytes == 300
    for k in range(100, 170):  # more first misses than the doorkeeper remembers ...
        cache.put(k, "x", 100)
    cache.put(100, "x", 100)  # ... so the oldest of them counts as a first miss again
    assert cache.get(100) is None


def test_lru_refuses_entry_larger_than_capacity() -> None:
    """An entry charged more than the capacity is not cached and evicts nothing."""
    cache: LRUCache[str] = LRUCache(100)
    cache.put(1, "a", 60)
    cache.put(2, "huge", 101)
    assert cache.get(2) is None and cache.get(1) == "a" and cache.used_bytes == 60


def test_lru_replacing_a_key_recharges_it() -> None:
    """Putting an existing key replaces its value and its charge."""
    cache: LRUCache[str] = LRUCache(100)
    cache.put(1, "a", 60)
    cache.put(1, "b", 30)
    assert cache.get(1) == "b" and cache.used_bytes == 30 and len(cache) == 1


def test_lru_erase_file_drops_only_that_file() -> None:
    """erase_file removes every block of one file number and keeps the others."""
    cache: LRUCache[int] = LRUCache(10_000)
    rng = random.Random(5)
    for f in (1, 2, 3):
        for off in rng.sample(range(1 << 20), 10):
            cache.put(f << 40 | off, f, 10)
    cache.erase_file(2)
    assert len(cache) == 20 and cache.used_bytes == 200
