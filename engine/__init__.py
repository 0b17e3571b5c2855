"""stratakv's storage engine: an embedded, durable, transactional LSM key-value store.

Keys and values are bytes. Quick start::

    import engine
    with engine.open("/tmp/db") as db:
        db.put(b"k", b"v")
        assert db.get(b"k") == b"v"
        with db.transaction() as tx:
            tx.put(b"k", tx.get(b"k") + b"!")

See ``Engine`` for the full API and ``Options`` for tunables.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from engine.batch import WriteBatch
from engine.db import Engine, Snapshot
from engine.errors import (
    ClosedError,
    CorruptionError,
    EngineError,
    InvalidArgument,
    ReadOnlyError,
    SerializationFailure,
    StorageError,
    TransactionClosed,
)
from engine.fs import FileSystem, LockedError, MemFS, OSFileSystem
from engine.options import Options
from engine.txn import Transaction

__all__ = [
    "ClosedError",
    "CorruptionError",
    "Engine",
    "EngineError",
    "FileSystem",
    "InvalidArgument",
    "LockedError",
    "MemFS",
    "OSFileSystem",
    "Options",
    "ReadOnlyError",
    "SerializationFailure",
    "Snapshot",
    "StorageError",
    "Transaction",
    "TransactionClosed",
    "WriteBatch",
    "__version__",
    "open",
]


def _version() -> str:
    """The installed distribution's version; a marker when running from a source tree."""
    try:
        return metadata.version("stratakv")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()


def open(path: str, *, fs: FileSystem | None = None, read_only: bool = False,
         **options: Any) -> Engine:
    """Open (creating if needed) the store in directory ``path``.

    Keyword arguments are :class:`Options` fields, e.g. ``sync="none"``;
    ``fs`` substitutes a file system (``MemFS()`` for tests).
    ``read_only=True`` opens an existing store for reading only, even while
    another process has it open for writing (RocksDB's ``OpenForReadOnly``):
    a consistent view as of the open, refreshed by ``refresh()``; it writes
    no file and takes no lock, and every write call raises
    :class:`ReadOnlyError`.
    """
    return Engine(path, Options(**options), fs, read_only=read_only)
