"""Versions: which table files make up the store, level by level (pure).

A :class:`Version` is an immutable snapshot of the LSM shape; a
:class:`VersionEdit` is a delta (files added and removed, plus the counters
recovery needs). ``version.apply(edit)`` returns a new Version; the manifest
is the log of edits.

Invariants (checked by :meth:`Version.check`):

1. L0 files are ordered newest first (by largest sequence); they may overlap.
2. Files of each level >= 1 are sorted by key and do not overlap.
3. A file number appears at most once in a version.

Edit grammar (little-endian; FORMAT.md)::

    edit  := field*
    field := LOG_NUMBER:u8 u64 | NEXT_FILE:u8 u64 | LAST_SEQUENCE:u8 u64
           | ADD_FILE:u8 level:u8 number:u64 size:u64 min_seq:u64 max_seq:u64
                 entries:u64 smallest_len:u32 smallest largest_len:u32 largest
           | DELETE_FILE:u8 level:u8 number:u64
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

from engine.errors import CorruptionError

__all__ = ["EditTag", "FileMeta", "Version", "VersionEdit"]


class EditTag(IntEnum):
    LOG_NUMBER = 1
    NEXT_FILE = 2
    LAST_SEQUENCE = 3
    ADD_FILE = 4
    DELETE_FILE = 5


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A table file as the manifest records it."""

    number: int
    size: int
    smallest: bytes
    largest: bytes
    min_seq: int
    max_seq: int
    entries: int


_U64 = struct.Struct("<Q")
_ADD = struct.Struct("<BQQQQQ")
_DEL = struct.Struct("<BQ")
_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class VersionEdit:
    """One atomic change to the version, as logged in the manifest."""

    log_number: int | None = None
    next_file: int | None = None
    last_sequence: int | None = None
    added: tuple[tuple[int, FileMeta], ...] = ()
    deleted: tuple[tuple[int, int], ...] = ()

    def encode(self) -> bytes:
        out = bytearray()
        for tag, value in ((EditTag.LOG_NUMBER, self.log_number),
                           (EditTag.NEXT_FILE, self.next_file),
                           (EditTag.LAST_SEQUENCE, self.last_sequence)):
            if value is not None:
                out.append(tag)
                out += _U64.pack(value)
        for level, number in self.deleted:
            out.append(EditTag.DELETE_FILE)
            out += _DEL.pack(level, number)
        for level, f in self.added:
            out.append(EditTag.ADD_FILE)
            out += _ADD.pack(level, f.number, f.size, f.min_seq, f.max_seq, f.entries)
            out += _LEN.pack(len(f.smallest)) + f.smallest
            out += _LEN.pack(len(f.largest)) + f.largest
        return bytes(out)

    @staticmethod
    def decode(data: bytes, *, path: str, offset: int) -> VersionEdit:
        """Decode an edit; ``offset`` is where it starts in ``path`` (for errors)."""
        fields: dict[str, int] = {}
        added: list[tuple[int, FileMeta]] = []
        deleted: list[tuple[int, int]] = []
        pos = 0
        try:
            while pos < len(data):
                tag = data[pos]
                pos += 1
                if tag in (EditTag.LOG_NUMBER, EditTag.NEXT_FILE, EditTag.LAST_SEQUENCE):
                    (fields[EditTag(tag).name],) = _U64.unpack_from(data, pos)
                    pos += 8
                elif tag == EditTag.DELETE_FILE:
                    deleted.append(_DEL.unpack_from(data, pos))
                    pos += _DEL.size
                elif tag == EditTag.ADD_FILE:
                    level, number, size, min_seq, max_seq, entries = _ADD.unpack_from(data, pos)
                    pos += _ADD.size
                    (n,) = _LEN.unpack_from(data, pos)
                    smallest = data[pos + 4 : pos + 4 + n]
                    pos += 4 + n
                    (n,) = _LEN.unpack_from(data, pos)
                    largest = data[pos + 4 : pos + 4 + n]
                    pos += 4 + n
                    if pos > len(data):
                        raise struct.error("key runs past end of edit")
                    added.append((level, FileMeta(number, size, smallest, largest,
                                                  min_seq, max_seq, entries)))
                else:
                    raise CorruptionError(path, offset, f"unknown version edit tag {tag}")
        except struct.error as exc:
            raise CorruptionError(path, offset, f"truncated version edit: {exc}") from None
        return VersionEdit(
            log_number=fields.get("LOG_NUMBER"),
            next_file=fields.get("NEXT_FILE"),
            last_sequence=fields.get("LAST_SEQUENCE"),
            added=tuple(added),
            deleted=tuple(deleted),
        )


class Version:
    """Immutable list of files per level."""

    __slots__ = ("levels",)

    def __init__(self, levels: tuple[tuple[FileMeta, ...], ...]) -> None:
        self.levels = levels

    @classmethod
    def empty(cls, num_levels: int) -> Version:
        return cls(tuple(() for _ in range(num_levels)))

    def apply(self, edit: VersionEdit) -> Version:
        """A new version with ``edit``'s deletions and additions applied."""
        gone = set(edit.deleted)
        levels = [[f for f in files if (level, f.number) not in gone]
                  for level, files in enumerate(self.levels)]
        for level, f in edit.added:
            if level >= len(levels):
                raise ValueError(f"edit adds file {f.number} to level {level}: too deep")
            levels[level].append(f)
        levels[0].sort(key=lambda f: (f.max_seq, f.number), reverse=True)
        for files in levels[1:]:
            files.sort(key=lambda f: f.smallest)
        return Version(tuple(tuple(files) for files in levels))

    def files(self) -> list[tuple[int, FileMeta]]:
        return [(level, f) for level, files in enumerate(self.levels) for f in files]

    def level_bytes(self, level: int) -> int:
        return sum(f.size for f in self.levels[level])

    def overlapping(self, level: int, lo: bytes, hi: bytes) -> list[FileMeta]:
        """Files of ``level`` whose key range intersects ``[lo, hi]`` (inclusive)."""
        files = self.levels[level]
        if level == 0:
            return [f for f in files if not (f.largest < lo or f.smallest > hi)]
        i = bisect_left([f.largest for f in files], lo)
        out = []
        while i < len(files) and files[i].smallest <= hi:
            out.append(files[i])
            i += 1
        return out

    def snapshot_edit(self, log_number: int, next_file: int, last_sequence: int) -> VersionEdit:
        """One edit that recreates this version from nothing (a new manifest's first)."""
        return VersionEdit(log_number=log_number, next_file=next_file,
                           last_sequence=last_sequence, added=tuple(self.files()))

    def check(self) -> None:
        """Raise ValueError if an invariant is broken."""
        seen: set[int] = set()
        for level, files in enumerate(self.levels):
            for f in files:
                if f.number in seen:
                    raise ValueError(f"file {f.number} appears twice")
                seen.add(f.number)
                if f.smallest > f.largest:
                    raise ValueError(f"file {f.number} has smallest > largest")
            if level == 0:
                continue
            for a, b in pairwise(files):
                if not a.largest < b.smallest:
                    raise ValueError(f"L{level} files {a.number} and {b.number} overlap")
