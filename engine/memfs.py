"""MemFS: the in-memory, crashable :class:`~engine.fs.FileSystem` the tests run on.

:meth:`MemFS.crash_clone` returns the file system as a power failure would
leave it, keeping only bytes that were synced and directory entries whose
directory was synced (LevelDB's fault-injection Env, Pebble's CrashableMem);
:meth:`MemFS.process_crash_clone` what ``kill -9`` leaves (every byte handed
to the "OS"). ``set_fault`` injects I/O errors to test disk-full handling.

It keeps every line of the contract in :mod:`engine.fs`; what "the OS has"
is ``_Inode.data``, what survives power loss is ``_Inode.synced`` and the
``_durable`` directory map.

Thread-safety: ``_mutex`` guards the namespace (files, directories, locks);
file objects follow the contract of :mod:`engine.fs` (one writer at a time).
"""

from __future__ import annotations

import errno
import posixpath
import random
import threading
from collections.abc import Callable

from engine.fs import FileLock, FileSystem, LockedError, RandomAccessFile, WritableFile

__all__ = ["FaultHook", "MemFS"]


class _Inode:
    __slots__ = ("data", "synced")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.synced = bytes(data)


class _MemWritableFile:
    __slots__ = ("_closed", "_fs", "_inode", "_pending", "path")

    def __init__(self, fs: MemFS, path: str, inode: _Inode) -> None:
        self._fs = fs
        self.path = path
        self._inode = inode
        self._pending = bytearray()
        self._closed = False

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data

    def flush(self) -> None:
        if self._pending:
            self._fs._fault("write", self.path)
            self._inode.data += self._pending
            self._pending.clear()

    def sync(self) -> None:
        self.flush()
        self._fs._fault("sync", self.path)
        self._inode.synced = bytes(self._inode.data)

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def size(self) -> int:
        return len(self._inode.data) + len(self._pending)


class _MemRandomAccessFile:
    __slots__ = ("_fs", "_inode", "path")

    def __init__(self, fs: MemFS, path: str, inode: _Inode) -> None:
        self._fs = fs
        self.path = path
        self._inode = inode

    def pread(self, n: int, offset: int) -> bytes:
        self._fs._fault("read", self.path)
        return bytes(self._inode.data[offset : offset + n])

    def size(self) -> int:
        return len(self._inode.data)

    def close(self) -> None:
        pass


class _MemFileLock:
    def __init__(self, fs: MemFS, path: str) -> None:
        self._fs = fs
        self._path = path

    def release(self) -> None:
        with self._fs._mutex:
            self._fs._locks.discard(self._path)


FaultHook = Callable[[str, str], None]


class MemFS(FileSystem):
    """An in-memory file system that can be crashed and can fail on demand.

    ``set_fault(hook)`` installs ``hook(op, path)``, called before every
    ``write``/``sync``/``read``/``create``/``rename``/``remove``/``sync_dir``;
    it may raise ``OSError`` to simulate a failing disk.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._files: dict[str, _Inode] = {}
        self._durable: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._locks: set[str] = set()
        self._fault_hook: FaultHook | None = None

    @staticmethod
    def _norm(path: str) -> str:
        # One leading slash: normpath keeps POSIX's implementation-defined "//".
        return posixpath.normpath("/" + path.lstrip("/"))

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def dirname(self, path: str) -> str:
        return posixpath.dirname(path)

    def set_fault(self, hook: FaultHook | None) -> None:
        self._fault_hook = hook

    def _fault(self, op: str, path: str) -> None:
        hook = self._fault_hook
        if hook is not None:
            hook(op, path)

    def _need_dir(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", parent)

    def _inode(self, path: str) -> _Inode:
        try:
            return self._files[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", path) from None

    def create(self, path: str) -> WritableFile:
        path = self._norm(path)
        self._fault("create", path)
        with self._mutex:
            self._need_dir(path)
            inode = _Inode()
            self._files[path] = inode
        return _MemWritableFile(self, path, inode)

    def open_append(self, path: str) -> WritableFile:
        path = self._norm(path)
        with self._mutex:
            return _MemWritableFile(self, path, self._inode(path))

    def open_read(self, path: str) -> RandomAccessFile:
        path = self._norm(path)
        with self._mutex:
            return _MemRandomAccessFile(self, path, self._inode(path))

    def read_file(self, path: str) -> bytes:
        path = self._norm(path)
        self._fault("read", path)
        with self._mutex:
            return bytes(self._inode(path).data)

    def exists(self, path: str) -> bool:
        path = self._norm(path)
        with self._mutex:
            return path in self._files or path in self._dirs

    def listdir(self, path: str) -> list[str]:
        path = self._norm(path)
        with self._mutex:
            if path not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            names = {posixpath.basename(p) for p in self._files if posixpath.dirname(p) == path}
            names |= {posixpath.basename(d) for d in self._dirs if posixpath.dirname(d) == path}
            names.discard("")
            return sorted(names)

    def mkdirs(self, path: str) -> None:
        path = self._norm(path)
        with self._mutex:
            while path not in self._dirs:
                self._dirs.add(path)
                path = posixpath.dirname(path)

    def remove(self, path: str) -> None:
        path = self._norm(path)
        self._fault("remove", path)
        with self._mutex:
            self._inode(path)
            del self._files[path]

    def rename(self, src: str, dst: str) -> None:
        src, dst = self._norm(src), self._norm(dst)
        self._fault("rename", dst)
        with self._mutex:
            inode = self._inode(src)
            self._need_dir(dst)
            del self._files[src]
            self._files[dst] = inode

    def sync_dir(self, path: str) -> None:
        path = self._norm(path)
        self._fault("sync_dir", path)
        with self._mutex:
            for p in [p for p in self._durable if posixpath.dirname(p) == path]:
                del self._durable[p]
            for p, inode in self._files.items():
                if posixpath.dirname(p) == path:
                    self._durable[p] = inode

    def truncate(self, path: str, size: int) -> None:
        path = self._norm(path)
        with self._mutex:
            inode = self._inode(path)
            del inode.data[size:]
            inode.synced = bytes(inode.data)

    def file_size(self, path: str) -> int:
        path = self._norm(path)
        with self._mutex:
            return len(self._inode(path).data)

    def lock(self, path: str) -> FileLock:
        path = self._norm(path)
        with self._mutex:
            if path in self._locks:
                raise LockedError(f"{path} is locked: the store is open elsewhere")
            self._locks.add(path)
            if path not in self._files:
                self._files[path] = _Inode()
        return _MemFileLock(self, path)

    def remove_tree(self, path: str) -> None:
        path = self._norm(path)
        prefix = path.rstrip("/") + "/"
        with self._mutex:
            for p in [p for p in self._files if p.startswith(prefix)]:
                del self._files[p]
            self._dirs = {d for d in self._dirs if d != path and not d.startswith(prefix)}

    def link_or_copy(self, src: str, dst: str) -> None:
        src, dst = self._norm(src), self._norm(dst)
        self._fault("create", dst)
        with self._mutex:
            inode = self._inode(src)
            self._need_dir(dst)
            self._files[dst] = inode  # a hard link: the same, immutable inode

    # -- crash simulation ----------------------------------------------------

    def crash_clone(self, rng: random.Random | None = None) -> MemFS:
        """Return what a power failure would leave behind.

        Only durable directory entries survive, each with its synced bytes.
        With ``rng``, each file also keeps a random prefix of its unsynced
        tail, and with some probability that kept tail has a damaged byte --
        the torn writes real disks produce.
        """
        clone = MemFS()
        with self._mutex:
            clone._dirs = set(self._dirs)
            for path, inode in self._durable.items():
                data = bytearray(inode.synced)
                unsynced = inode.data[len(inode.synced) :]
                if rng is not None and unsynced and inode.data.startswith(inode.synced):
                    keep = rng.randrange(len(unsynced) + 1)
                    tail = bytearray(unsynced[:keep])
                    if tail and rng.random() < 0.25:
                        tail[rng.randrange(len(tail))] ^= 1 + rng.randrange(255)
                    data += tail
                new = _Inode(bytes(data))
                clone._files[path] = new
                clone._durable[path] = new
        return clone

    def process_crash_clone(self) -> MemFS:
        """Return what a killed process leaves: everything flushed to the 'OS' survives."""
        clone = MemFS()
        with self._mutex:
            clone._dirs = set(self._dirs)
            for path, inode in self._files.items():
                new = _Inode(bytes(inode.data))
                clone._files[path] = new
                clone._durable[path] = new
            clone._locks = set()
        return clone
