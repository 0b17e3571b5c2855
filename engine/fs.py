"""The only way the engine touches files: a small FileSystem interface.

Two implementations:

* :class:`OSFileSystem` -- the real one (``os.pread``, ``fdatasync``,
  ``fsync`` of directories, ``flock``).
* :class:`MemFS` (in :mod:`engine.memfs`, re-exported here) -- in memory,
  and *crashable*: :meth:`MemFS.crash_clone`
  returns the file system as a power failure would leave it, keeping only
  bytes that were synced and directory entries whose directory was synced
  (LevelDB's fault-injection Env, Pebble's CrashableMem). It can also inject
  I/O errors to test disk-full handling.

Contract shared by both (the engine relies on every line):

1. ``WritableFile.append`` buffers; ``flush`` hands the bytes to the OS (they
   survive the death of the process); ``sync`` makes them durable (they
   survive power loss).
2. A new, renamed or removed directory entry is durable only after
   ``sync_dir`` of its directory.
3. A ``RandomAccessFile`` stays readable after its path is removed, until it
   is closed (POSIX unlink semantics); the engine relies on this to let old
   readers finish while compaction deletes files.

Thread-safety: distinct file objects may be used from different threads; one
``WritableFile`` must not be used by two threads at once.
"""

from __future__ import annotations

import errno
import functools
import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from engine.errors import EngineError

__all__ = [
    "FileLock",
    "FileSystem",
    "LockedError",
    "MemFS",
    "OSFileSystem",
    "RandomAccessFile",
    "WritableFile",
    "atomic_write",
]

_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
_WRITE_BUFFER_BYTES = 256 * 1024


class LockedError(EngineError):
    """The directory is already opened by another engine (in this or another process)."""


class WritableFile(Protocol):
    """An append-only file being written."""

    path: str

    def append(self, data: bytes | bytearray | memoryview) -> None: ...
    def flush(self) -> None: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...
    def size(self) -> int: ...


class RandomAccessFile(Protocol):
    """An immutable file read at arbitrary offsets."""

    path: str

    @property
    def pread(self) -> Callable[[int, int], bytes]:
        """``pread(n, offset)``: ``n`` bytes at ``offset`` (fewer at the end).

        ``os.pread``'s argument order, so that the OS file's can be a C call.
        """

    def size(self) -> int: ...
    def close(self) -> None: ...


class FileLock(Protocol):
    def release(self) -> None: ...


class FileSystem(ABC):
    """Directory and file operations the engine needs, nothing more."""

    @abstractmethod
    def create(self, path: str) -> WritableFile:
        """Create (or truncate) ``path`` for appending."""

    @abstractmethod
    def open_append(self, path: str) -> WritableFile:
        """Open the existing file ``path`` to append after its current end."""

    @abstractmethod
    def open_read(self, path: str) -> RandomAccessFile: ...

    @abstractmethod
    def read_file(self, path: str) -> bytes: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abstractmethod
    def mkdirs(self, path: str) -> None: ...

    @abstractmethod
    def remove(self, path: str) -> None: ...

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src``."""

    @abstractmethod
    def sync_dir(self, path: str) -> None: ...

    @abstractmethod
    def truncate(self, path: str, size: int) -> None:
        """Cut ``path`` to ``size`` bytes and make that durable."""

    @abstractmethod
    def file_size(self, path: str) -> int: ...

    @abstractmethod
    def lock(self, path: str) -> FileLock:
        """Take an exclusive lock on ``path`` (created if missing) or raise LockedError."""

    @abstractmethod
    def remove_tree(self, path: str) -> None:
        """Remove directory ``path`` and everything below it (no error if missing)."""

    @abstractmethod
    def link_or_copy(self, src: str, dst: str) -> None:
        """Make ``dst`` a durable copy of immutable file ``src`` (a hard link when possible)."""

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)


# --------------------------------------------------------------------------
# The real file system.


# pwritev2 with RWF_DSYNC writes and syncs in one system call (Linux >= 4.7):
# a durable append then gives up the GIL once instead of twice, and under
# many threads the wait to get it back after the sync is what costs (it
# exceeded the fdatasync itself in the 3-node cluster). 0 where unsupported.
_RWF_DSYNC: int = getattr(os, "RWF_DSYNC", 0)


def atomic_write(fs: FileSystem, path: str, fill: Callable[[WritableFile], None]) -> None:
    """Write a whole new file at ``path`` so that a crash leaves the old one or the new one.

    The one discipline for every file that replaces another (CURRENT, a
    replica log segment, an engine pointer, a cluster descriptor):
    ``fill`` writes ``path.tmp``, which is synced, renamed over ``path``,
    and the directory synced so the rename itself is durable.
    """
    tmp = path + ".tmp"
    f = fs.create(tmp)
    try:
        fill(f)
        f.sync()
    finally:
        f.close()
    fs.rename(tmp, path)
    fs.sync_dir(fs.dirname(path))


class _OSWritableFile:
    __slots__ = ("_buf", "_failed", "_fd", "_size", "_unsynced", "path")

    def __init__(self, path: str, flags: int = os.O_CREAT | os.O_TRUNC) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | flags, 0o644)
        self._buf = bytearray()
        self._size = os.fstat(self._fd).st_size
        # True while bytes handed to the OS may not be durable yet. A reopened
        # file counts: its old tail may be unsynced, and RWF_DSYNC covers only
        # the bytes of its own write, so the first sync is a full fdatasync.
        self._unsynced = self._size > 0
        self._failed: OSError | None = None  # a sync failed: the file is unusable

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        self._size += len(data)
        if len(self._buf) >= _WRITE_BUFFER_BYTES:
            self.flush()

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise OSError(errno.EIO, f"{self.path}: an earlier sync failed ({self._failed}); "
                          "what reached the disk is unknown: reopen to recover")

    def flush(self) -> None:
        self._check_usable()
        if not self._buf:
            return
        view = memoryview(self._buf)
        written = 0
        try:
            while written < len(view):
                written += os.write(self._fd, view[written:])
        finally:
            view.release()
            del self._buf[:written]
            if written:
                self._unsynced = True

    def sync(self) -> None:
        """Make every byte appended so far durable, or fail for good.

        A failed sync poisons the file (PostgreSQL's fsync lesson): the kernel
        may have dropped the dirty pages, and a failed RWF_DSYNC write may or
        may not have landed, so retrying could report lost bytes as durable or
        append them twice. Recovery is reopening, which re-reads what is there.
        """
        global _RWF_DSYNC
        self._check_usable()
        try:
            if _RWF_DSYNC and self._buf and not self._unsynced:
                try:  # offset -1: write at the file position, like write(2)
                    written = os.pwritev(self._fd, [self._buf], -1, _RWF_DSYNC)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    _RWF_DSYNC = 0  # refused before writing anything: fdatasync from now on
                else:
                    del self._buf[:written]
                    if not self._buf:
                        return
                    self._unsynced = True  # a short write: finish the usual way
            self.flush()
            _datasync(self._fd)
        except OSError as exc:
            self._failed = exc
            raise
        self._unsynced = False

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._failed is None:
                self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1

    def size(self) -> int:
        return self._size


def _read_closed(n: int, offset: int) -> bytes:
    raise ValueError("read of a closed file")


class _OSRandomAccessFile:
    __slots__ = ("__weakref__", "_fd", "_finalizer", "_size", "path", "pread")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        # Every block a point read misses comes through here: a C partial,
        # not a Python method around os.pread.
        self.pread: Callable[[int, int], bytes] = functools.partial(os.pread, self._fd)

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self._finalizer()
        self.pread = _read_closed  # the descriptor number may be reused by another file


class _OSFileLock:
    def __init__(self, path: str) -> None:
        import fcntl

        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise LockedError(f"{path} is locked: the store is open elsewhere") from exc

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


class OSFileSystem(FileSystem):
    """Files on the local disk."""

    def create(self, path: str) -> WritableFile:
        return _OSWritableFile(path)

    def open_append(self, path: str) -> WritableFile:
        return _OSWritableFile(path, os.O_APPEND)

    def open_read(self, path: str) -> RandomAccessFile:
        return _OSRandomAccessFile(path)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def mkdirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def file_size(self, path: str) -> int:
        return os.path.getsize(path)

    def lock(self, path: str) -> FileLock:
        return _OSFileLock(path)

    def remove_tree(self, path: str) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    def link_or_copy(self, src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            import shutil

            shutil.copyfile(src, dst)
            fd = os.open(dst, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# MemFS lives in engine/memfs.py; imported last, as it builds on the classes above.
from engine.memfs import MemFS  # noqa: E402
