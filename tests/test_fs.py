"""Durable appends: write+sync in one pwritev2(RWF_DSYNC) call when the kernel takes it,
write + fdatasync otherwise, the same bytes either way -- and a failed sync is final."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import engine.fs as fsmod
from engine.fs import OSFileSystem

needs_rwf_dsync = pytest.mark.skipif(not fsmod._RWF_DSYNC, reason="no RWF_DSYNC here")


def _count_datasyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = fsmod._datasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(fsmod, "_datasync", counting)
    return calls


@needs_rwf_dsync
def test_sync_of_a_fresh_file_is_one_dsync_write(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = _count_datasyncs(monkeypatch)
    f = OSFileSystem().create(str(tmp_path / "log"))
    for i in range(5):
        f.append(b"record %d;" % i)
        f.sync()
    f.close()
    assert syncs == []  # every sync went through pwritev2(RWF_DSYNC)
    assert (tmp_path / "log").read_bytes() == b"".join(b"record %d;" % i for i in range(5))


def test_reopened_or_flushed_file_gets_a_full_fdatasync(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """RWF_DSYNC covers only its own bytes: earlier unsynced ones need fdatasync."""
    path = str(tmp_path / "log")
    fs = OSFileSystem()
    f = fs.create(path)
    f.append(b"old")
    f.close()  # written, never synced
    syncs = _count_datasyncs(monkeypatch)
    f = fs.open_append(path)
    f.append(b"+new")
    f.sync()
    assert len(syncs) == 1
    f.append(b"+flushed")
    f.flush()
    f.append(b"+more")
    f.sync()
    assert len(syncs) == 2
    f.close()
    assert Path(path).read_bytes() == b"old+new+flushed+more"


def test_kernel_refusing_rwf_dsync_falls_back_for_good(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "not here")

    monkeypatch.setattr(fsmod, "_RWF_DSYNC", 8)
    monkeypatch.setattr(os, "pwritev", refuse)
    syncs = _count_datasyncs(monkeypatch)
    f = OSFileSystem().create(str(tmp_path / "log"))
    f.append(b"a")
    f.sync()
    f.append(b"b")
    f.sync()
    f.close()
    assert len(syncs) == 2 and fsmod._RWF_DSYNC == 0
    assert (tmp_path / "log").read_bytes() == b"ab"


def test_failed_sync_poisons_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel wrote the bytes, then the sync failed: the error surfaces, and no later
    write, sync or close may append them again (a retry would duplicate records)."""
    real_write = os.write

    def written_then_eio(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        real_write(fd, bytes(buffers[0]))
        raise OSError(errno.EIO, "I/O error during sync")

    monkeypatch.setattr(fsmod, "_RWF_DSYNC", 8)
    monkeypatch.setattr(os, "pwritev", written_then_eio)
    path = tmp_path / "log"
    path.write_bytes(b"")
    f = OSFileSystem().open_append(str(path))
    f.append(b"record;")
    with pytest.raises(OSError) as first:
        f.sync()
    assert first.value.errno == errno.EIO
    for attempt in (f.sync, f.flush):
        with pytest.raises(OSError, match="an earlier sync failed"):
            attempt()
    f.append(b"later;")
    with pytest.raises(OSError, match="an earlier sync failed"):
        f.sync()
    f.close()
    assert path.read_bytes() == b"record;"


def test_failed_fdatasync_poisons_the_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsmod, "_RWF_DSYNC", 0)
    monkeypatch.setattr(fsmod, "_datasync", eio)
    f = OSFileSystem().create(str(tmp_path / "log"))
    f.append(b"a")
    with pytest.raises(OSError):
        f.sync()
    monkeypatch.setattr(fsmod, "_datasync", lambda fd: None)  # the disk "recovers"
    with pytest.raises(OSError, match="an earlier sync failed"):
        f.sync()  # still refused: the first sync's bytes may be gone
    f.close()


def test_replica_log_never_reports_a_failed_sync_as_durable() -> None:
    """NodeLog.sync failing once must not let the next call return the same entries as
    synced (it once did: the pending records were taken before the sync that failed)."""
    from engine.fs import MemFS
    from replication.consensus import LogEntry
    from replication.node_log import NodeLog

    fs = MemFS()
    lg = NodeLog(fs, "/log", 0)
    lg.append([LogEntry(1, 1, b"one")])
    assert lg.sync() == 1
    failing = True

    def fault(op: str, path: str) -> None:
        if failing and op == "sync":
            raise OSError(errno.EIO, "disk failed")

    fs.set_fault(fault)
    lg.append([LogEntry(2, 1, b"two")])
    with pytest.raises(OSError):
        lg.sync()
    failing = False
    with pytest.raises(OSError, match="an earlier sync failed"):
        lg.sync()
    reopened = NodeLog(fs, "/log", 0)  # a restart re-reads what is really there
    assert reopened.last_index in (1, 2)
    assert reopened.entry(1) == LogEntry(1, 1, b"one")
