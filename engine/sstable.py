"""SSTables: immutable sorted files of versioned entries.

File layout (FORMAT.md has the byte-level description)::

    table   := data_block* filter_block properties_block index_block footer
    block   := body type:u8 crc:u32          # crc = mask(crc32c(body || type))
    type    := 0 raw | 1 lz4 (lz4.block with its 4-byte size prefix)
    footer  := index:handle filter:handle properties:handle
               format_version:u32 footer_crc:u32 magic[8]="STRATAKV"   # 52 bytes
    handle  := offset:u64 size:u32           # size of ``body`` only

Invariants the reader relies on:

1. Entries are in internal-key order: key ascending, sequence descending.
2. A user key never spans two data blocks (blocks are cut only between
   keys), so a point read touches exactly one block and a scan can treat each
   block as key-complete.
3. The index holds the last user key of each data block.

Every byte read is checked: blocks by their CRC, the footer by its own CRC
and magic, and structural errors become :class:`CorruptionError` naming the
file and the offset of the block.

Thread-safety: a :class:`Table` is immutable after opening and may be read
by many threads; :class:`TableBuilder` is single-threaded.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, replace

import lz4.block

from engine.block import Block, BlockBuilder, BlockFormatError
from engine.bloom import BloomFilter, build_filter, key_hash
from engine.cache import LRUCache
from engine.encoding import FORMAT_VERSION, crc, mask_crc
from engine.errors import CorruptionError
from engine.fs import FileSystem, WritableFile
from engine.options import Options

__all__ = ["FOOTER_SIZE", "MAGIC", "Table", "TableBuilder", "TableCursor", "TableProperties"]

MAGIC = b"STRATAKV"
FOOTER_SIZE = 52
_FOOTER = struct.Struct("<QIQIQIII8s")
_FOOTER_HEAD = struct.Struct("<QIQIQII")  # the 40 bytes the footer CRC covers
_HANDLE = struct.Struct("<QI")
_BLOCK_TRAILER = 5
RAW, LZ4 = 0, 1
_U32 = struct.Struct("<I")
_FIRST_CHUNK = 16
_BYTES_PER_SYNC = 1 << 20
_MAX_CHUNK = 1 << 16

Entry = tuple[bytes, int, bytes | None]


@dataclass(frozen=True, slots=True)
class TableProperties:
    """What a table holds, recorded in its properties block and in the manifest."""

    number: int
    file_size: int
    smallest: bytes
    largest: bytes
    min_seq: int
    max_seq: int
    entries: int
    deletions: int
    data_blocks: int
    raw_key_bytes: int
    raw_value_bytes: int
    compression: str
    format_version: int
    distinct_keys: int = 0  # 0: unknown (the property was added after the first tables)
    # Range deletions (start, end, seq) this table carries (format 3). They
    # hide older versions of [start, end) in every table, not only this one.
    range_tombstones: tuple[tuple[bytes, bytes, int], ...] = ()

    @property
    def has_garbage(self) -> bool:
        """Tombstones or overwritten versions: what a bottom-level rewrite could drop."""
        return (self.deletions > 0 or 0 < self.distinct_keys < self.entries
                or bool(self.range_tombstones))


def _encode_block(body: bytes, compress: bool) -> bytes:
    btype = RAW
    if compress and body:
        packed = lz4.block.compress(body)
        if len(packed) < len(body) - len(body) // 8:  # keep only if it saves >= 12.5%
            body, btype = packed, LZ4
    trailer = bytes((btype,))
    return body + trailer + struct.pack("<I", mask_crc(crc(trailer, crc(body))))


class TableBuilder:
    """Writes entries, given in internal-key order, into a new table file."""

    def __init__(self, file: WritableFile, number: int, options: Options) -> None:
        self._file = file
        self._number = number
        self._options = options
        self._compress = options.compression == "lz4"
        self._offset = 0
        self._synced = 0
        self._block = BlockBuilder()
        self._index = BlockBuilder()
        self._distinct: list[bytes] = []  # one per user key: hashed for the filter at the end
        self._block_bytes = options.block_bytes
        self._last_key: bytes | None = None
        self._smallest: bytes | None = None
        self._min_negseq = -(2**64)
        self._max_negseq = 0
        self._entries = 0
        self._deletions = 0
        self._data_blocks = 0
        self._raw_key_bytes = 0
        self._raw_value_bytes = 0
        self._range_tombstones: list[tuple[bytes, bytes, int]] = []

    def add_range_tombstone(self, start: bytes, end: bytes, seq: int) -> None:
        """Carry the range deletion ``[start, end)`` at ``seq`` in this table."""
        self._range_tombstones.append((start, end, seq))
        if -seq > self._min_negseq:
            self._min_negseq = -seq
        if -seq < self._max_negseq:
            self._max_negseq = -seq

    def add(self, key: bytes, negseq: int, value: bytes | None) -> None:
        """Append one entry; entries must arrive in internal-key order."""
        last = self._last_key
        if key != last:
            if last is not None:
                if key < last:
                    raise ValueError(f"table {self._number}: key {key!r} after {last!r}")
                if self._block.nbytes >= self._block_bytes:
                    self._finish_block()
            else:
                self._smallest = key
            self._distinct.append(key)
            self._last_key = key
        self._block.add(key, negseq, value)
        if negseq > self._min_negseq:  # min/max sequence, kept as -sequence
            self._min_negseq = negseq
        if negseq < self._max_negseq:
            self._max_negseq = negseq

    @property
    def file_size_estimate(self) -> int:
        return self._offset + self._block.size_estimate

    @property
    def last_key(self) -> bytes | None:
        return self._last_key

    def __len__(self) -> int:
        return self._entries + len(self._block)

    def _write(self, body: bytes, compress: bool) -> tuple[int, int]:
        encoded = _encode_block(body, compress)
        offset = self._offset
        self._file.append(encoded)
        self._offset += len(encoded)
        if self._offset - self._synced >= _BYTES_PER_SYNC:
            # Sync as we go (RocksDB's bytes_per_sync): megabytes of dirty pages
            # would otherwise make every WAL fdatasync wait behind them.
            self._file.sync()
            self._synced = self._offset
        return offset, len(encoded) - _BLOCK_TRAILER

    def _finish_block(self) -> None:
        if not len(self._block):
            return
        assert self._last_key is not None
        blk = self._block
        self._entries += len(blk)
        self._deletions += blk.deletions
        raw_keys = blk.raw_key_bytes
        self._raw_key_bytes += raw_keys
        self._raw_value_bytes += blk.nbytes - 8 - 16 * len(blk) - raw_keys
        offset, size = self._write(blk.finish(), self._compress)
        self._index.add(self._last_key, 0, _HANDLE.pack(offset, size))
        self._data_blocks += 1
        self._block = BlockBuilder()

    def finish(self) -> TableProperties:
        """Write filter, properties, index and footer; sync and close the file."""
        rts = tuple(sorted(self._range_tombstones))
        if self._smallest is None or self._last_key is None:
            if not rts:
                raise ValueError("refusing to write an empty table")
            # Only range deletions: a one-key range at the first one's start
            # (the tombstones' reach is not the table's key range).
            self._smallest = self._last_key = rts[0][0]
        self._finish_block()
        if self._options.bloom_bits_per_key > 0:
            fbody = build_filter([key_hash(k) for k in self._distinct],
                                 self._options.bloom_bits_per_key)
        else:
            fbody = b""
        filter_handle = self._write(fbody, False)
        props = TableProperties(
            number=self._number,
            file_size=0,
            smallest=self._smallest,
            largest=self._last_key,
            min_seq=-self._min_negseq,
            max_seq=-self._max_negseq,
            entries=self._entries,
            deletions=self._deletions,
            data_blocks=self._data_blocks,
            raw_key_bytes=self._raw_key_bytes,
            raw_value_bytes=self._raw_value_bytes,
            compression=self._options.compression,
            format_version=FORMAT_VERSION,
            distinct_keys=len(self._distinct),
            range_tombstones=rts,
        )
        props_handle = self._write(_encode_properties(props), False)
        index_handle = self._write(self._index.finish(), False)
        head = _FOOTER_HEAD.pack(*index_handle, *filter_handle, *props_handle, FORMAT_VERSION)
        footer = head + struct.pack("<I", mask_crc(crc(head))) + MAGIC
        self._file.append(footer)
        self._offset += len(footer)
        self._file.sync()
        self._file.close()
        return replace(props, file_size=self._offset)


_PROP_INTS = ("min_seq", "max_seq", "entries", "deletions", "data_blocks", "raw_key_bytes",
              "raw_value_bytes", "format_version")


def _encode_properties(p: TableProperties) -> bytes:
    items: dict[bytes, bytes] = {name.encode(): str(getattr(p, name)).encode()
                                 for name in (*_PROP_INTS, "distinct_keys")}
    items[b"compression"] = p.compression.encode()
    items[b"smallest"] = p.smallest
    items[b"largest"] = p.largest
    if p.range_tombstones:
        items[b"range_tombstones"] = _encode_range_tombstones(p.range_tombstones)
    b = BlockBuilder()
    for name in sorted(items):
        b.add(name, 0, items[name])
    return b.finish()


class Table:
    """An open table: footer, index and filter in memory, data blocks via the cache."""

    __slots__ = ("_cache", "_cache_base", "_file", "_filter", "_index_keys", "_offsets", "_sizes",
                 "may_contain", "path", "props")

    def __init__(self, fs: FileSystem, path: str, number: int, cache: LRUCache[Block]) -> None:
        self.path = path
        self._file = fs.open_read(path)
        self._cache = cache
        self._cache_base = number << 40
        try:
            self._load(number)
        except BaseException:
            self._file.close()
            raise

    def _load(self, number: int) -> None:
        """Read and check footer, index, filter and properties."""
        path = self.path
        size = self._file.size()
        if size < FOOTER_SIZE:
            raise CorruptionError(path, 0, f"file of {size} bytes is too short for a table")
        foot = self._file.pread(FOOTER_SIZE, size - FOOTER_SIZE)
        fields = _FOOTER.unpack(foot)
        ioff, isize, foff, fsize, poff, psize, version, stored_crc, magic = fields
        where = size - FOOTER_SIZE
        if magic != MAGIC:
            raise CorruptionError(path, where, f"bad table magic {magic!r}")
        if mask_crc(crc(foot[:40])) != stored_crc:
            raise CorruptionError(path, where, "footer checksum mismatch")
        if version > FORMAT_VERSION:
            raise CorruptionError(
                path, where, f"table format version {version} is newer than supported "
                f"version {FORMAT_VERSION}; upgrade stratakv to read it")
        if version < 1:
            raise CorruptionError(path, where, f"unknown table format version {version}")
        index = self._decode(ioff, isize, "index")
        self._index_keys: list[bytes] = index.keys
        # Block handles as two machine arrays: 12 bytes a block, where a list of
        # (offset, size) tuples took about 100 (16 MB at 5M keys).
        self._offsets = array("Q")
        self._sizes = array("I")
        for i in range(len(index)):
            block_offset, block_size = _HANDLE.unpack(index.value(i) or b"")
            self._offsets.append(block_offset)
            self._sizes.append(block_size)
        fbody = self.read_body(foff, fsize, "filter")
        try:
            self._filter = BloomFilter(fbody, blocked=version >= 2) if fbody else None
        except ValueError as exc:
            raise CorruptionError(path, foff, f"bad filter block: {exc}") from None
        # ``may_contain(h, delta)``: False if the key is certainly absent. Bound
        # straight to the filter, as point reads call it once per table probed.
        self.may_contain = self._filter.may_contain if self._filter else _no_filter
        pblock = self._decode(poff, psize, "properties")
        self.props = _decode_properties(pblock, number, size, path, poff)
        if len(self._offsets) != self.props.data_blocks:
            raise CorruptionError(path, ioff, "index and properties disagree on block count")

    def _decode(self, offset: int, size: int, what: str) -> Block:
        try:
            return Block(self.read_body(offset, size, what))
        except BlockFormatError as exc:
            raise CorruptionError(self.path, offset, f"{what} block: {exc}") from None

    def read_body(self, offset: int, size: int, what: str) -> bytes:
        """Read, check and decompress the block body at ``offset``."""
        data = self._file.pread(size + _BLOCK_TRAILER, offset)
        if len(data) != size + _BLOCK_TRAILER:
            raise CorruptionError(self.path, offset, f"{what} block truncated")
        if mask_crc(crc(memoryview(data)[: size + 1])) != _U32.unpack_from(data, size + 1)[0]:
            raise CorruptionError(self.path, offset, f"{what} block checksum mismatch")
        btype = data[size]
        if btype == LZ4:
            try:
                return lz4.block.decompress(memoryview(data)[:size])  # type: ignore[no-any-return]
            except Exception as exc:  # lz4 raises a bare LZ4BlockError
                raise CorruptionError(self.path, offset, f"{what} block: lz4: {exc}") from None
        if btype == RAW:
            return data[:size]
        raise CorruptionError(self.path, offset, f"{what} block has unknown type {btype}")

    @property
    def number(self) -> int:
        return self.props.number

    @property
    def num_blocks(self) -> int:
        return len(self._offsets)

    def block(self, i: int) -> Block:
        """Data block ``i``, decoded, through the shared cache."""
        offset = self._offsets[i]
        ckey = self._cache_base | offset
        blk = self._cache.get(ckey)
        if blk is None:
            blk = self._fill(ckey, offset, self._sizes[i])
        return blk

    def _fill(self, ckey: int, offset: int, size: int) -> Block:
        """Read data block at ``offset`` from disk and add it to the cache as ``ckey``."""
        blk = self._decode(offset, size, "data")
        self._cache.put(ckey, blk, blk.charge)
        return blk

    def read_block_uncached(self, i: int) -> Block:
        """Data block ``i`` read from disk and checked, bypassing the cache (verify)."""
        return self._decode(self._offsets[i], self._sizes[i], "data")

    def block_offset(self, i: int) -> int:
        return self._offsets[i]

    def get(self, key: bytes, seq: int) -> tuple[int, bytes | None] | None:
        """Newest version of ``key`` with sequence <= ``seq`` (skips the filter)."""
        i = bisect_left(self._index_keys, key)
        if i == len(self._index_keys):
            return None
        offset = self._offsets[i]  # self.block(i), inlined: this is the hot path
        ckey = self._cache_base | offset
        blk = self._cache.get(ckey)
        if blk is None:
            blk = self._fill(ckey, offset, self._sizes[i])
        return blk.get(key, seq)

    def get_sorted(self, keys: list[bytes], hashes: list[tuple[int, int]], start: int,
                   stop: int, seq: int, found: dict[bytes, bytes | None]) -> bool:
        """:meth:`get` of ``keys[start:stop]`` (ascending, distinct), filter first.

        ``hashes[i]`` is ``key_hash(keys[i])``. ``found[key]`` becomes the
        value (None for a tombstone) of each key with a version visible at
        ``seq``; returns True if there was any. The batch probes the filter
        once per key, walks the index once (each bisection starts where the
        previous one ended) and fetches each block once, however many of
        the keys it holds: ``multi_get``'s per-table step.
        """
        index = self._index_keys
        n = len(index)
        cache_get = self._cache.get
        base = self._cache_base
        bi = -1
        i = 0
        blk: Block | None = None
        hit_any = False
        candidates = (self._filter.passing(hashes, start, stop) if self._filter is not None
                      else range(start, stop))
        for x in candidates:
            key = keys[x]
            i = bisect_left(index, key, i)
            if i == n:
                break
            if i != bi or blk is None:
                bi = i
                offset = self._offsets[i]
                blk = cache_get(base | offset)
                if blk is None:
                    blk = self._fill(base | offset, offset, self._sizes[i])
            hit = blk.get(key, seq)
            if hit is not None:
                found[key] = hit[1]
                hit_any = True
        return hit_any

    def cursor(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> TableCursor:
        return TableCursor(self, lo, hi, reverse)

    def find_block(self, key: bytes) -> int:
        """Index of the first block whose last key is >= ``key``."""
        return bisect_left(self._index_keys, key)

    def entries(self) -> Iterator[Entry]:
        """Every entry, in order (compaction input, dump tool)."""
        for i in range(len(self._offsets)):
            blk = self.block(i)
            yield from blk.entries(0, len(blk))

    @property
    def memory_bytes(self) -> int:
        """Heap bytes held permanently (index and filter)."""
        keys = sum(len(k) + 48 for k in self._index_keys)  # bytes objects, list slots
        handles = 12 * len(self._offsets)
        return keys + handles + (self._filter.memory_bytes if self._filter else 0) + 1000

    def close(self) -> None:
        self._file.close()


def _no_filter(h: int, delta: int) -> bool:
    """``Table.may_contain`` of a table written without a filter."""
    return True


_RT_HEAD = struct.Struct("<IIQ")  # start_len, end_len, seq


def _encode_range_tombstones(rts: tuple[tuple[bytes, bytes, int], ...]) -> bytes:
    """``tombstone*`` with ``tombstone := start_len:u32 end_len:u32 seq:u64 start end``."""
    return b"".join(_RT_HEAD.pack(len(s), len(e), seq) + s + e for s, e, seq in rts)


def _decode_range_tombstones(data: bytes) -> tuple[tuple[bytes, bytes, int], ...]:
    out = []
    pos = 0
    while pos < len(data):
        slen, elen, seq = _RT_HEAD.unpack_from(data, pos)
        pos += _RT_HEAD.size
        start, end = data[pos : pos + slen], data[pos + slen : pos + slen + elen]
        pos += slen + elen
        if pos > len(data) or not start < end:
            raise ValueError("range tombstone runs past its property or is empty")
        out.append((start, end, seq))
    return tuple(out)


def _decode_properties(
    blk: Block, number: int, size: int, path: str, offset: int
) -> TableProperties:
    items = {blk.keys[i]: blk.value(i) or b"" for i in range(len(blk))}
    try:
        ints = {name: int(items[name.encode()]) for name in _PROP_INTS}
        ints["distinct_keys"] = int(items.get(b"distinct_keys", b"0"))
        rts = _decode_range_tombstones(items.get(b"range_tombstones", b""))
        return TableProperties(
            range_tombstones=rts,
            number=number,
            file_size=size,
            smallest=items[b"smallest"],
            largest=items[b"largest"],
            compression=items[b"compression"].decode(),
            **ints,
        )
    except (KeyError, ValueError, struct.error) as exc:
        raise CorruptionError(path, offset, f"properties block incomplete: {exc}") from None


class TableCursor:
    """Walks a key range ``[lo, hi)`` of a table, a slice of a block at a time.

    ``next_chunk()`` returns the next entries inside the range in internal-key
    order (an ascending list even when ``reverse``: chunks then come from the
    end backwards), or ``[]`` when done. Chunks start small and double, so a
    short scan decodes little more than it returns; each chunk is extended to
    hold every version of its boundary key (key-complete).
    """

    __slots__ = ("_bi", "_blk", "_done", "_hi", "_hi_i", "_limit", "_lo", "_lo_i", "_reverse",
                 "_table")

    def __init__(self, table: Table, lo: bytes | None, hi: bytes | None, reverse: bool) -> None:
        self._table = table
        self._lo = lo
        self._hi = hi
        self._reverse = reverse
        self._blk: Block | None = None
        self._lo_i = self._hi_i = 0
        self._limit = _FIRST_CHUNK
        n = table.num_blocks
        self._done = n == 0
        if reverse:
            self._bi = n - 1 if hi is None else min(table.find_block(hi), n - 1)
        else:
            self._bi = 0 if lo is None else table.find_block(lo)
            self._done = self._done or self._bi >= n

    def next_chunk(self) -> list[Entry]:
        span = self._next_span()
        return [] if span is None else span[0].entries(span[1], span[2])

    def next_visible(self, seq: int) -> list[tuple[bytes, bytes]] | None:
        """The next chunk as the (key, value) pairs a reader at ``seq`` sees; None when done."""
        span = self._next_span()
        return None if span is None else span[0].visible_items(span[1], span[2], seq)

    def _next_span(self) -> tuple[Block, int, int] | None:
        """The block and entry range of the next chunk, or None when done."""
        while not self._done:
            blk = self._blk
            if blk is None:
                blk = self._blk = self._table.block(self._bi)
                self._lo_i = 0 if self._lo is None else blk.find(self._lo)
                self._hi_i = len(blk) if self._hi is None else blk.find(self._hi)
            lo_i, hi_i = self._lo_i, self._hi_i
            if lo_i >= hi_i:
                self._next_block(blk)
                continue
            limit = self._limit
            self._limit = min(2 * limit, _MAX_CHUNK)
            if self._reverse:
                start = max(lo_i, hi_i - limit)
                while start > lo_i and blk.key(start - 1) == blk.key(start):
                    start -= 1
                self._hi_i = start
                span = (blk, start, hi_i)
            else:
                end = min(hi_i, lo_i + limit)
                while end < hi_i and blk.key(end) == blk.key(end - 1):
                    end += 1
                self._lo_i = end
                span = (blk, lo_i, end)
            if self._lo_i >= self._hi_i:
                self._next_block(blk)
            return span
        return None

    def _next_block(self, blk: Block) -> None:
        """Move past ``blk``, or finish if the range ends in it."""
        self._blk = None
        if self._reverse:
            self._bi -= 1
            if self._lo_i > 0 or self._bi < 0:
                self._done = True
        else:
            self._bi += 1
            if self._hi_i < len(blk) or self._bi >= self._table.num_blocks:
                self._done = True
