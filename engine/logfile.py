"""An append-only log file on disk: the I/O half of :mod:`engine.record`.

Used for WAL segments and manifests. Creating a log writes its header
record, syncs the file and syncs the directory, so the file's existence is
durable before any record in it is acknowledged.

Thread-safety: not thread-safe; the owner serialises calls (the WAL's single
group-commit leader, the manifest's caller holding the engine mutex).
"""

from __future__ import annotations

from engine.encoding import FileKind, file_name
from engine.fs import FileSystem
from engine.record import LogScan, LogWriter, body_records, file_header, read_log

__all__ = ["LogFile", "read_log_file"]


class LogFile:
    """A newly created log file of ``kind`` in ``dirname``."""

    def __init__(self, fs: FileSystem, dirname: str, kind: FileKind, number: int) -> None:
        self.number = number
        self.path = fs.join(dirname, file_name(kind, number))
        if fs.exists(self.path):  # file numbers are never reused; this would be a bug
            raise FileExistsError(f"refusing to overwrite {self.path}")
        self._file = fs.create(self.path)
        self._writer = LogWriter(self._file)
        self._writer.add_record(file_header(kind, number))
        self._file.sync()
        fs.sync_dir(dirname)
        self.unsynced = False  # records were appended without a sync since the last one

    def append(self, payload: bytes, *, sync: bool) -> None:
        """Write one record and hand it to the OS; with ``sync``, make it durable."""
        self._writer.add_record(payload)
        if sync:
            self._file.sync()
            self.unsynced = False
        else:
            self._file.flush()
            self.unsynced = True

    def sync(self) -> None:
        self._file.sync()
        self.unsynced = False

    @property
    def size(self) -> int:
        return self._file.size()

    def close(self) -> None:
        self._file.close()


def read_log_file(
    fs: FileSystem, path: str, kind: FileKind, *, strict_tail: bool = False,
) -> tuple[list[tuple[int, bytes]], LogScan]:
    """Read a whole log file; return the records after its header and the raw scan.

    Raises CorruptionError for damage followed by valid data, a bad header or
    a newer format; a torn tail is reported in ``scan.torn`` for the caller to
    cut off (or to treat as corruption if the file is not the newest).
    """
    scan = read_log(path, fs.read_file(path), strict_tail=strict_tail)
    return body_records(path, scan, kind), scan
