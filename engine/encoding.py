"""Shared on-disk vocabulary: format versions, tags, file names, checksums.

Everything here is pure. Tags are ``IntEnum`` values that are written to disk
and therefore never renumbered; new ones are appended. ``docs/FORMAT.md`` is
the prose version of this module.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from enum import IntEnum

import crc32c as _crc32c

__all__ = [
    "FORMAT_VERSION",
    "FileKind",
    "Kind",
    "RecordTag",
    "crc",
    "file_name",
    "mask_crc",
    "parse_file_name",
    "unmask_crc",
]

# Version of every file the engine writes (WAL, manifest, SSTable). Files
# carrying a larger number are refused with a clear error; older versions
# are read. See FORMAT.md for the history.
FORMAT_VERSION = 3


class Kind(IntEnum):
    """What an entry does to its key. Stored in WAL batches and SSTables."""

    DELETE = 0
    PUT = 1
    RANGE_DELETE = 2  # WAL only (format 3): key = start, value = end of [start, end)


class RecordTag(IntEnum):
    """First byte of every logical record in a log file (WAL or manifest)."""

    FILE_HEADER = 1  # magic, format version, file kind, file number
    WRITE_GROUP = 2  # WAL: one or more write batches
    VERSION_EDIT = 3  # manifest: one version edit


class FileKind(IntEnum):
    """Kinds of files in a store directory, as named in file headers."""

    WAL = 1
    MANIFEST = 2
    TABLE = 3


_CRC_MASK_DELTA = 0xA282EAD8


# crc32c (Castagnoli) of a buffer, optionally continuing from a previous
# value: ``crc(data, value=0)``. The C function itself, not a wrapper, as every
# block read calls it.
crc: Callable[..., int] = _crc32c.crc32c


def mask_crc(c: int) -> int:
    """Mask a stored CRC so that CRCs of data that embeds CRCs stay strong (LevelDB)."""
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(m: int) -> int:
    rot = (m - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

_SUFFIX = {FileKind.WAL: ".log", FileKind.TABLE: ".sst"}
_NAME_RE = re.compile(r"^(\d{6,})\.(log|sst)$|^MANIFEST-(\d{6,})$")


# A replicated cluster's directory holds this file (replication/cluster.py
# writes it); the engine refuses such a directory rather than mix its files in.
CLUSTER_DESCRIPTOR = "CLUSTER"


def file_name(kind: FileKind, number: int) -> str:
    """The file name for file ``number`` of ``kind`` (``000012.log``, ``MANIFEST-000003``)."""
    if kind is FileKind.MANIFEST:
        return f"MANIFEST-{number:06d}"
    return f"{number:06d}{_SUFFIX[kind]}"


def parse_file_name(name: str) -> tuple[FileKind, int] | None:
    """Inverse of :func:`file_name`; ``None`` for names the engine does not own."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    if m.group(3) is not None:
        return FileKind.MANIFEST, int(m.group(3))
    kind = FileKind.WAL if m.group(2) == "log" else FileKind.TABLE
    return kind, int(m.group(1))


def store_files(names: list[str]) -> list[str]:
    """The names among ``names`` that belong to an engine store (its tables, logs, manifest)."""
    return [n for n in names if n == "CURRENT" or parse_file_name(n) is not None]
