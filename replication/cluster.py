"""An embedded cluster: N replicas and their consensus group in one process, in one directory.

Layout::

    <path>/CLUSTER                         "stratakv-cluster v1 nodes=<N>"
    <path>/node-<i>/log/<n>.rlog           node i's copy of the replicated log
    <path>/node-<i>/ENGINE                 names node i's current engine directory
    <path>/node-<i>/engine-<g>/            node i's engine store

Replica engines run without a write-ahead log (``wal=False``): a replica's
durability comes from the consensus log, which is fsync'd on a majority
before anything is acknowledged, and the applier re-applies whatever an
engine had only in its memtable. A second log per replica would only add
writes -- and, on a shared disk, dirty pages that every consensus fsync must
wait behind (measured: 0.16 ms per fdatasync alone, 0.85 ms beside one
unsynced appender). For the same reason the log may only be truncated up to
the oldest *persisted* sequence of the running replicas
(:attr:`engine.Engine.persisted_sequence`: what flushes put into synced
tables); a replica that was down past the truncation point installs a peer's
checkpoint when it comes back.

A maintenance thread truncates the log once it holds more than
``max_log_entries`` entries. Deterministic clusters have no threads:
``step()`` advances the consensus one tick and lets every replica apply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from engine.errors import ClosedError, CorruptionError, InvalidArgument
from engine.fs import FileSystem, OSFileSystem
from replication.errors import NotLeader, Unavailable
from replication.node import Node
from replication.simulated import SimulatedConsensus

__all__ = ["DEFAULT_ENGINE_OPTIONS", "Cluster"]

log = logging.getLogger(__name__)

VALID_SIZES = (3, 5, 7)
DEFAULT_ENGINE_OPTIONS: dict[str, Any] = {
    "wal": False,
    "memtable_bytes": 4 << 20,
    "block_cache_bytes": 8 << 20,
}


class Cluster:
    """N replicas agreeing through a :class:`SimulatedConsensus`. Thread-safe."""

    def __init__(self, path: str, nodes: int, *, fs: FileSystem | None = None,
                 engine_options: dict[str, Any] | None = None, election_delay: float = 0.15,
                 latency: float = 0.0, seed: int | None = None, deterministic: bool = False,
                 timeout: float = 2.0, max_log_entries: int = 50_000) -> None:
        self.path = path
        self.fs = fs or OSFileSystem()
        self.timeout = timeout
        self.max_log_entries = max_log_entries
        self._check_layout(nodes)
        options = {**DEFAULT_ENGINE_OPTIONS, **(engine_options or {})}
        self.consensus = SimulatedConsensus(path, nodes, fs=self.fs,
                                            election_delay=election_delay, latency=latency,
                                            seed=seed, deterministic=deterministic)
        self.nodes = [Node(i, self.fs.join(path, f"node-{i}"), self.consensus, options, self.fs,
                           self._snapshot_for, timeout=timeout) for i in range(nodes)]
        for node in self.nodes:
            node.start()
        self._closed = False
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        if not deterministic:
            self._maintenance = threading.Thread(target=self._maintain, daemon=True,
                                                 name=f"stratakv-maintenance:{path}")
            self._maintenance.start()

    @classmethod
    def open(cls, path: str, nodes: int = 3, **kwargs: Any) -> Cluster:
        """Create or reopen the cluster in directory ``path``; ``nodes`` is 3, 5 or 7."""
        return cls(path, nodes, **kwargs)

    def _check_layout(self, nodes: int) -> None:
        if type(nodes) is not int or nodes not in VALID_SIZES:
            raise InvalidArgument(f"nodes must be 3, 5 or 7, got {nodes!r}")
        self.fs.mkdirs(self.path)
        meta = self.fs.join(self.path, "CLUSTER")
        text = f"stratakv-cluster v1 nodes={nodes}\n".encode()
        if self.fs.exists(meta):
            stored = self.fs.read_file(meta)
            if not stored.startswith(b"stratakv-cluster v1 nodes="):
                raise CorruptionError(meta, 0, f"not a cluster descriptor: {stored[:40]!r}")
            if stored != text:
                raise InvalidArgument(f"{self.path} holds a cluster of "
                                      f"{stored.split(b'=')[1].strip().decode()} nodes, "
                                      f"not {nodes}")
            return
        f = self.fs.create(meta + ".tmp")
        f.append(text)
        f.sync()
        f.close()
        self.fs.rename(meta + ".tmp", meta)
        self.fs.sync_dir(self.path)

    # -- the group ----------------------------------------------------------------------

    @property
    def leader_id(self) -> int | None:
        return self.consensus.leader_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def deterministic(self) -> bool:
        return self.consensus.deterministic

    def leader(self, timeout: float | None = None) -> Node:
        """The ready leader, waiting up to ``timeout`` for one; Unavailable if none appears."""
        lid = self.consensus.leader_id
        if lid is not None and self.nodes[lid].serving():  # the common case
            return self.nodes[lid]
        if self._closed:
            raise ClosedError(f"cluster at {self.path} is closed")
        clock = self.consensus.now
        deadline = clock() + (self.timeout if timeout is None else timeout)
        while True:
            lid = self.consensus.leader_id
            if lid is not None and self.consensus.leader_ready(lid) and self.nodes[lid].alive:
                return self.nodes[lid]
            if clock() > deadline:
                raise Unavailable(f"no leader within {self.timeout}s: "
                                  f"{self.alive_count()} of {len(self.nodes)} nodes are up")
            if self.deterministic:
                self.step()
            else:
                time.sleep(0.005)

    def alive_count(self) -> int:
        return sum(node.alive for node in self.nodes)

    def step(self, ticks: int = 1) -> None:
        """Deterministic clusters: advance the consensus and let every replica apply."""
        for _ in range(ticks):
            self.consensus.tick()
            for node in self.nodes:
                if node.alive:
                    while node.catch_up():
                        pass

    def crash(self, node: int) -> None:
        """Kill replica ``node``: its applier stops, its engine's memtable and unsynced log
        entries are lost; it replays what it misses from the log when restarted."""
        self.nodes[node].stop(crash=True)
        self.consensus.crash(node)

    def restart(self, node: int) -> None:
        """Bring replica ``node`` back; it catches up from the log (or a peer's snapshot)."""
        self.consensus.restart(node)
        self.nodes[node].start()

    def partition(self, nodes: Sequence[int]) -> None:
        self.consensus.partition(nodes)

    def heal(self) -> None:
        self.consensus.heal()

    def wait_converged(self, timeout: float = 10.0) -> bool:
        """Wait until every running replica has applied the whole committed log."""
        clock = self.consensus.now
        deadline = clock() + timeout
        while True:
            if self.deterministic:
                self.step()
            lid = self.consensus.leader_id
            if lid is None or not self.consensus.leader_ready(lid):
                # Right after a (re)open the commit index is 0 until the new
                # leader's no-op commits: "converged" would be vacuously true.
                if clock() > deadline:
                    return False
                if not self.deterministic:
                    time.sleep(0.01)
                continue
            target = self.consensus.commit_index
            running = [n for n in self.nodes if n.alive]
            if all(self.consensus.node_commit_index(n.id) >= target and n.applied >= target
                   for n in running):
                return True
            if clock() > deadline:
                return False
            if not self.deterministic:
                time.sleep(0.01)

    def store(self, **kwargs: Any) -> Any:
        """A KeyValueStore on this cluster (string keys and values)."""
        from replication.store import KeyValueStore

        return KeyValueStore(self, **kwargs)

    # -- log truncation and snapshots ---------------------------------------------------

    def truncate_log(self) -> int:
        """Drop the log prefix every running replica has persisted; return the new base."""
        running = [n for n in self.nodes if n.alive]
        if len(running) < self.consensus.quorum:
            return 0
        upto = min(n.engine.persisted_sequence for n in running if n.engine is not None)
        upto = min(upto, self.consensus.commit_index)
        if upto > 0:
            self.consensus.truncate_prefix(upto)
        return upto

    def _maintain(self) -> None:
        while not self._stop.wait(0.5):
            try:
                lid = self.consensus.leader_id
                if lid is None:
                    continue
                held = self.consensus.commit_index - self.consensus.first_index + 1
                if held > self.max_log_entries:
                    for node in self.nodes:
                        if node.alive and node.engine is not None:
                            node.engine.flush()
                    log.info("cluster: truncated the log up to %d", self.truncate_log())
            except Exception:
                log.exception("cluster maintenance failed")

    def _snapshot_for(self, node_id: int, base_index: int, dest: str) -> int:
        """Checkpoint a peer that has applied past ``base_index`` into ``dest``."""
        lid = self.consensus.leader_id
        peers = sorted((n for n in self.nodes if n.id != node_id and n.alive
                        and n.applied >= base_index), key=lambda n: n.id != lid)
        for peer in peers:
            e = peer.engine
            if e is None:
                continue
            try:
                return e.checkpoint(dest)
            except Exception as exc:
                log.warning("cluster: checkpoint of node %d failed: %r", peer.id, exc)
                self.fs.remove_tree(dest)
        raise NotLeader(f"no running peer has applied index {base_index} to snapshot from")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._maintenance is not None:
            self._maintenance.join()
        for node in self.nodes:
            node.stop()
        self.consensus.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
