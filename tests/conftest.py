"""Shared fixtures: file systems (in-memory and real), engines, seeds."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

import engine
from engine.fs import FileSystem, MemFS, OSFileSystem


@pytest.fixture(params=["memfs", "osfs"])
def fs_path(request: pytest.FixtureRequest, tmp_path: object) -> tuple[FileSystem, str]:
    """A file system and a store directory on it: in memory, then on the real disk."""
    if request.param == "memfs":
        fs: FileSystem = MemFS()
        return fs, "/db"
    return OSFileSystem(), os.path.join(str(tmp_path), "db")


@pytest.fixture
def db(fs_path: tuple[FileSystem, str]) -> Iterator[engine.Engine]:
    fs, path = fs_path
    e = engine.open(path, fs=fs)
    yield e
    e.close()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A per-test random seed, printed so a failure can be replayed (STRATAKV_SEED=...)."""
    value = int(os.environ.get("STRATAKV_SEED", random.randrange(1 << 30)))
    print(f"seed={value}")
    return value
