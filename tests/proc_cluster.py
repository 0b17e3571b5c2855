"""A cluster of real node processes on 127.0.0.1 for tests: start, fault, inspect, always stop.

The cluster itself is :class:`bench.nemesis.cluster.ProcCluster` (shared
with ``python -m bench nemesis``); :func:`proc_cluster` is the context
manager tests use, which stops every process by its pid even when the
test fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.nemesis.cluster import FAST_ELECTIONS, LIVENESS_S, ProcCluster

__all__ = ["FAST", "LIVENESS_S", "ProcCluster", "proc_cluster"]

FAST = FAST_ELECTIONS


@contextlib.contextmanager
def proc_cluster(base: Path, nodes: int = 3, extra: Sequence[str] = ()
                 ) -> Iterator[ProcCluster]:
    cluster = ProcCluster(base, nodes, extra)
    try:
        cluster.leader()
        yield cluster
    finally:
        cluster.stop()
