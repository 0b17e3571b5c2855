"""The real file system's durable appends: write+sync in one pwritev2(RWF_DSYNC) call
when the kernel takes it, the classic write + fdatasync otherwise, same bytes either way."""

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


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "disk full")

    monkeypatch.setattr(fsmod, "_RWF_DSYNC", 8)
    monkeypatch.setattr(os, "pwritev", full)
    f = OSFileSystem().create(str(tmp_path / "log"))
    f.append(b"a")
    with pytest.raises(OSError) as info:
        f.sync()
    assert info.value.errno == errno.ENOSPC
    f.close()
