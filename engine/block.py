"""SSTable block codec: entries in internal-key order, laid out for fast decoding.

Grammar of an uncompressed block (little-endian; FORMAT.md has the prose)::

    block      := keys values key_ends values_ends tags count:u32 keys_len:u32
    keys       := key[0] .. key[n-1]                 # concatenated
    values     := value[0] .. value[n-1]             # concatenated; empty for DELETE
    key_ends   := u32{n}    end offset of key[i] in ``keys``
    value_ends := u32{n}    end offset of value[i] in ``values``
    tags       := u64{n}    sequence << 8 | kind     # kind: DELETE=0, PUT=1

Entries are sorted by (key ascending, sequence descending). There is no
prefix compression: the block is lz4-compressed as a whole, and decoding must
be a handful of C-level calls (``struct.unpack_from`` of the arrays and one
list comprehension of slices) because Python pays per object created. A
decoded :class:`Block` is what the block cache holds; ``bisect`` searches its
key list directly.

Pure module.
"""

from __future__ import annotations

import struct
from bisect import bisect_left

from engine.encoding import Kind

__all__ = ["Block", "BlockBuilder", "BlockFormatError"]

_TRAILER = struct.Struct("<II")
Entry = tuple[bytes, int, bytes | None]


class BlockFormatError(ValueError):
    """The block's structure is inconsistent (callers turn this into CorruptionError)."""


class BlockBuilder:
    """Accumulates entries (already in internal-key order) into one block."""

    __slots__ = ("_key_ends", "_keys", "_keys_len", "_tags", "_value_ends", "_values",
                 "_values_len")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._values: list[bytes] = []
        self._key_ends: list[int] = []
        self._value_ends: list[int] = []
        self._tags: list[int] = []
        self._keys_len = 0
        self._values_len = 0

    def add(self, key: bytes, negseq: int, value: bytes | None) -> None:
        self._keys.append(key)
        self._keys_len += len(key)
        self._key_ends.append(self._keys_len)
        if value is None:
            self._tags.append((-negseq) << 8 | Kind.DELETE)
        else:
            self._values.append(value)
            self._values_len += len(value)
            self._tags.append((-negseq) << 8 | Kind.PUT)
        self._value_ends.append(self._values_len)

    def __len__(self) -> int:
        return len(self._tags)

    @property
    def size_estimate(self) -> int:
        return self._keys_len + self._values_len + 16 * len(self._tags) + 8

    def finish(self) -> bytes:
        n = len(self._tags)
        return b"".join(
            (
                *self._keys,
                *self._values,
                struct.pack(f"<{n}I", *self._key_ends),
                struct.pack(f"<{n}I", *self._value_ends),
                struct.pack(f"<{n}Q", *self._tags),
                _TRAILER.pack(n, self._keys_len),
            )
        )


class Block:
    """A decoded, immutable block: parallel arrays searched with ``bisect``."""

    __slots__ = ("_raw", "_value_ends", "_values_base", "keys", "tags")

    def __init__(self, raw: bytes) -> None:
        size = len(raw)
        if size < 8:
            raise BlockFormatError("block shorter than its trailer")
        n, keys_len = _TRAILER.unpack_from(raw, size - 8)
        arrays = size - 8 - 16 * n
        if arrays < keys_len:
            raise BlockFormatError(f"block of {size} bytes cannot hold {n} entries")
        key_ends = struct.unpack_from(f"<{n}I", raw, arrays)
        value_ends = struct.unpack_from(f"<{n}I", raw, arrays + 4 * n)
        if n and (key_ends[-1] != keys_len or keys_len + value_ends[-1] != arrays):
            raise BlockFormatError("block offsets do not match its regions")
        self.tags: tuple[int, ...] = struct.unpack_from(f"<{n}Q", raw, arrays + 8 * n)
        self.keys: list[bytes] = [
            raw[a:b] for a, b in zip((0, *key_ends), key_ends, strict=False)
        ]
        self._raw = raw
        self._value_ends = value_ends
        self._values_base = keys_len

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def charge(self) -> int:
        """Approximate heap bytes this decoded block holds (for the cache budget)."""
        n = len(self.tags)
        return len(self._raw) + 120 * n + 200

    def value(self, i: int) -> bytes | None:
        if not self.tags[i] & 0xFF:
            return None
        base = self._values_base
        start = base + (self._value_ends[i - 1] if i else 0)
        return self._raw[start : base + self._value_ends[i]]

    def get(self, key: bytes, seq: int) -> tuple[int, bytes | None] | None:
        """Newest version of ``key`` with sequence <= ``seq`` in this block, or None."""
        keys = self.keys
        i = bisect_left(keys, key)
        n = len(keys)
        tags = self.tags
        while i < n and keys[i] == key:
            tag = tags[i]
            if tag >> 8 <= seq:
                return tag >> 8, self.value(i)
            i += 1
        return None

    def entries(self, start: int, stop: int) -> list[Entry]:
        """Entries ``start:stop`` as (key, -sequence, value) tuples."""
        keys = self.keys
        tags = self.tags
        value = self.value
        return [(keys[i], -(tags[i] >> 8), value(i)) for i in range(start, stop)]
