"""Write-ahead log segments: write-group records and their replay.

A WAL segment is a log file (see :mod:`engine.record`) whose records after
the header are write groups::

    write_group := WRITE_GROUP:u8 count:u32 batch{count}
    batch       := sequence:u64 ops                       # engine.batch

Group commit writes every batch waiting in the engine's writer queue as ONE
record with one ``write`` and one ``fdatasync``. A record is the unit of
atomicity, so a power failure can tear only the last group, and the group
was not acknowledged; a damaged record that is followed by a valid one was
synced earlier and is reported as corruption (FORMAT.md, "Torn tail or
corruption").

The engine's group-commit leader is the only writer; replay runs during
``open`` before any other thread exists.
"""

from __future__ import annotations

import logging
import struct

from engine.batch import decode_batch, encode_batch
from engine.encoding import FileKind, RecordTag
from engine.errors import CorruptionError
from engine.fs import FileSystem
from engine.logfile import read_log_file
from engine.record import LogScan

__all__ = ["decode_group", "encode_group", "replay"]

_GROUP_HEAD = struct.Struct("<BI")

Batch = tuple[int, dict[bytes, bytes | None]]


def encode_group(batches: list[Batch]) -> bytes:
    """The record payload for one write group."""
    return b"".join(
        [_GROUP_HEAD.pack(RecordTag.WRITE_GROUP, len(batches))]
        + [encode_batch(seq, ops) for seq, ops in batches]
    )


def decode_group(payload: bytes, *, path: str, offset: int) -> list[Batch]:
    """Decode a write-group record found at ``offset`` of ``path``."""
    if len(payload) < _GROUP_HEAD.size or payload[0] != RecordTag.WRITE_GROUP:
        raise CorruptionError(path, offset, "WAL record is not a write group")
    _, count = _GROUP_HEAD.unpack_from(payload)
    pos = _GROUP_HEAD.size
    out: list[Batch] = []
    for _ in range(count):
        seq, ops, pos = decode_batch(payload, pos, path=path, base=offset)
        out.append((seq, ops))
    if pos != len(payload):
        raise CorruptionError(path, offset, "trailing bytes after the last batch")
    return out


def replay(fs: FileSystem, path: str, *, tail_log_level: int = logging.WARNING
           ) -> tuple[list[Batch], LogScan]:
    """All batches of a WAL segment in order, and the scan (for torn-tail handling)."""
    records, scan = read_log_file(fs, path, FileKind.WAL, tail_log_level=tail_log_level)
    batches: list[Batch] = []
    last = 0
    for offset, payload in records:
        for seq, ops in decode_group(payload, path=path, offset=offset):
            if seq <= last:
                raise CorruptionError(path, offset, f"sequence {seq} after {last}")
            last = seq
            batches.append((seq, ops))
    return batches, scan
