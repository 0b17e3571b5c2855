"""Shared fixtures: file systems (in-memory and real), engines, seeds."""

from __future__ import annotations

import os
import random
import time
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
        kwargs.setdefault("election_timeout_ms", 50)
        cluster = Cluster.open(str(tmp_path / name), nodes, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def check_certifiers_quiet(cluster: Cluster, timeout: float = 5.0) -> None:
    """With no transaction active, a current leader's certifier settles every write and
    then tracks nothing: every committed transaction has been freed (ssi.py invariant 2).

    Not checked: a test that leaves a transaction open (its state is legitimately
    kept), or a cluster still busy (its state changes between two looks: closing
    under load). A state that stays the same, non-empty, for ``timeout`` is a leak.
    """
    for node in cluster.nodes:
        tm = node._tm
        if tm is None:
            continue
        deadline = time.monotonic() + timeout
        previous: object = None
        while tm.current():
            tracked = tm.tracked()
            if tracked["active"] or not any(tracked.values()):
                break
            seen = (tracked, tm.stats["commits"])
            if previous is not None and seen != previous:
                break  # still moving: someone is writing
            previous = seen
            if time.monotonic() > deadline:
                raise AssertionError(f"node {node.id}'s certifier still tracks {tracked} with "
                                     f"no transaction active: its state leaks")
            time.sleep(0.05)


@pytest.fixture(autouse=True)
def certifier_leak_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cluster a test closes is first checked for leaked certifier state."""
    close = Cluster.close

    def checked_close(self: Cluster) -> None:
        if not self.closed and not self.deterministic:
            try:
                check_certifiers_quiet(self)
            except BaseException:
                close(self)
                raise
        close(self)

    monkeypatch.setattr(Cluster, "close", checked_close)
