"""Micro-benchmarks of the engine's hot paths (see ``bench/micro/__init__.py`` to run them).

Each benchmark times one call of one hot path on data built once, outside the
timed function, by a fixture. Sizes (LevelDB db_bench's defaults where they
apply): keys are 16 bytes (``user%012d``), values 100 bytes and about 50%
compressible (50 random bytes twice, like db_bench's ``--compression_ratio``),
blocks 4 KiB, bloom filters 10 bits per key::

    memtable        100,000 keys; the first 1,000 also have 3 newer versions
    block           one data block of ~4 KiB (31 entries)
    bloom           10,000 keys
    log             150-byte and 40 KiB records; a 1 MiB log of 150-byte records
    codec           16-batch WAL write group; 100-op batch
    table           50,000 keys on a MemFS (lz4, 4 KiB blocks)
    scan            20,000 keys spread over 4 sources, 100 keys read
    ssi             50 active transactions (5 point reads each, 1 in 10 also
                    scans 10 keys) and 20 committed blind writes tracked
    engine          MemFS, sync="none"

Point lookups use one fixed key per benchmark, so they measure a warm CPU
cache; anything that mutates state either resets it per round
(``benchmark.pedantic`` with ``setup``) or runs a bounded number of rounds
so the structure stays within ~20% of its starting size.

The garbage collector stays on (its pauses are part of the cost of
allocating on a hot path), so the large fixtures -- memtables, tables,
engines -- are built per benchmark and dropped after it: a full collection
must not have to walk an earlier benchmark's 100,000 keys.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, islice

import lz4.block
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import engine
from engine.batch import decode_ops, encode_ops
from engine.block import Block, BlockBuilder
from engine.bloom import BloomFilter, build_filter, key_hash
from engine.cache import LRUCache
from engine.fs import MemFS
from engine.iterators import Cursor, LevelCursor, MemCursor, scan_items
from engine.memtable import Entry, MemTable
from engine.options import KiB, MiB, Options
from engine.record import LogWriter, read_log
from engine.ssi import Certifier, TxnState
from engine.sstable import Table, TableBuilder
from engine.wal import encode_group

VALUE_BYTES = 100
MEMTABLE_KEYS = 100_000
MULTI_VERSION_KEYS = 1_000  # the memtable's first 1,000 keys get 3 newer versions each
NEWER_VERSIONS = 3
BLOCK_BYTES = 4 * KiB
BLOOM_KEYS = 10_000
BLOOM_BITS_PER_KEY = 10
SMALL_RECORD_BYTES = 150
LARGE_RECORD_BYTES = 40 * KiB
LOG_BYTES = 1 * MiB
GROUP_BATCHES = 16
BATCH_OPS = 100
TABLE_KEYS = 50_000
SCAN_KEYS = 20_000
SCAN_SOURCES = 4
SCAN_LIMIT = 100
SSI_ACTIVE = 50
SSI_READS = 5
SSI_KEYSPACE = 1_000
SSI_COMMITTED = 20
ENGINE_KEYS = 100_000
MAX_SEQ = 2**56 - 1  # reads "at the latest sequence"


def user_key(i: int) -> bytes:
    """The ``i``-th 16-byte user key; keys sort in ``i`` order."""
    return b"user%012d" % i


def make_value(rng: random.Random) -> bytes:
    """A 100-byte value that lz4 compresses to about half."""
    half = rng.randbytes(VALUE_BYTES // 2)
    return half + half


class BufferFile:
    """An in-memory :class:`engine.fs.WritableFile` shaped like the OS file's write buffer.

    ``append`` copies into a bytearray, as ``_OSWritableFile`` does; instead of
    handing a full buffer to ``os.write`` it drops it, so memory stays bounded
    however many records a benchmark appends.
    """

    __slots__ = ("_buf", "_size", "path", "reset_bytes")

    def __init__(self, reset_bytes: int = 1 * MiB) -> None:
        self.path = "<buffer>"
        self._buf = bytearray()
        self._size = 0
        self.reset_bytes = reset_bytes

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= self.reset_bytes:
            del self._buf[:]

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    def size(self) -> int:
        return self._size

    def getvalue(self) -> bytes:
        return bytes(self._buf)


def pedantic(benchmark: BenchmarkFixture, target: Callable[..., object], *,
             setup: Callable[[], tuple[tuple[object, ...], dict[str, object]]] | None = None,
             rounds: int, iterations: int = 1, warmup_rounds: int = 0) -> None:
    """``benchmark.pedantic`` with types (pytest-benchmark leaves it unannotated)."""
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        target, setup=setup, rounds=rounds, iterations=iterations, warmup_rounds=warmup_rounds)


# -- memtable ---------------------------------------------------------------------------------


def build_memtable(seed: int) -> MemTable:
    """100,000 even-numbered keys inserted one per batch in random order, then newer versions."""
    rng = random.Random(seed)
    mem = MemTable(wal_number=1)
    order = list(range(MEMTABLE_KEYS))
    rng.shuffle(order)
    seq = 0
    for i in order:
        seq += 1
        mem.add(seq, {user_key(2 * i): make_value(rng)})
    for _ in range(NEWER_VERSIONS):
        for i in range(MULTI_VERSION_KEYS):
            seq += 1
            mem.add(seq, {user_key(2 * i): make_value(rng)})
    return mem


@pytest.fixture
def memtable() -> MemTable:
    """A 100,000-key memtable for a benchmark that only reads it."""
    return build_memtable(seed=1)


@pytest.fixture
def fresh_memtable() -> MemTable:
    """A 100,000-key memtable for one benchmark that writes to it."""
    return build_memtable(seed=2)


def _bounded_adds(benchmark: BenchmarkFixture, mem: MemTable,
                  keys: Callable[[random.Random], bytes]) -> None:
    """Time single-key ``mem.add`` calls: 1,000 rounds of 20, keys drawn by ``keys``."""
    rounds, iterations, warmup = 1_000, 20, 10
    rng = random.Random(3)
    seq = mem.last_seq
    items: list[tuple[int, dict[bytes, bytes | None]]] = []
    # pedantic makes one more looped call after the rounds (for the result),
    # and --benchmark-cprofile another: prepare two spare rounds' worth.
    for _ in range((rounds + warmup + 2) * iterations):
        seq += 1
        items.append((seq, {keys(rng): make_value(rng)}))
    it = iter(items)
    add = mem.add

    def add_one() -> None:
        s, ops = next(it)
        add(s, ops)

    pedantic(benchmark, add_one, rounds=rounds, iterations=iterations, warmup_rounds=warmup)


@pytest.mark.benchmark(group="memtable")
def test_memtable_add_new_key(benchmark: BenchmarkFixture, fresh_memtable: MemTable) -> None:
    """MemTable.add of a one-key batch with a new key (dict + SortedList insert): every put."""
    # Odd-numbered keys are absent and land between existing keys; ~20,000 of
    # them grow the table from 100,000 to ~120,000 keys.
    _bounded_adds(benchmark, fresh_memtable,
                  lambda rng: user_key(2 * rng.randrange(MEMTABLE_KEYS) + 1))


@pytest.mark.benchmark(group="memtable")
def test_memtable_add_overwrite(benchmark: BenchmarkFixture, fresh_memtable: MemTable) -> None:
    """MemTable.add of a one-key batch overwriting a key (no sorted insert): updates."""
    _bounded_adds(benchmark, fresh_memtable,
                  lambda rng: user_key(2 * rng.randrange(MEMTABLE_KEYS)))


@pytest.mark.benchmark(group="memtable")
def test_memtable_get_hit(benchmark: BenchmarkFixture, memtable: MemTable) -> None:
    """MemTable.get of a present key at the latest sequence: every get of recent data."""
    key = user_key(2 * 54_321)
    assert memtable.get(key, MAX_SEQ) is not None
    benchmark(memtable.get, key, MAX_SEQ)


@pytest.mark.benchmark(group="memtable")
def test_memtable_get_miss(benchmark: BenchmarkFixture, memtable: MemTable) -> None:
    """MemTable.get of an absent key: paid by every get that goes on to the tables."""
    key = user_key(2 * 54_321 + 1)
    assert memtable.get(key, MAX_SEQ) is None
    benchmark(memtable.get, key, MAX_SEQ)


@pytest.mark.benchmark(group="memtable")
def test_memtable_get_snapshot_old_version(benchmark: BenchmarkFixture,
                                           memtable: MemTable) -> None:
    """MemTable.get at an old snapshot, skipping 3 newer versions: snapshot/txn reads."""
    key = user_key(2 * 500)
    found = memtable.get(key, MEMTABLE_KEYS)
    assert found is not None and found[2] is None  # the oldest of 4 versions
    benchmark(memtable.get, key, MEMTABLE_KEYS)


@pytest.mark.benchmark(group="memtable")
def test_memtable_chunk_100(benchmark: BenchmarkFixture, memtable: MemTable) -> None:
    """MemTable.chunk of 100 keys (lock, irange, version walk): the memtable side of scans."""
    lo = user_key(2 * 50_000)
    assert len(memtable.chunk(lo, None, reverse=False, limit=100)) == 100
    benchmark(memtable.chunk, lo, None, reverse=False, limit=100)


# -- block ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockFixture:
    builder: BlockBuilder
    raw: bytes
    block: Block
    keys: list[bytes]


@pytest.fixture(scope="module")
def data_block() -> BlockFixture:
    """One data block as TableBuilder cuts it: entries until the estimate reaches 4 KiB."""
    rng = random.Random(4)
    builder = BlockBuilder()
    keys: list[bytes] = []
    i = 0
    while builder.size_estimate < BLOCK_BYTES:
        key = user_key(2 * i)
        builder.add(key, -(1_000 + i), make_value(rng))
        keys.append(key)
        i += 1
    raw = builder.finish()
    return BlockFixture(builder, raw, Block(raw), keys)


@pytest.mark.benchmark(group="block")
def test_block_encode(benchmark: BenchmarkFixture, data_block: BlockFixture) -> None:
    """BlockBuilder.finish of a 4 KiB block: once per block written by flush and compaction."""
    benchmark.extra_info.update(block_bytes=len(data_block.raw), entries=len(data_block.keys))
    benchmark(data_block.builder.finish)


@pytest.mark.benchmark(group="block")
def test_block_decode(benchmark: BenchmarkFixture, data_block: BlockFixture) -> None:
    """Block(raw) of a 4 KiB block: every block-cache miss and every block compaction reads."""
    benchmark.extra_info.update(block_bytes=len(data_block.raw), entries=len(data_block.keys))
    benchmark(Block, data_block.raw)


@pytest.mark.benchmark(group="block")
def test_block_get_hit(benchmark: BenchmarkFixture, data_block: BlockFixture) -> None:
    """Block.get of a present key (bisect + value slice): the last step of every table hit."""
    key = data_block.keys[len(data_block.keys) // 2]
    assert data_block.block.get(key, MAX_SEQ) is not None
    benchmark(data_block.block.get, key, MAX_SEQ)


@pytest.mark.benchmark(group="block")
def test_block_get_miss(benchmark: BenchmarkFixture, data_block: BlockFixture) -> None:
    """Block.get of an absent key: a bloom false positive or a table whose range holds the key."""
    key = data_block.keys[len(data_block.keys) // 2] + b"\x00"
    assert data_block.block.get(key, MAX_SEQ) is None
    benchmark(data_block.block.get, key, MAX_SEQ)


# -- bloom ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BloomFixture:
    hashes: list[tuple[int, int]]
    filter: BloomFilter
    hit: tuple[int, int]
    miss: tuple[int, int]
    miss_probes: int


@pytest.fixture(scope="module")
def bloom() -> BloomFixture:
    """A 10-bits-per-key filter of 10,000 keys, one present hash and one rejected absent hash."""
    hashes = [key_hash(user_key(2 * i)) for i in range(BLOOM_KEYS)]
    flt = BloomFilter(build_filter(hashes, BLOOM_BITS_PER_KEY))
    hit = hashes[BLOOM_KEYS // 2]
    # The first absent key the filter rejects (about 1% of absent keys pass),
    # and how many probes rejecting it takes (1 to 6; ~2 on average).
    miss = next(h for h in (key_hash(user_key(2 * i + 1)) for i in range(BLOOM_KEYS))
                if not flt.may_contain(*h))
    data = build_filter(hashes, BLOOM_BITS_PER_KEY)
    num_probes, nbits = struct.unpack_from("<BI", data, len(data) - 5)
    probes = 0
    for i in range(num_probes):
        probes += 1
        pos = (miss[0] + i * miss[1]) % nbits
        if not data[pos >> 3] >> (pos & 7) & 1:
            break
    return BloomFixture(hashes, flt, hit, miss, probes)


@pytest.mark.benchmark(group="bloom")
def test_bloom_key_hash(benchmark: BenchmarkFixture) -> None:
    """key_hash of a 16-byte key (crc32c + stride): once per get that reaches the tables."""
    benchmark(key_hash, user_key(12_345))


@pytest.mark.benchmark(group="bloom")
def test_bloom_build_filter_10k(benchmark: BenchmarkFixture, bloom: BloomFixture) -> None:
    """build_filter of 10,000 key hashes at 10 bits/key: once per table written."""
    benchmark(build_filter, bloom.hashes, BLOOM_BITS_PER_KEY)


@pytest.mark.benchmark(group="bloom")
def test_bloom_may_contain_hit(benchmark: BenchmarkFixture, bloom: BloomFixture) -> None:
    """BloomFilter.may_contain of a present key (all 6 probes): each table that holds the key."""
    assert bloom.filter.may_contain(*bloom.hit)
    benchmark(bloom.filter.may_contain, *bloom.hit)


@pytest.mark.benchmark(group="bloom")
def test_bloom_may_contain_miss(benchmark: BenchmarkFixture, bloom: BloomFixture) -> None:
    """BloomFilter.may_contain of an absent key: each table a get skips (most of them)."""
    benchmark.extra_info["probes"] = bloom.miss_probes
    benchmark(bloom.filter.may_contain, *bloom.miss)


# -- log framing ------------------------------------------------------------------------------


def _add_records(benchmark: BenchmarkFixture, payload_bytes: int) -> None:
    payload = random.Random(5).randbytes(payload_bytes)
    writer = LogWriter(BufferFile())
    benchmark(writer.add_record, payload)


@pytest.mark.benchmark(group="log")
def test_log_add_record_150b(benchmark: BenchmarkFixture) -> None:
    """LogWriter.add_record of 150 bytes (crc32c + header + copy): every WAL group, every put."""
    _add_records(benchmark, SMALL_RECORD_BYTES)


@pytest.mark.benchmark(group="log")
def test_log_add_record_40k(benchmark: BenchmarkFixture) -> None:
    """LogWriter.add_record of 40 KiB (2-3 fragments): large batches and busy group commits."""
    _add_records(benchmark, LARGE_RECORD_BYTES)


@pytest.fixture(scope="module")
def log_1mib() -> bytes:
    """A 1 MiB log of 150-byte records."""
    rng = random.Random(6)
    file = BufferFile(reset_bytes=2 * LOG_BYTES)
    writer = LogWriter(file)
    while file.size() < LOG_BYTES:
        writer.add_record(rng.randbytes(SMALL_RECORD_BYTES))
    return file.getvalue()


@pytest.mark.benchmark(group="log")
def test_log_read_1mib(benchmark: BenchmarkFixture, log_1mib: bytes) -> None:
    """read_log of a 1 MiB log of 150-byte records: WAL replay and manifest load at open."""
    scan = read_log("bench.log", log_1mib)
    assert scan.torn is None
    benchmark.extra_info.update(log_bytes=len(log_1mib), records=len(scan.records))
    benchmark(read_log, "bench.log", log_1mib)


# -- WAL and batch codecs ---------------------------------------------------------------------


@pytest.mark.benchmark(group="codec")
def test_codec_wal_encode_group_16(benchmark: BenchmarkFixture) -> None:
    """wal.encode_group of 16 one-put batches: the group-commit leader, once per group."""
    rng = random.Random(7)
    batches: list[tuple[int, dict[bytes, bytes | None]]] = [
        (100 + i, {user_key(i): make_value(rng)}) for i in range(GROUP_BATCHES)
    ]
    benchmark(encode_group, batches)


@pytest.fixture(scope="module")
def batch_ops() -> dict[bytes, bytes | None]:
    rng = random.Random(8)
    return {user_key(i): make_value(rng) for i in range(BATCH_OPS)}


@pytest.mark.benchmark(group="codec")
def test_codec_batch_encode_100(benchmark: BenchmarkFixture,
                                batch_ops: dict[bytes, bytes | None]) -> None:
    """encode_ops of a 100-op batch: WAL writes and replication log entries."""
    benchmark(encode_ops, batch_ops)


@pytest.mark.benchmark(group="codec")
def test_codec_batch_decode_100(benchmark: BenchmarkFixture,
                                batch_ops: dict[bytes, bytes | None]) -> None:
    """decode_ops of a 100-op batch: WAL replay and replicas applying log entries."""
    data = encode_ops(batch_ops)
    assert decode_ops(data) == (batch_ops, len(data))
    benchmark(decode_ops, data)


# -- lz4 --------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="lz4")
def test_lz4_compress_8k(benchmark: BenchmarkFixture, data_block: BlockFixture) -> None:
    """lz4.block.compress of a 4 KiB data block: the library cost per block written."""
    packed = lz4.block.compress(data_block.raw)
    benchmark.extra_info.update(raw_bytes=len(data_block.raw), packed_bytes=len(packed))
    benchmark(lz4.block.compress, data_block.raw)


@pytest.mark.benchmark(group="lz4")
def test_lz4_decompress_8k(benchmark: BenchmarkFixture, data_block: BlockFixture) -> None:
    """lz4.block.decompress of a 4 KiB data block: the library cost per block-cache miss."""
    packed = lz4.block.compress(data_block.raw)
    benchmark.extra_info.update(raw_bytes=len(data_block.raw), packed_bytes=len(packed))
    benchmark(lz4.block.decompress, packed)


# -- table ------------------------------------------------------------------------------------


def write_table(fs: MemFS, path: str, number: int, entries: list[Entry]) -> None:
    """Write ``entries`` (internal-key order) as table ``number`` with default Options."""
    builder = TableBuilder(fs.create(path), number, Options())
    for key, negseq, value in entries:
        builder.add(key, negseq, value)
    builder.finish()


@dataclass(frozen=True, slots=True)
class TableFixture:
    cached: Table
    uncached: Table
    key: bytes


@pytest.fixture
def table() -> Iterator[TableFixture]:
    """A 50,000-key table on a MemFS, opened with a 32 MiB cache and with LRUCache(0)."""
    rng = random.Random(9)
    fs = MemFS()
    fs.mkdirs("/db")
    entries: list[Entry] = [(user_key(2 * i), -(i + 1), make_value(rng))
                            for i in range(TABLE_KEYS)]
    write_table(fs, "/db/000001.sst", 1, entries)
    cached = Table(fs, "/db/000001.sst", 1, LRUCache(32 * MiB))
    uncached = Table(fs, "/db/000001.sst", 1, LRUCache(0))
    yield TableFixture(cached, uncached, user_key(2 * 31_415))
    cached.close()
    uncached.close()


@pytest.mark.benchmark(group="table")
def test_table_get_cached(benchmark: BenchmarkFixture, table: TableFixture) -> None:
    """Table.get with the block in the cache (index bisect, LRU hit, Block.get): hot reads."""
    assert table.cached.get(table.key, MAX_SEQ) is not None  # warms the cache
    benchmark.extra_info["blocks"] = table.cached.num_blocks
    benchmark(table.cached.get, table.key, MAX_SEQ)


@pytest.mark.benchmark(group="table")
def test_table_get_uncached(benchmark: BenchmarkFixture, table: TableFixture) -> None:
    """Table.get through LRUCache(0) (read, crc32c, lz4, Block decode): cold reads."""
    assert table.uncached.get(table.key, MAX_SEQ) is not None
    benchmark(table.uncached.get, table.key, MAX_SEQ)


# -- merged scan ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanFixture:
    mem: MemTable
    imm: MemTable
    l0: Table
    l1: Table
    seq: int
    lo: bytes


@pytest.fixture
def scan_sources() -> Iterator[ScanFixture]:
    """20,000 keys dealt round-robin to L1, L0, an immutable and the active memtable.

    The active memtable also holds a newer version of every 10th key of the
    other sources, so the merge has shadowed versions to drop.
    """
    rng = random.Random(10)
    fs = MemFS()
    fs.mkdirs("/db")
    seq = 0
    per_source: list[list[Entry]] = [[] for _ in range(SCAN_SOURCES)]
    for s in range(SCAN_SOURCES):
        for i in range(s, SCAN_KEYS, SCAN_SOURCES):
            seq += 1
            per_source[s].append((user_key(i), -seq, make_value(rng)))
    write_table(fs, "/db/000001.sst", 1, per_source[0])
    write_table(fs, "/db/000002.sst", 2, per_source[1])
    cache: LRUCache[Block] = LRUCache(32 * MiB)
    l1 = Table(fs, "/db/000001.sst", 1, cache)
    l0 = Table(fs, "/db/000002.sst", 2, cache)
    imm = MemTable(wal_number=3)
    for key, negseq, value in per_source[2]:
        imm.add(-negseq, {key: value})
    mem = MemTable(wal_number=4)
    for key, negseq, value in per_source[3]:
        mem.add(-negseq, {key: value})
    for i in range(0, SCAN_KEYS, 10):
        if i % SCAN_SOURCES != SCAN_SOURCES - 1:
            seq += 1
            mem.add(seq, {user_key(i): make_value(rng)})
    yield ScanFixture(mem, imm, l0, l1, seq, user_key(SCAN_KEYS // 2))
    l0.close()
    l1.close()


def scan_100(src: ScanFixture) -> list[tuple[bytes, bytes]]:
    cursors: list[Cursor] = [
        MemCursor(src.mem, src.lo, None, False),
        MemCursor(src.imm, src.lo, None, False),
        src.l0.cursor(src.lo, None, False),
        LevelCursor([src.l1], src.lo, None, False),
    ]
    return list(islice(scan_items(cursors, src.seq, False), SCAN_LIMIT))


@pytest.mark.benchmark(group="scan")
def test_scan_merged_100_of_4(benchmark: BenchmarkFixture, scan_sources: ScanFixture) -> None:
    """Cursors + scan_items for the first 100 keys of 4 sources (2 memtables, 2 tables)."""
    items = scan_100(scan_sources)  # also warms the block cache
    assert [k for k, _ in items] == [user_key(SCAN_KEYS // 2 + i) for i in range(SCAN_LIMIT)]
    benchmark(scan_100, scan_sources)


# -- SSI certifier ----------------------------------------------------------------------------

SSI_SNAPSHOT = 1_000


def ssi_key(i: int) -> bytes:
    return b"acct%012d" % i


def loaded_certifier(rng: random.Random) -> tuple[Certifier, list[bytes]]:
    """A certifier tracking 50 active readers and 20 committed blind writes (their keys)."""
    c = Certifier("ssi")
    for n in range(SSI_ACTIVE):
        t = c.begin(SSI_SNAPSHOT, 0.0)
        for _ in range(SSI_READS):
            c.on_read(t, ssi_key(rng.randrange(SSI_KEYSPACE)), 0.0)
        if n % 10 == 0:
            lo = rng.randrange(SSI_KEYSPACE - 10)
            c.on_scan(t, ssi_key(lo), ssi_key(lo + 10), 0.0)
    written: list[bytes] = []
    for j in range(SSI_COMMITTED):
        key = ssi_key(rng.randrange(SSI_KEYSPACE))
        c.committed(c.record_blind_write((key,), SSI_SNAPSHOT + 1 + j, 0.0))
        written.append(key)
    return c, written


SSI_LATEST = SSI_SNAPSHOT + SSI_COMMITTED  # sees every committed write


def small_transaction(c: Certifier, reads: list[bytes], write: bytes) -> None:
    t = c.begin(SSI_LATEST, 0.0)
    for key in reads:
        c.on_read(t, key, 0.0)
    c.certify(t, (write,), SSI_LATEST + 1, 0.0)
    c.committed(t)


@pytest.mark.benchmark(group="ssi")
def test_ssi_small_transaction(benchmark: BenchmarkFixture) -> None:
    """begin, 5 on_read, certify 1 write, committed, 50 others active: the txn commit tax."""
    rng = random.Random(11)

    def setup() -> tuple[tuple[Certifier, list[bytes], bytes], dict[str, object]]:
        c, _ = loaded_certifier(rng)
        reads = [ssi_key(rng.randrange(SSI_KEYSPACE)) for _ in range(SSI_READS)]
        return (c, reads, ssi_key(rng.randrange(SSI_KEYSPACE))), {}

    pedantic(benchmark, small_transaction, setup=setup, rounds=1_000, warmup_rounds=20)


@pytest.mark.benchmark(group="ssi")
def test_ssi_on_read(benchmark: BenchmarkFixture) -> None:
    """Certifier.on_read of a key with a tracked earlier writer: every transactional get."""
    c, written = loaded_certifier(random.Random(12))
    t: TxnState = c.begin(SSI_LATEST, 0.0)
    benchmark(c.on_read, t, written[0], 0.0)


@pytest.mark.benchmark(group="ssi")
def test_ssi_record_blind_write(benchmark: BenchmarkFixture) -> None:
    """Certifier.record_blind_write of one key: every put while any transaction is open."""
    rng = random.Random(13)

    def setup() -> tuple[tuple[Certifier, tuple[bytes, ...], int, float], dict[str, object]]:
        c, _ = loaded_certifier(rng)
        return (c, (ssi_key(rng.randrange(SSI_KEYSPACE)),), SSI_LATEST + 1, 0.0), {}

    # The unbound method is the target, so no wrapper call is timed.
    pedantic(benchmark, Certifier.record_blind_write, setup=setup, rounds=1_000,
             warmup_rounds=20)


# -- engine -----------------------------------------------------------------------------------


def open_engine() -> engine.Engine:
    """An engine on a MemFS with sync="none" and a memtable big enough never to flush here."""
    return engine.open("/db", fs=MemFS(), sync="none", memtable_bytes=512 * MiB)


def load_engine(seed: int) -> engine.Engine:
    """An engine holding 100,000 keys (written in batches of 1,000) in its memtable."""
    rng = random.Random(seed)
    db = open_engine()
    for start in range(0, ENGINE_KEYS, 1_000):
        with db.batch() as b:
            for i in range(start, start + 1_000):
                b.put(user_key(2 * i), make_value(rng))
    return db


@pytest.fixture
def loaded_engine() -> Iterator[engine.Engine]:
    db = load_engine(seed=14)
    yield db
    db.close()


@pytest.fixture
def flushed_engine() -> Iterator[engine.Engine]:
    """The same 100,000 keys flushed to one L0 table; the memtable is empty."""
    db = load_engine(seed=16)
    db.flush()
    yield db
    db.close()


@pytest.mark.benchmark(group="engine")
def test_engine_put(benchmark: BenchmarkFixture) -> None:
    """Engine.put of a new key (checks, writer queue, WAL record, memtable): fillseq."""
    db = open_engine()
    value = make_value(random.Random(15))
    keys = count()
    put = db.put

    def put_next() -> None:
        put(user_key(next(keys)), value)

    try:
        benchmark(put_next)
    finally:
        db.close()


@pytest.mark.benchmark(group="engine")
def test_engine_get_memtable(benchmark: BenchmarkFixture, loaded_engine: engine.Engine) -> None:
    """Engine.get of a key in the memtable (no tables yet): readrandom on recent data."""
    key = user_key(2 * 54_321)
    assert loaded_engine.get(key) is not None
    benchmark(loaded_engine.get, key)


@pytest.mark.benchmark(group="engine")
def test_engine_get_table(benchmark: BenchmarkFixture, flushed_engine: engine.Engine) -> None:
    """Engine.get of a key in an L0 table, block cached (memtable miss, bloom, Table.get)."""
    key = user_key(2 * 54_321)
    assert flushed_engine.get(key) is not None  # warms the block cache
    stats = flushed_engine.stats()
    assert stats["memtable_bytes"] == 0 and stats["levels"][0]["files"] == 1
    benchmark(flushed_engine.get, key)
