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
be a handful of C-level calls because Python pays per object created: the
arrays are read in place through ``memoryview`` casts (little-endian hosts)
and a point read slices only the keys its binary search probes. A decoded
:class:`Block` is what the block cache holds.

Pure module.
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate, chain

__all__ = ["Block", "BlockBuilder", "BlockFormatError"]

_TRAILER = struct.Struct("<II")
Entry = tuple[bytes, int, bytes | None]


class BlockFormatError(ValueError):
    """The block's structure is inconsistent (callers turn this into CorruptionError)."""


class BlockBuilder:
    """Accumulates entries (already in internal-key order) into one block.

    ``add`` only appends (it runs once per entry of every flush and
    compaction); offsets are computed once, in C, by ``finish``.
    """

    __slots__ = ("_keys", "_tags", "_values", "deletions", "nbytes")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._values: list[bytes] = []  # b"" for a DELETE: value_len 0 in the format
        self._tags: list[int] = []
        self.nbytes = 8  # payload plus the 16 bytes of arrays per entry, plus the trailer
        self.deletions = 0

    def add(self, key: bytes, negseq: int, value: bytes | None) -> None:
        self._keys.append(key)
        if value is None:
            self._values.append(b"")
            self._tags.append(-negseq << 8)  # kind DELETE = 0
            self.nbytes += len(key) + 16
            self.deletions += 1
        else:
            self._values.append(value)
            self._tags.append(-negseq << 8 | 1)  # kind PUT = 1
            self.nbytes += len(key) + len(value) + 16

    def __len__(self) -> int:
        return len(self._tags)

    @property
    def size_estimate(self) -> int:
        return self.nbytes

    @property
    def raw_key_bytes(self) -> int:
        return sum(map(len, self._keys))

    @property
    def tags(self) -> list[int]:
        return self._tags

    def finish(self) -> bytes:
        n = len(self._tags)
        key_ends = list(accumulate(map(len, self._keys)))
        value_ends = list(accumulate(map(len, self._values)))
        return b"".join(
            (
                *self._keys,
                *self._values,
                struct.pack(f"<{n}I", *key_ends),
                struct.pack(f"<{n}I", *value_ends),
                struct.pack(f"<{n}Q", *self._tags),
                _TRAILER.pack(n, key_ends[-1] if n else 0),
            )
        )


class Block:
    """A decoded, immutable block, searched in place.

    Decoding does no per-entry work: the offset and tag arrays are
    ``memoryview`` casts over the raw bytes (one C call each). A point lookup
    binary-searches by slicing only the keys it probes; the full key list is
    built on first use by a scan (:attr:`keys`) and then shared with later
    lookups, which ``bisect`` it in C.
    """

    __slots__ = ("_key_ends", "_keys", "_raw", "_tags", "_value_ends", "_values_base")

    def __init__(self, raw: bytes) -> None:
        size = len(raw)
        if size < 8:
            raise BlockFormatError("block shorter than its trailer")
        n, keys_len = _TRAILER.unpack_from(raw, size - 8)
        arrays = size - 8 - 16 * n
        if arrays < keys_len:
            raise BlockFormatError(f"block of {size} bytes cannot hold {n} entries")
        self._raw = raw
        self._key_ends, self._value_ends, self._tags = _arrays(raw, arrays, n)
        if n and (self._key_ends[n - 1] != keys_len
                  or keys_len + self._value_ends[n - 1] != arrays):
            raise BlockFormatError("block offsets do not match its regions")
        self._values_base = keys_len
        self._keys: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self._tags)

    @property
    def charge(self) -> int:
        """Approximate heap bytes this decoded block holds (for the cache budget)."""
        return len(self._raw) + 600 + (60 * len(self._tags) if self._keys is not None else 0)

    @property
    def keys(self) -> list[bytes]:
        """Every key, in order (built once, on first use)."""
        keys = self._keys
        if keys is None:
            raw = self._raw
            ends = self._key_ends
            keys = self._keys = [raw[a:b] for a, b in zip(chain((0,), ends), ends, strict=False)]
        return keys

    @property
    def tags(self) -> Sequence[int]:
        """``sequence << 8 | kind`` per entry."""
        return self._tags

    def key(self, i: int) -> bytes:
        ends = self._key_ends
        return self._raw[ends[i - 1] if i else 0 : ends[i]]

    def find(self, key: bytes) -> int:
        """Index of the first entry whose key is >= ``key``."""
        if self._keys is not None:
            return bisect_left(self._keys, key)
        raw = self._raw
        ends = self._key_ends
        lo, hi = 0, len(ends)
        while lo < hi:
            mid = (lo + hi) >> 1
            if raw[ends[mid - 1] if mid else 0 : ends[mid]] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def value(self, i: int) -> bytes | None:
        if not self._tags[i] & 0xFF:
            return None
        base = self._values_base
        ends = self._value_ends
        return self._raw[base + (ends[i - 1] if i else 0) : base + ends[i]]

    def get(self, key: bytes, seq: int) -> tuple[int, bytes | None] | None:
        """Newest version of ``key`` with sequence <= ``seq`` in this block, or None."""
        i = self.find(key)
        raw = self._raw
        ends = self._key_ends
        tags = self._tags
        n = len(tags)
        size = len(key)
        while i < n and ends[i] - (ends[i - 1] if i else 0) == size and self.key(i) == key:
            tag = tags[i]
            if tag >> 8 <= seq:
                if not tag & 0xFF:
                    return tag >> 8, None
                base = self._values_base
                vends = self._value_ends
                return tag >> 8, raw[base + (vends[i - 1] if i else 0) : base + vends[i]]
            i += 1
        return None

    def entries(self, start: int, stop: int) -> list[Entry]:
        """Entries ``start:stop`` as (key, -sequence, value) tuples."""
        raw = self._raw
        kends = self._key_ends
        vends = self._value_ends
        tags = self._tags
        base = self._values_base
        out: list[Entry] = []
        append = out.append
        ka = kends[start - 1] if start else 0
        va = base + (vends[start - 1] if start else 0)
        for i in range(start, stop):
            kb = kends[i]
            vb = base + vends[i]
            tag = tags[i]
            append((raw[ka:kb], -(tag >> 8), raw[va:vb] if tag & 0xFF else None))
            ka = kb
            va = vb
        return out


_Arrays = tuple[Sequence[int], Sequence[int], Sequence[int]]

if sys.byteorder == "little":
    def _arrays(raw: bytes, at: int, n: int) -> _Arrays:
        """key_ends, value_ends and tags, read in place."""
        mv = memoryview(raw)
        return (mv[at : at + 4 * n].cast("I"), mv[at + 4 * n : at + 8 * n].cast("I"),
                mv[at + 8 * n : at + 16 * n].cast("Q"))
else:  # pragma: no cover - big-endian hosts decode into tuples
    def _arrays(raw: bytes, at: int, n: int) -> _Arrays:
        return (struct.unpack_from(f"<{n}I", raw, at),
                struct.unpack_from(f"<{n}I", raw, at + 4 * n),
                struct.unpack_from(f"<{n}Q", raw, at + 8 * n))
