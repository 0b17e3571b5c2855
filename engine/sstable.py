"""SSTables: immutable sorted files of versioned entries.

File layout (FORMAT.md has the byte-level description)::

    table   := data_block* filter_block properties_block index_block footer
    block   := body type:u8 crc:u32          # crc = mask(crc32c(body || type))
    type    := 0 raw | 1 lz4 (lz4.block with its 4-byte size prefix)
    footer  := index:handle filter:handle properties:handle
               format_version:u32 footer_crc:u32 magic[8]="STRATAKV"   # 52 bytes
    handle  := offset:u64 size:u32           # size of ``body`` only

The builder below is the encoder of this grammar; the footer, block and
properties codecs it shares with the reader are in ``engine/tableformat.py``,
the reader (:class:`Table`, :class:`TableCursor`) in
``engine/tablereader.py``. This module re-exports them, so
``engine.sstable`` stays the import path of the table API.

What the builder guarantees (the reader's invariants):

1. Entries are in internal-key order: key ascending, sequence descending
   (:meth:`TableBuilder.add` refuses anything else).
2. A user key never spans two data blocks: blocks are cut only between keys.
3. The index holds the last user key of each data block.
4. Data blocks are synced every MiB as they are written
   (``bytes_per_sync``), and the file is synced and closed by ``finish``.

``FORMAT_VERSION`` and ``build_filter`` are looked up in this module when a
table is written (tests write older formats by replacing them here).

Thread-safety: a :class:`TableBuilder` is single-threaded.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from engine.block import BlockBuilder
from engine.bloom import build_filter, key_hash
from engine.encoding import FORMAT_VERSION, crc, mask_crc
from engine.fs import WritableFile
from engine.options import Options
from engine.tableformat import (
    BLOCK_TRAILER,
    FOOTER_HEAD,
    FOOTER_SIZE,
    HANDLE,
    MAGIC,
    TableProperties,
    encode_block,
    encode_properties,
)
from engine.tablereader import Table, TableCursor

# Table, TableCursor (tablereader.py), TableProperties, MAGIC, FOOTER_SIZE
# (tableformat.py) are re-exported: engine.sstable is the table API.
__all__ = ["FOOTER_SIZE", "MAGIC", "Table", "TableBuilder", "TableCursor", "TableProperties"]

_BYTES_PER_SYNC = 1 << 20


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
        encoded = encode_block(body, compress)
        offset = self._offset
        self._file.append(encoded)
        self._offset += len(encoded)
        if self._offset - self._synced >= _BYTES_PER_SYNC:
            # Sync as we go (RocksDB's bytes_per_sync): megabytes of dirty pages
            # would otherwise make every WAL fdatasync wait behind them.
            self._file.sync()
            self._synced = self._offset
        return offset, len(encoded) - BLOCK_TRAILER

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
        self._index.add(self._last_key, 0, HANDLE.pack(offset, size))
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
        props_handle = self._write(encode_properties(props), False)
        index_handle = self._write(self._index.finish(), False)
        head = FOOTER_HEAD.pack(*index_handle, *filter_handle, *props_handle, FORMAT_VERSION)
        footer = head + struct.pack("<I", mask_crc(crc(head))) + MAGIC
        self._file.append(footer)
        self._offset += len(footer)
        self._file.sync()
        self._file.close()
        return replace(props, file_size=self._offset)
