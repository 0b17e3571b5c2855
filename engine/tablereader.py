"""Reading a table: :class:`Table` (an open table file) and :class:`TableCursor`.

Owns the open file of one table, its decoded index (block offsets and sizes
as two machine arrays), its filter and properties; data blocks come through
the shared :class:`~engine.cache.LRUCache`. It never writes. Format pieces
come from ``engine/tableformat.py``; ``engine.sstable`` re-exports both
classes.

Invariants the reader relies on (the writer, ``engine/sstable.py``,
guarantees them):

1. Entries are in internal-key order: key ascending, sequence descending.
2. A user key never spans two data blocks (blocks are cut only between
   keys), so a point read touches exactly one block and a scan can treat each
   block as key-complete.
3. The index holds the last user key of each data block.

Every byte read is checked: blocks by their CRC, the footer by its own CRC
and magic, and structural errors become :class:`CorruptionError` naming the
file and the offset of the block. A table newer than ``FORMAT_VERSION`` is
refused with a message saying so.

Thread-safety: a :class:`Table` is immutable after opening and may be read
by many threads (``pread`` only); a :class:`TableCursor` belongs to one
iterator, on one thread.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterator

import lz4.block

from engine.block import Block, BlockFormatError
from engine.bloom import BloomFilter
from engine.cache import LRUCache
from engine.encoding import FORMAT_VERSION, crc, mask_crc
from engine.errors import CorruptionError
from engine.fs import FileSystem
from engine.tableformat import (
    BLOCK_TRAILER,
    FOOTER,
    FOOTER_SIZE,
    HANDLE,
    LZ4,
    MAGIC,
    RAW,
    Entry,
    decode_properties,
)

__all__ = ["Table", "TableCursor"]

_U32 = struct.Struct("<I")
_FIRST_CHUNK = 16
_MAX_CHUNK = 1 << 16


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
        fields = FOOTER.unpack(foot)
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
            block_offset, block_size = HANDLE.unpack(index.value(i) or b"")
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
        self.props = decode_properties(pblock, number, size, path, poff)
        if len(self._offsets) != self.props.data_blocks:
            raise CorruptionError(path, ioff, "index and properties disagree on block count")

    def _decode(self, offset: int, size: int, what: str) -> Block:
        try:
            return Block(self.read_body(offset, size, what))
        except BlockFormatError as exc:
            raise CorruptionError(self.path, offset, f"{what} block: {exc}") from None

    def read_body(self, offset: int, size: int, what: str) -> bytes:
        """Read, check and decompress the block body at ``offset``."""
        data = self._file.pread(size + BLOCK_TRAILER, offset)
        if len(data) != size + BLOCK_TRAILER:
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
