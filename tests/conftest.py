"""Shared fixtures: file systems (in-memory and real), engines, seeds."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.fs import FileSystem, MemFS, OSFileSystem
from replication import Cluster


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


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Factory of clusters under ``tmp_path/<name>``; all closed at teardown."""
    made: list[Cluster] = []

    def make(name: str = "cluster", nodes: int = 3, **kwargs: Any) -> Cluster:
        kwargs.setdefault("election_delay", 0.05)
        cluster = Cluster.open(str(tmp_path / name), nodes, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
