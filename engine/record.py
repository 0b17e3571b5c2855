"""Log framing shared by the WAL and the manifest (LevelDB's log format).

Grammar (all integers little-endian)::

    file      := block*                      # the last block may be short
    block     := fragment* trailer?          # exactly BLOCK_SIZE = 32768 bytes
    fragment  := crc:u32 length:u16 type:u8 data[length]
    trailer   := 0x00{0..6}                  # when fewer than 7 bytes are left
    type      := FULL=1 | FIRST=2 | MIDDLE=3 | LAST=4
    crc       := mask(crc32c(type || data))

A logical record is one FULL fragment or FIRST MIDDLE* LAST. Fragments never
cross a block boundary, so after damage a reader can resynchronise at the next
block: that is what lets recovery tell a torn tail (nothing valid follows the
damage -- cut it off) from corruption in the middle of a log (a valid record
starts after the damage -- raise :class:`CorruptionError`). See FORMAT.md
for why we chose blocks over a forward scan.

Writers and readers here are pure (bytes in, bytes out); the caller owns the
file and decides what a torn tail means, so the caller logs it (once: the
WAL recovery in ``engine/recovery.py``, the manifest, the replication log), not
:func:`read_log`. Not thread-safe: one writer per file, guarded by its owner.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from engine.encoding import FORMAT_VERSION, FileKind, RecordTag, crc, mask_crc
from engine.errors import CorruptionError
from engine.fs import WritableFile

__all__ = [
    "BLOCK_SIZE",
    "HEADER_SIZE",
    "FragmentType",
    "LogScan",
    "LogWriter",
    "body_records",
    "file_header",
    "read_log",
]

BLOCK_SIZE = 32768
HEADER_SIZE = 7
_HEADER = struct.Struct("<IHB")
_ZEROS = bytes(HEADER_SIZE)


class FragmentType(IntEnum):
    ZERO = 0  # never written; what preallocated or zeroed space looks like
    FULL = 1
    FIRST = 2
    MIDDLE = 3
    LAST = 4


_TYPE_CRC = {t: crc(bytes([t])) for t in FragmentType}


def _fragment(ftype: FragmentType, data: bytes | memoryview) -> bytes:
    c = mask_crc(crc(data, _TYPE_CRC[ftype]))
    return _HEADER.pack(c, len(data), ftype) + data


class LogWriter:
    """Appends logical records to ``file`` in block framing (caller flushes/syncs)."""

    __slots__ = ("_block_offset", "file")

    def __init__(self, file: WritableFile, *, offset: int = 0) -> None:
        self.file = file
        self._block_offset = offset % BLOCK_SIZE

    def add_record(self, payload: bytes) -> None:
        left = BLOCK_SIZE - self._block_offset
        n = len(payload)
        if n + HEADER_SIZE <= left:  # fast path: the whole record fits this block
            self.file.append(_fragment(FragmentType.FULL, payload))
            self._block_offset += n + HEADER_SIZE
            if BLOCK_SIZE - self._block_offset < HEADER_SIZE:
                self._pad()
            return
        view = memoryview(payload)
        pos = 0
        first = True
        while True:
            left = BLOCK_SIZE - self._block_offset
            if left < HEADER_SIZE:
                self._pad()
                left = BLOCK_SIZE
            take = min(left - HEADER_SIZE, n - pos)
            last = pos + take == n
            if first:
                ftype = FragmentType.FULL if last else FragmentType.FIRST
            else:
                ftype = FragmentType.LAST if last else FragmentType.MIDDLE
            self.file.append(_fragment(ftype, view[pos : pos + take]))
            self._block_offset += HEADER_SIZE + take
            pos += take
            first = False
            if last:
                break
        if BLOCK_SIZE - self._block_offset < HEADER_SIZE:
            self._pad()

    def _pad(self) -> None:
        left = BLOCK_SIZE - self._block_offset
        if left:
            self.file.append(_ZEROS[:left])
        self._block_offset = 0


@dataclass(slots=True)
class LogScan:
    """What :func:`read_log` found: the good records and where the good part ends.

    ``records`` holds ``(offset, payload)`` per logical record. When the file
    ends in a torn record, ``torn`` says why and ``valid_end`` is where it
    starts (recovery truncates the file there); otherwise ``valid_end`` is
    the file length and ``torn`` is ``None``.
    """

    records: list[tuple[int, bytes]]
    valid_end: int
    torn: str | None


class _Bad(Exception):
    def __init__(self, offset: int, reason: str, *, incomplete: bool = False) -> None:
        self.offset = offset
        self.reason = reason
        # Bytes missing (file ends early, or a zero-filled extension), as opposed
        # to bytes present but wrong.
        self.incomplete = incomplete


def _parse_fragment(data: bytes, pos: int, n: int) -> tuple[FragmentType, int, int]:
    """Check the fragment at ``pos``; return (type, data start, data end) or raise _Bad."""
    block_end = (pos // BLOCK_SIZE + 1) * BLOCK_SIZE
    if n - pos < HEADER_SIZE:
        raise _Bad(pos, "truncated fragment header", incomplete=True)
    stored, length, t = _HEADER.unpack_from(data, pos)
    start = pos + HEADER_SIZE
    end = start + length
    if end > block_end:
        raise _Bad(pos, f"fragment length {length} crosses the block boundary")
    if end > n:
        raise _Bad(pos, f"fragment of {length} bytes truncated at end of file", incomplete=True)
    if t not in _TYPE_CRC or t == FragmentType.ZERO:
        zeros = not any(memoryview(data)[pos:])
        raise _Bad(pos, "zero-filled tail" if zeros else f"unknown fragment type {t}",
                   incomplete=zeros)
    if mask_crc(crc(memoryview(data)[start:end], _TYPE_CRC[t])) != stored:
        raise _Bad(pos, "fragment checksum mismatch")
    return FragmentType(t), start, end


def _record_starts_after(data: bytes, offset: int) -> int | None:
    """Offset of a checksum-valid FULL or FIRST fragment starting after ``offset``.

    The rest of the damaged block is searched byte by byte (the damage may
    have hit a length field, so fragment boundaries there are unknown); later
    blocks are parsed from their first byte, where a fragment always starts.
    """
    n = len(data)
    block = (offset // BLOCK_SIZE + 1) * BLOCK_SIZE
    first_types = (FragmentType.FULL, FragmentType.FIRST)
    for pos in range(offset + 1, min(block, n) - HEADER_SIZE + 1):
        if data[pos + 6] in first_types:
            try:
                _parse_fragment(data, pos, n)
            except _Bad:
                continue
            return pos
    while block < n:
        pos = block
        block_end = min(block + BLOCK_SIZE, n)
        while block_end - pos >= HEADER_SIZE:
            try:
                ftype, _, end = _parse_fragment(data, pos, n)
            except _Bad:
                break
            if ftype in (FragmentType.FULL, FragmentType.FIRST):
                return pos
            pos = end
        block += BLOCK_SIZE
    return None


def read_log(path: str, data: bytes, *, strict_tail: bool = False) -> LogScan:
    """Parse a whole log file; raise CorruptionError on damage followed by valid records.

    With ``strict_tail``, only an *incomplete* last record (the file ends
    early or in zeros) is a torn tail; a complete one with wrong bytes is
    corruption too. The manifest reads strictly: a synced edit may already
    have been acted on (WAL segments or tables deleted), so skipping a damaged
    one could silently lose data, while a crash mid-append can only truncate.
    """
    records: list[tuple[int, bytes]] = []
    n = len(data)
    pos = 0
    record_start = -1  # offset of the FIRST fragment of a record in progress
    parts: list[bytes] = []
    try:
        while pos < n:
            left = BLOCK_SIZE - pos % BLOCK_SIZE
            if left < HEADER_SIZE:
                pos += left  # block trailer
                continue
            ftype, start, end = _parse_fragment(data, pos, n)
            if ftype is FragmentType.FULL or ftype is FragmentType.FIRST:
                if record_start >= 0:
                    raise _Bad(pos, f"{ftype.name} fragment inside an unfinished record")
                if ftype is FragmentType.FULL:
                    records.append((pos, data[start:end]))
                else:
                    record_start = pos
                    parts = [data[start:end]]
            else:
                if record_start < 0:
                    raise _Bad(pos, f"{ftype.name} fragment without a FIRST")
                parts.append(data[start:end])
                if ftype is FragmentType.LAST:
                    records.append((record_start, b"".join(parts)))
                    record_start = -1
                    parts = []
            pos = end
        if record_start >= 0:
            raise _Bad(pos, "file ends inside a fragmented record", incomplete=True)
    except _Bad as bad:
        cut = record_start if record_start >= 0 else bad.offset
        later = _record_starts_after(data, bad.offset)
        if later is not None:
            raise CorruptionError(
                path, bad.offset, f"{bad.reason}; a valid record follows at offset {later}"
            ) from None
        if strict_tail and not bad.incomplete:
            raise CorruptionError(path, bad.offset,
                                  f"{bad.reason} in the last record (not a truncation)") from None
        return LogScan(records, cut, bad.reason)
    return LogScan(records, n, None)


# -- file headers -------------------------------------------------------------
#
# The first record of every log file names what the file is:
#     header := FILE_HEADER:u8 magic[8]="STRATAKV" format_version:u32 kind:u8 number:u64

_FILE_HEADER = struct.Struct("<B8sIBQ")
_MAGIC = b"STRATAKV"


def file_header(kind: FileKind, number: int) -> bytes:
    """The header record payload for log file ``number`` of ``kind``."""
    return _FILE_HEADER.pack(RecordTag.FILE_HEADER, _MAGIC, FORMAT_VERSION, kind, number)


def body_records(path: str, scan: LogScan, kind: FileKind) -> list[tuple[int, bytes]]:
    """Check the header record of a parsed log and return the records after it.

    An empty log (or one whose header itself was torn) has no records. A
    header of the wrong kind or magic is corruption; a newer format version is
    refused with a message saying so.
    """
    if not scan.records:
        return []
    offset, payload = scan.records[0]
    if len(payload) != _FILE_HEADER.size or payload[0] != RecordTag.FILE_HEADER:
        raise CorruptionError(path, offset, "first record is not a file header")
    _, magic, version, file_kind, _ = _FILE_HEADER.unpack(payload)
    if magic != _MAGIC:
        raise CorruptionError(path, offset, f"bad magic {magic!r}")
    if version > FORMAT_VERSION:
        raise CorruptionError(
            path, offset, f"format version {version} is newer than supported version "
            f"{FORMAT_VERSION}; upgrade stratakv to open this store")
    if version < 1:
        raise CorruptionError(path, offset, f"unknown format version {version}")
    if file_kind != kind:
        raise CorruptionError(path, offset, f"file kind {file_kind} where {kind.name} expected")
    return scan.records[1:]
