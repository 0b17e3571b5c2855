"""The table format's shared pieces: footer, block framing, properties.

Owns the constants and codecs that both the writer (``engine/sstable.py``,
which has the file grammar atop it) and the reader
(``engine/tablereader.py``) must agree on: the footer layout and magic, the
block trailer (type byte and masked CRC, optional lz4), the block handle,
and the properties block with its range tombstones (FORMAT.md, "SSTables").
Nothing here opens a file. Pure functions of their arguments; safe from any
thread.

Invariants:

1. ``FOOTER_SIZE`` is ``FOOTER.size``: the footer is the last 52 bytes, and
   its CRC covers ``FOOTER_HEAD`` (the first 40).
2. A block handle's size counts the body only, never the 5-byte trailer.
3. :func:`decode_properties` accepts what :func:`encode_properties` wrote at
   every format version (``distinct_keys`` and ``range_tombstones`` may be
   absent) and raises :class:`CorruptionError` for anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import lz4.block

from engine.block import Block, BlockBuilder
from engine.encoding import crc, mask_crc
from engine.errors import CorruptionError

__all__ = ["BLOCK_TRAILER", "FOOTER", "FOOTER_HEAD", "FOOTER_SIZE", "HANDLE", "LZ4", "MAGIC", "RAW",
           "Entry", "TableProperties", "decode_properties", "encode_block", "encode_properties"]

MAGIC = b"STRATAKV"
FOOTER_SIZE = 52
FOOTER = struct.Struct("<QIQIQIII8s")
FOOTER_HEAD = struct.Struct("<QIQIQII")  # the 40 bytes the footer CRC covers
HANDLE = struct.Struct("<QI")
BLOCK_TRAILER = 5
RAW, LZ4 = 0, 1  # block types

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


def encode_block(body: bytes, compress: bool) -> bytes:
    btype = RAW
    if compress and body:
        packed = lz4.block.compress(body)
        if len(packed) < len(body) - len(body) // 8:  # keep only if it saves >= 12.5%
            body, btype = packed, LZ4
    trailer = bytes((btype,))
    return body + trailer + struct.pack("<I", mask_crc(crc(trailer, crc(body))))



_PROP_INTS = ("min_seq", "max_seq", "entries", "deletions", "data_blocks", "raw_key_bytes",
              "raw_value_bytes", "format_version")


def encode_properties(p: TableProperties) -> bytes:
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


def decode_properties(
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

