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
be a handful of C-level calls because Python pays per object created. A
point read slices only the keys its binary search probes and reads one tag
and one value offset with ``struct``; scans read the arrays in place through
``memoryview`` casts (little-endian hosts). A decoded :class:`Block` is what
the block cache holds.

Pure module.
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate, chain

__all__ = ["Block", "BlockBuilder", "BlockFormatError"]

_TRAILER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_UNKNOWN: list[slice] = []  # Block._slices before the first search decides
_LITTLE_ENDIAN = sys.byteorder == "little"
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

    Decoding does no per-entry work and creates few objects, because a point
    read that misses the cache decodes a whole block to use one entry, and
    every object it makes is later freed by an eviction. A block whose keys
    all have one width (fixed-size keys are common) is searched by ``bisect``
    in C over key slices shared by all such blocks; its tag and value offset
    are then read with ``struct``. Other blocks are binary-searched over a
    ``memoryview`` of their key ends. The arrays a scan walks (``_ends``,
    ``_tags``) are ``memoryview`` casts made on first use. A decoded block is
    what the block cache holds.
    """

    __slots__ = ("_at", "_ends", "_keys", "_n", "_raw", "_slices", "_tags", "_values_base")

    def __init__(self, raw: bytes) -> None:
        size = len(raw)
        if size < 8:
            raise BlockFormatError("block shorter than its trailer")
        n: int
        keys_len: int
        n, keys_len = _TRAILER.unpack_from(raw, size - 8)
        at = size - 8 - 16 * n  # where the arrays start (= keys_len + values_len)
        if at < keys_len:
            raise BlockFormatError(f"block of {size} bytes cannot hold {n} entries")
        self._raw = raw
        self._n: int = n
        self._at: int = at
        self._values_base = keys_len
        self._keys: list[bytes] | None = None
        self._ends: Sequence[int] | None = None  # key_ends then value_ends, on first use
        self._tags: Sequence[int] | None = None
        self._slices: list[slice] | None = _UNKNOWN  # fixed-width layout, found on first search
        if n and _U32.unpack_from(raw, at + 4 * n - 4)[0] != keys_len:
            raise BlockFormatError("block key offsets do not match its key region")
        if n and keys_len + _U32.unpack_from(raw, at + 8 * n - 4)[0] != at:
            raise BlockFormatError("block value offsets do not match its value region")

    def _fixed_slices(self) -> list[slice] | None:
        """The shared key slices if every key has one width, else None (decided once).

        Only blocks that are searched get here -- data blocks, of a few dozen
        entries -- so the layouts cached are few and small; an index block,
        whose entry count differs per table, never is.
        """
        raw, at, n = self._raw, self._at, self._n
        slices = None
        if n:
            (width,) = _U32.unpack_from(raw, at)
            if width and self._values_base == n * width:
                progression, candidate = _fixed_layout(width, n)
                if raw[at : at + 4 * n] == progression:  # every key end checked, in C
                    slices = candidate
        self._slices = slices
        return slices

    def _arrays(self) -> tuple[Sequence[int], Sequence[int]]:
        """(key_ends + value_ends, tags) as read-only int sequences, made once."""
        if self._ends is None or self._tags is None:
            raw, at, n = self._raw, self._at, self._n
            if _LITTLE_ENDIAN:  # in place
                view = memoryview(raw)[at : at + 16 * n]
                self._tags = view[8 * n :].cast("Q")
                self._ends = view[: 8 * n].cast("I")
            else:  # pragma: no cover - big-endian hosts decode into tuples
                self._ends = struct.unpack_from(f"<{2 * n}I", raw, at)
                self._tags = struct.unpack_from(f"<{n}Q", raw, at + 8 * n)
        return self._ends, self._tags

    def __len__(self) -> int:
        return self._n

    @property
    def charge(self) -> int:
        """Approximate heap bytes this decoded block holds (for the cache budget)."""
        return len(self._raw) + 600 + (60 * self._n if self._keys is not None else 0)

    @property
    def keys(self) -> list[bytes]:
        """Every key, in order (built once, on first use)."""
        keys = self._keys
        if keys is None:
            raw = self._raw
            if self._slices is not None and self._slices is not _UNKNOWN:
                keys = [raw[s] for s in self._slices]
            else:
                ends = self._arrays()[0][: self._n]
                keys = [raw[a:b] for a, b in zip(chain((0,), ends), ends, strict=False)]
            self._keys = keys
        return keys

    @property
    def tags(self) -> Sequence[int]:
        """``sequence << 8 | kind`` per entry."""
        return self._arrays()[1]

    def key(self, i: int) -> bytes:
        if self._slices is not None and self._slices is not _UNKNOWN:
            return self._raw[self._slices[i]]
        ends = self._arrays()[0]
        return self._raw[ends[i - 1] if i else 0 : ends[i]]

    def find(self, key: bytes) -> int:
        """Index of the first entry whose key is >= ``key``."""
        if self._keys is not None:
            return bisect_left(self._keys, key)
        raw = self._raw
        slices = self._slices
        if slices is _UNKNOWN:
            slices = self._fixed_slices()
        if slices is not None:
            return bisect_left(slices, key, key=raw.__getitem__)
        ends = self._arrays()[0]
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) >> 1
            if raw[ends[mid - 1] if mid else 0 : ends[mid]] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def value(self, i: int) -> bytes | None:
        """Value of entry ``i``; None for a tombstone."""
        ends, tags = self._arrays()
        if not tags[i] & 0xFF:
            return None
        n = self._n
        base = self._values_base
        return self._raw[base + (ends[n + i - 1] if i else 0) : base + ends[n + i]]

    def get(self, key: bytes, seq: int) -> tuple[int, bytes | None] | None:
        """Newest version of ``key`` with sequence <= ``seq`` in this block, or None.

        The fixed-width search is written out here (it is every point read's
        hot path); other blocks go through :meth:`find` and :meth:`key`.
        """
        raw = self._raw
        n = self._n
        slices = self._slices
        if slices is _UNKNOWN:
            slices = self._fixed_slices()
        if slices is not None:
            i = bisect_left(slices, key, key=raw.__getitem__)
            if i == n or raw[slices[i]] != key:
                return None
        else:
            i = self.find(key)
            if i == n or self.key(i) != key:
                return None
        tags_at = self._at + 8 * n
        while True:  # versions of key, newest first
            (tag,) = _U64.unpack_from(raw, tags_at + 8 * i)
            if tag >> 8 <= seq:
                if not tag & 0xFF:
                    return tag >> 8, None
                base = self._values_base
                if i:
                    a, b = _U32X2.unpack_from(raw, self._at + 4 * (n + i - 1))
                    return tag >> 8, raw[base + a : base + b]
                return tag >> 8, raw[base : base + _U32.unpack_from(raw, self._at + 4 * n)[0]]
            i += 1
            if i == n or self.key(i) != key:
                return None

    def entries(self, start: int, stop: int) -> list[Entry]:
        """Entries ``start:stop`` as (key, -sequence, value) tuples."""
        raw = self._raw
        ends, tags = self._arrays()
        n = self._n
        base = self._values_base
        out: list[Entry] = []
        append = out.append
        ka = ends[start - 1] if start else 0
        va = base + (ends[n + start - 1] if start else 0)
        for kb, vb, tag in zip(ends[start:stop], ends[n + start : n + stop], tags[start:stop],
                               strict=True):
            vb += base
            append((raw[ka:kb], -(tag >> 8), raw[va:vb] if tag & 0xFF else None))
            ka = kb
            va = vb
        return out


    def visible_items(self, start: int, stop: int, seq: int) -> list[tuple[bytes, bytes]]:
        """What a reader at ``seq`` sees of entries ``start:stop``: (key, value) pairs.

        The same as ``iterators.visible(self.entries(start, stop), seq)`` in one
        pass that builds no entry tuples: a scan reading one table (nothing to
        merge) spends most of its time here.
        """
        raw = self._raw
        ends, tags = self._arrays()
        n = self._n
        base = self._values_base
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        prev = None
        ka = ends[start - 1] if start else 0
        va = base + (ends[n + start - 1] if start else 0)
        for kb, vb, tag in zip(ends[start:stop], ends[n + start : n + stop], tags[start:stop],
                               strict=True):
            vb += base
            if tag >> 8 <= seq:  # else too new for this reader: an older version may follow
                key = raw[ka:kb]
                if key != prev:  # the newest version the reader sees; older ones follow
                    prev = key
                    if tag & 0xFF:
                        append((key, raw[va:vb]))
            ka = kb
            va = vb
        return out


@lru_cache(maxsize=256)
def _fixed_layout(width: int, n: int) -> tuple[bytes, list[slice]]:
    """The ``key_ends`` bytes of ``n`` keys of ``width`` bytes, and the slices of those keys."""
    ends = range(width, width * n + 1, width)
    return struct.pack(f"<{n}I", *ends), [slice(e - width, e) for e in ends]
