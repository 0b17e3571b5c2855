"""Engine snapshots over the network: a leader serves checkpoints, followers fetch them in chunks.

When a follower needs entries the leader has compacted away, Raft sends it
an InstallSnapshot (index and term only: replication.raft); the follower's
applier then needs the application's state at that index -- here an engine
checkpoint. It pulls it from the leader over the client protocol::

    follower                                   leader
    snapshot_open(min_index) ----------------> SnapshotStore.prepare: reuse or
                             <---------------- checkpoint  -> SnapshotInfo
    snapshot_read(id, name, offset, n) ------> SnapshotStore.read
                             <---------------- n bytes (<= chunk_bytes)
    ... every file, in chunks of about 1 MiB ...
    verify every file's crc32c and the listing's checksum; rename into place

Invariants:

1. A served snapshot is immutable once listed: :meth:`SnapshotStore.prepare`
   builds it in a temporary directory, computes its listing (name, size,
   crc32c of each file) and renames it into place with its listing written
   last (``INFO``). A directory without ``INFO`` is a half-built one and is
   deleted, never served.
2. A download is resumable: :func:`fetch_snapshot` appends to files in
   ``incoming/<id>-<checksum>/`` and after a dropped connection, or a
   restart of either side, continues each file from the bytes it has. A
   leader that restarted serves the same snapshot again from disk (the same
   id and checksum), so the bytes already fetched still count; a different
   snapshot has a different directory, and the old partial one is deleted.
   (hashicorp/raft issue 212 and logcabin issue 174: restarting a transfer
   from zero on each hiccup can mean it never finishes.)
3. Nothing is installed unverified: every file's crc32c and size must match
   the listing, and the listing its checksum, before the directory is
   renamed to where the engine opens it. A mismatch deletes the file that
   failed (the next attempt fetches it again) and raises CorruptionError.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import engine
from engine.encoding import crc
from engine.errors import CorruptionError, InvalidArgument
from engine.fs import FileSystem, atomic_write

__all__ = ["DEFAULT_CHUNK_BYTES", "SnapshotInfo", "SnapshotStore", "fetch_snapshot"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20
_INFO = "INFO"
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A served snapshot: its id, the log index it holds, its files and their checksum."""

    id: str
    index: int
    files: tuple[tuple[str, int, int], ...]  # (name, size in bytes, crc32c)
    checksum: int  # crc32c of the listing: names the exact bytes of the whole snapshot

    def to_wire(self) -> dict[str, object]:
        return {"id": self.id, "index": self.index, "checksum": self.checksum,
                "files": [list(f) for f in self.files]}

    @classmethod
    def from_wire(cls, value: object) -> SnapshotInfo:
        """The info a server sent; ValueError if it is malformed."""
        if not isinstance(value, dict):
            raise ValueError(f"snapshot info must be a dict, got {type(value).__name__}")
        try:
            files = tuple((str(n), int(s), int(c)) for n, s, c in value["files"])
            info = cls(str(value["id"]), int(value["index"]), files, int(value["checksum"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed snapshot info: {exc!r}") from None
        for name, _, _ in files:
            _check_name(name)
        if listing_checksum(info.files) != info.checksum:
            raise ValueError("snapshot listing does not match its checksum")
        return info


def listing_checksum(files: tuple[tuple[str, int, int], ...]) -> int:
    c = 0
    for name, size, file_crc in files:
        raw = name.encode("utf-8")
        c = crc(_U64.pack(len(raw)) + raw + _U64.pack(size) + _U64.pack(file_crc), c)
    return c


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name == _INFO:
        raise ValueError(f"bad snapshot file name {name!r}")


def _file_crc(fs: FileSystem, path: str, chunk: int = DEFAULT_CHUNK_BYTES) -> tuple[int, int]:
    """(size, crc32c) of the file at ``path``, read in chunks."""
    f = fs.open_read(path)
    try:
        size = f.size()
        read = f.pread
        c = 0
        for off in range(0, size, chunk):
            c = crc(read(min(chunk, size - off), off), c)
        return size, c
    finally:
        f.close()


def _encode_info(info: SnapshotInfo) -> bytes:
    lines = [f"stratakv snapshot 1\nindex {info.index}\nchecksum {info.checksum}\n"]
    lines += [f"file {name} {size} {c}\n" for name, size, c in info.files]
    return "".join(lines).encode("utf-8")


def _decode_info(snap_id: str, data: bytes, path: str) -> SnapshotInfo:
    try:
        head, index_line, checksum_line, *rest = data.decode("utf-8").splitlines()
        if head != "stratakv snapshot 1":
            raise ValueError(f"unknown header {head!r}")
        files = []
        for line in rest:
            word, name, size, c = line.split(" ")
            if word != "file":
                raise ValueError(f"bad line {line!r}")
            files.append((name, int(size), int(c)))
        info = SnapshotInfo(snap_id, int(index_line.split(" ")[1]), tuple(files),
                            int(checksum_line.split(" ")[1]))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptionError(path, 0, f"bad snapshot INFO: {exc}") from None
    if listing_checksum(info.files) != info.checksum:
        raise CorruptionError(path, 0, "snapshot INFO does not match its checksum")
    return info


class SnapshotStore:
    """The checkpoints a node serves to followers, in directory ``path``. Thread-safe.

    Keeps the newest complete snapshot only; ``_lock`` serialises building
    one (a checkpoint flushes the engine: one at a time is plenty).
    """

    def __init__(self, fs: FileSystem, path: str) -> None:
        self._fs = fs
        self.path = path
        self._lock = threading.Lock()
        fs.mkdirs(path)
        for name in fs.listdir(path):  # invariant 1: half-built ones go
            if not fs.exists(fs.join(path, name, _INFO)):
                fs.remove_tree(fs.join(path, name))

    def _latest(self) -> SnapshotInfo | None:
        names = sorted(n for n in self._fs.listdir(self.path) if n.isdigit())
        if not names:
            return None
        info_path = self._fs.join(self.path, names[-1], _INFO)
        return _decode_info(names[-1], self._fs.read_file(info_path), info_path)

    def prepare(self, source: engine.Engine, min_index: int) -> SnapshotInfo:
        """The newest snapshot if it holds ``min_index``, else a new checkpoint of ``source``."""
        with self._lock:
            latest = self._latest()
            if latest is not None and latest.index >= min_index:
                return latest
            tmp = self._fs.join(self.path, "building")
            if self._fs.exists(tmp):
                self._fs.remove_tree(tmp)
            index = source.checkpoint(tmp)
            if index < min_index:
                self._fs.remove_tree(tmp)
                raise InvalidArgument(f"this node has applied only up to {index}, "
                                      f"not {min_index}")
            files = []
            for name in sorted(self._fs.listdir(tmp)):
                size, c = _file_crc(self._fs, self._fs.join(tmp, name))
                files.append((name, size, c))
            snap_id = f"{index:020d}"
            listing = tuple(files)
            info = SnapshotInfo(snap_id, index, listing, listing_checksum(listing))
            atomic_write(self._fs, self._fs.join(tmp, _INFO),
                         lambda f: f.append(_encode_info(info)))
            final = self._fs.join(self.path, snap_id)
            if self._fs.exists(final):
                self._fs.remove_tree(final)
            self._fs.rename(tmp, final)
            self._fs.sync_dir(self.path)
            for name in self._fs.listdir(self.path):
                if name != snap_id:
                    self._fs.remove_tree(self._fs.join(self.path, name))
            log.info("snapshot %s prepared: index %d, %d files, %d bytes", snap_id, index,
                     len(files), sum(s for _, s, _ in files))
            return info

    def read(self, snap_id: str, name: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of file ``name`` of snapshot ``snap_id``."""
        if not snap_id.isdigit():
            raise InvalidArgument(f"bad snapshot id {snap_id!r}")
        try:
            _check_name(name)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if offset < 0 or not 0 < length <= 64 * DEFAULT_CHUNK_BYTES:
            raise InvalidArgument(f"bad snapshot range {offset}+{length}")
        path = self._fs.join(self.path, snap_id, name)
        if not self._fs.exists(self._fs.join(self.path, snap_id, _INFO)) \
                or not self._fs.exists(path):
            raise InvalidArgument(f"snapshot {snap_id} has no file {name!r} (superseded?)")
        f = self._fs.open_read(path)
        try:
            size = f.size()
            return f.pread(max(0, min(length, size - offset)), offset)
        finally:
            f.close()


def fetch_snapshot(fs: FileSystem, incoming: str, dest: str, info: SnapshotInfo,
                   read: Callable[[str, int, int], bytes],
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Download snapshot ``info`` into ``dest`` (which must not exist); return its index.

    ``read(name, offset, length)`` fetches one chunk (it raises on a dropped
    connection; call again to resume). Partial downloads live in
    ``incoming`` (invariant 2); the finished one is verified and renamed to
    ``dest`` (invariant 3).
    """
    fs.mkdirs(incoming)
    here = f"{info.id}-{info.checksum:08x}"
    for name in fs.listdir(incoming):
        if name != here:  # a partial download of a snapshot no longer offered
            fs.remove_tree(fs.join(incoming, name))
    work = fs.join(incoming, here)
    fs.mkdirs(work)
    resumed = 0
    for name, size, _ in info.files:
        path = fs.join(work, name)
        have = fs.file_size(path) if fs.exists(path) else 0
        if have > size:
            fs.remove(path)
            have = 0
        resumed += have
        if have == size and fs.exists(path):
            continue
        f = fs.open_append(path) if fs.exists(path) else fs.create(path)
        try:
            while have < size:
                data = read(name, have, min(chunk_bytes, size - have))
                if not data:
                    raise CorruptionError(path, have, "the server sent an empty chunk "
                                                      "before the end of the file")
                f.append(data)
                have += len(data)
            f.sync()
        finally:
            f.close()
    if resumed:
        log.info("snapshot %s: resumed a download, %d bytes were already here", info.id,
                 resumed)
    for name, size, c in info.files:  # invariant 3
        path = fs.join(work, name)
        got_size, got = _file_crc(fs, path)
        if (got_size, got) != (size, c):
            fs.remove(path)
            raise CorruptionError(path, 0, f"snapshot file {name}: {got_size} bytes with "
                                           f"crc {got:08x}, expected {size} with {c:08x}")
    fs.sync_dir(work)
    fs.rename(work, dest)
    fs.sync_dir(fs.dirname(dest))
    return info.index
