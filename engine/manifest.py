"""The manifest: a log of version edits, and CURRENT, the pointer to it.

A store directory holds one live ``MANIFEST-<n>`` (a log file, framed like
the WAL, whose records are ``VERSION_EDIT`` payloads) and ``CURRENT``::

    CURRENT := "MANIFEST-<n>\\n" "crc32c " hex8 "\\n"   # hex of mask(crc32c(first line))

Every open writes a fresh manifest holding one snapshot edit of the whole
version, then switches CURRENT to it with :func:`engine.fs.atomic_write`
(write ``CURRENT.tmp``, fsync, rename, fsync-directory); so CURRENT always
names a complete manifest. A crash can leave ``CURRENT.tmp`` behind (the
next open's install writes it anew and renames it away) or, in a store
written by an older stratakv, ``<n>.dbtmp``; open deletes whatever such
temporaries remain (:func:`is_current_temp`). A torn last
edit is the trace of an operation that never finished (its files are then
unreferenced and deleted); any other damage -- including a complete last edit
with a bad checksum, which may already have been acted on -- is corruption.

Thread-safety: the caller serialises all calls (the engine holds its mutex
or is the only thread, during open).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.encoding import FileKind, RecordTag, crc, file_name, mask_crc, parse_file_name
from engine.errors import CorruptionError, InvalidArgument
from engine.fs import FileSystem, atomic_write
from engine.logfile import LogFile, read_log_file
from engine.version import Version, VersionEdit

__all__ = ["CURRENT", "CURRENT_TMP", "Manifest", "RecoveredState", "is_current_temp"]

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
CURRENT_TMP = CURRENT + ".tmp"  # what atomic_write writes before the rename


def is_current_temp(name: str) -> bool:
    """Is ``name`` a CURRENT update a crash left unfinished (deleted on open)?

    ``CURRENT.tmp`` is what :func:`engine.fs.atomic_write` leaves; stores
    written before it was used here named the temporary ``<n>.dbtmp``.
    """
    return name == CURRENT_TMP or name.endswith(".dbtmp")


@dataclass(frozen=True, slots=True)
class RecoveredState:
    version: Version
    log_number: int
    next_file: int
    last_sequence: int
    manifest_number: int


def _current_text(name: str) -> bytes:
    line = name.encode()
    return line + b"\n" + f"crc32c {mask_crc(crc(line)):08x}\n".encode()


def read_current(fs: FileSystem, dirname: str) -> tuple[str, int]:
    """The manifest file name and number that CURRENT names, checked."""
    path = fs.join(dirname, CURRENT)
    data = fs.read_file(path)
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"" or not lines[1].startswith(b"crc32c "):
        raise CorruptionError(path, 0, "CURRENT is not 'MANIFEST-<n>' plus a crc32c line")
    name = lines[0]
    try:
        stored = int(lines[1][7:], 16)
    except ValueError:
        raise CorruptionError(path, len(name) + 1, "CURRENT checksum is not hex") from None
    if mask_crc(crc(name)) != stored:
        raise CorruptionError(path, 0, "CURRENT checksum mismatch")
    parsed = parse_file_name(name.decode("ascii", "replace"))
    if parsed is None or parsed[0] is not FileKind.MANIFEST:
        raise CorruptionError(path, 0, f"CURRENT names {name!r}, not a manifest")
    return name.decode(), parsed[1]


class Manifest:
    """Owns the live manifest file of one store directory."""

    def __init__(self, fs: FileSystem, dirname: str) -> None:
        self._fs = fs
        self._dirname = dirname
        self._file: LogFile | None = None

    @staticmethod
    def recover(fs: FileSystem, dirname: str, num_levels: int) -> RecoveredState:
        """Replay the manifest CURRENT names."""
        name, number = read_current(fs, dirname)
        path = fs.join(dirname, name)
        if not fs.exists(path):
            raise CorruptionError(fs.join(dirname, CURRENT), None,
                                  f"names {name}, which does not exist")
        records, scan = read_log_file(fs, path, FileKind.MANIFEST, strict_tail=True)
        if scan.torn:
            log.warning("%s: ignoring torn last edit at offset %d (%s)",
                        path, scan.valid_end, scan.torn)
        version = Version.empty(num_levels)
        log_number = next_file = last_sequence = None
        for offset, payload in records:
            if not payload or payload[0] != RecordTag.VERSION_EDIT:
                raise CorruptionError(path, offset, "record is not a version edit")
            edit = VersionEdit.decode(payload[1:], path=path, offset=offset)
            deepest = max((level for level, _ in edit.added), default=0)
            if deepest >= num_levels:
                raise InvalidArgument(f"{path} has a table at level {deepest}; open the store "
                                      f"with num_levels > {deepest} (got {num_levels})")
            try:
                version = version.apply(edit)
            except ValueError as exc:
                raise CorruptionError(path, offset, f"edit does not apply: {exc}") from None
            if edit.log_number is not None:
                log_number = edit.log_number
            if edit.next_file is not None:
                next_file = edit.next_file
            if edit.last_sequence is not None:
                last_sequence = edit.last_sequence
        if log_number is None or next_file is None or last_sequence is None:
            raise CorruptionError(path, None, "manifest lacks log number, next file or "
                                              "last sequence")
        try:
            version.check()
        except ValueError as exc:
            raise CorruptionError(path, None, f"recovered version is inconsistent: {exc}") from None
        return RecoveredState(version, log_number, next_file, last_sequence, number)

    def install(self, number: int, snapshot: VersionEdit) -> None:
        """Start manifest ``number`` with ``snapshot`` and point CURRENT at it."""
        new = LogFile(self._fs, self._dirname, FileKind.MANIFEST, number)
        new.append(bytes((RecordTag.VERSION_EDIT,)) + snapshot.encode(), sync=True)
        text = _current_text(file_name(FileKind.MANIFEST, number))
        atomic_write(self._fs, self._fs.join(self._dirname, CURRENT), lambda f: f.append(text))
        if self._file is not None:
            self._file.close()
        self._file = new

    def log_edit(self, edit: VersionEdit) -> None:
        """Append ``edit`` durably to the live manifest."""
        if self._file is None:
            raise RuntimeError("manifest not installed")
        self._file.append(bytes((RecordTag.VERSION_EDIT,)) + edit.encode(), sync=True)

    @property
    def number(self) -> int:
        return self._file.number if self._file is not None else 0

    @property
    def size(self) -> int:
        return self._file.size if self._file is not None else 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
