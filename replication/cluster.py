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
from collections.abc import Sequence
from typing import Any

from engine.encoding import store_files
from engine.errors import ClosedError, CorruptionError, InvalidArgument
from engine.fs import FileLock, FileSystem, OSFileSystem, atomic_write
from replication.errors import NodeDamaged, NotLeader, Unavailable
from replication.node import Node
from replication.options import DEFAULT_ENGINE_OPTIONS, ClusterOptions
from replication.raftgroup import RaftGroup
from replication.runtime import SimulatedRuntime

__all__ = ["DEFAULT_ENGINE_OPTIONS", "Cluster"]

log = logging.getLogger(__name__)

VALID_SIZES = (3, 5, 7)
_DESCRIPTOR_PREFIX = b"stratakv-cluster v1 nodes="


class Cluster:
    """N replicas agreeing through a :class:`~replication.raftgroup.RaftGroup`. Thread-safe.

    The group is real Raft: N cores exchanging messages over an in-process
    network, each with its own durable log.

    Opening takes ``<path>/LOCK`` before it reads or writes any other file
    of the cluster, and holds it until :meth:`close`: a second open, in
    another process or in this one, raises :class:`engine.LockedError` and
    touches nothing. A replica whose log or engine fails a check on open is
    one of the f failures the cluster tolerates: it stays down, out of every
    quorum and every read, :meth:`stats` reports it, and :meth:`repair`
    re-seeds it from a healthy peer. More than f damaged replicas: open
    raises the first CorruptionError.
    """

    def __init__(self, path: str, nodes: int | None = None, *, fs: FileSystem | None = None,
                 options: ClusterOptions | None = None, **settings: Any) -> None:
        """Open (or create) the cluster in ``path``.

        ``options`` (default: ClusterOptions()) with any ``settings`` --
        ClusterOptions field names -- replaced; everything is validated
        before a file is touched (a misspelled name is an InvalidArgument).
        """
        if nodes is not None and (type(nodes) is not int or nodes not in VALID_SIZES):
            raise InvalidArgument(f"nodes must be 3, 5 or 7, got {nodes!r}")
        self.options = opts = ClusterOptions.from_settings(options, **settings)
        self.engine_options = opts.engine
        self.path = path
        self.fs = fs or OSFileSystem()
        self.timeout = opts.request_timeout_s
        self.max_log_entries = opts.max_log_entries
        self._dir_lock = self._lock_directory()
        self._closed = False
        self.nodes: list[Node] = []
        consensus: RaftGroup | None = None
        try:
            size = self._check_layout(nodes)
            consensus = self.consensus = RaftGroup(
                path, size, fs=self.fs, election_timeout_ms=opts.election_timeout_ms,
                link_latency_ms=opts.link_latency_ms, seed=opts.seed,
                deterministic=opts.deterministic, damaged=self._interrupted_repairs(size))
            self.runtime = consensus.runtime
            self.nodes = [Node(i, self.fs.join(path, f"node-{i}"), self.consensus,
                               self.engine_options, self.fs, self._snapshot_for,
                               timeout=self.timeout) for i in range(size)]
            self._start_nodes()
        except BaseException:
            for node in self.nodes:
                node.stop()
            if consensus is not None:
                consensus.close()
            self._dir_lock.release()
            raise
        self._stop = threading.Event()
        if isinstance(self.runtime, SimulatedRuntime):
            self.runtime.step = self.step  # a simulated pause: tick, then let replicas apply
        # Simulated, there is no maintenance thread: the log is truncated on demand only.
        self._maintenance = self.runtime.spawn(self._maintain, f"stratakv-maintenance:{path}")

    @classmethod
    def open(cls, path: str, nodes: int | None = None, **kwargs: Any) -> Cluster:
        """Create or reopen the cluster in directory ``path``.

        ``nodes`` is 3, 5 or 7; omitted, it is read from the cluster's
        ``CLUSTER`` file (3 for a new cluster).
        """
        return cls(path, nodes, **kwargs)

    def _lock_directory(self) -> FileLock:
        """Refuse an engine store's directory, then take ``<path>/LOCK`` (before any file)."""
        fs = self.fs
        if fs.exists(self.path):
            owned = store_files(fs.listdir(self.path))
            if owned:
                raise InvalidArgument(f"{self.path} holds an engine store ({owned[0]}), not a "
                                      f"cluster: open it with engine.open")
        fs.mkdirs(self.path)
        return fs.lock(fs.join(self.path, "LOCK"))

    def _check_layout(self, nodes: int | None) -> int:
        """The cluster's size from ``CLUSTER`` (written for a new cluster); check ``nodes``."""
        meta = self.fs.join(self.path, "CLUSTER")
        if self.fs.exists(meta):
            stored = self.fs.read_file(meta)
            digits = stored[len(_DESCRIPTOR_PREFIX):].strip()
            if not stored.startswith(_DESCRIPTOR_PREFIX) or not digits.isdigit():
                raise CorruptionError(meta, 0, f"not a cluster descriptor: {stored[:40]!r}")
            size = int(digits)
            if size not in VALID_SIZES:
                raise CorruptionError(meta, 0, f"cluster of {size} nodes")
            if nodes is not None and nodes != size:
                raise InvalidArgument(f"{self.path} holds a cluster of {size} nodes, "
                                      f"not {nodes}")
            return size
        size = 3 if nodes is None else nodes
        atomic_write(self.fs, meta, lambda f: f.append(_DESCRIPTOR_PREFIX + b"%d\n" % size))
        return size

    def _repair_marker(self, node: int) -> str:
        return self.fs.join(self.path, f"node-{node}.repairing")

    def _interrupted_repairs(self, size: int) -> dict[int, CorruptionError]:
        """Nodes whose repair did not finish: damaged, whatever their directory holds now."""
        return {i: CorruptionError(self._repair_marker(i), None, "a repair did not finish")
                for i in range(size) if self.fs.exists(self._repair_marker(i))}

    def _start_nodes(self) -> None:
        """Start every replica that is not damaged; too many damaged is a CorruptionError."""
        damaged: dict[int, CorruptionError] = dict(self.consensus.damaged)
        for node in self.nodes:
            if node.id in damaged:
                node.damaged = NodeDamaged(node.id, damaged[node.id])
                continue
            try:
                node.start()
            except CorruptionError as exc:
                log.error("cluster: node %d stays down, its engine is damaged: %s", node.id, exc)
                self.consensus.crash(node.id)
                node.damaged = NodeDamaged(node.id, exc)
                damaged[node.id] = exc
        if len(damaged) > len(self.nodes) - self.consensus.quorum:
            raise next(iter(damaged.values()))

    def node(self, node: object) -> Node:
        """Replica ``node``; InvalidArgument unless it is an id of this cluster."""
        if type(node) is not int or not 0 <= node < len(self.nodes):
            raise InvalidArgument(f"node must be an int in [0, {len(self.nodes)}), got {node!r}")
        return self.nodes[node]

    # -- the group ----------------------------------------------------------------------

    @property
    def leader_id(self) -> int | None:
        return self.consensus.leader_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def deterministic(self) -> bool:
        return self.runtime.deterministic

    def leader(self, timeout: float | None = None) -> Node:
        """The ready leader, waiting up to ``timeout`` for one; Unavailable if none appears."""
        lid = self.consensus.leader_id
        if lid is not None and self.nodes[lid].serving():  # the common case
            return self.nodes[lid]
        if self._closed:
            raise ClosedError(f"cluster at {self.path} is closed")
        clock = self.runtime.now
        deadline = clock() + (self.timeout if timeout is None else timeout)
        while True:
            lid = self.consensus.leader_id
            if lid is not None and self.consensus.leader_ready(lid) and self.nodes[lid].alive:
                return self.nodes[lid]
            if clock() > deadline:
                raise Unavailable(f"no leader within {self.timeout}s: "
                                  f"{self.alive_count()} of {len(self.nodes)} nodes are up")
            self.runtime.pause(0.005)

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
        self.node(node).stop(crash=True)
        self.consensus.crash(node)

    def restart(self, node: int) -> None:
        """Bring replica ``node`` back; it catches up from the log (or a peer's snapshot).

        Raises InvalidArgument if it is running, NodeDamaged if its log or
        engine fails a check (it then stays down; see :meth:`repair`).
        """
        n = self.node(node)
        if self._closed:
            raise ClosedError(f"cluster at {self.path} is closed")
        if n.engine is not None and n.failed is None and node not in self.consensus.failures:
            raise InvalidArgument(f"node {node} is running: crash it before restarting it")
        n.stop(crash=True)  # a node whose applier or log failed still holds its engine
        self.consensus.restart(node)
        try:
            n.start()
        except BaseException as exc:
            self.consensus.crash(node)  # never a running log without an engine
            if isinstance(exc, CorruptionError):
                n.damaged = NodeDamaged(node, exc)
                raise n.damaged from exc
            raise
        n.damaged = None

    def repair(self, node: int) -> None:
        """Re-seed down replica ``node`` from a checkpoint of the leader, then start it.

        For a replica whose log or engine is damaged (or lost): its directory
        is deleted, the leader's engine -- once it has applied everything
        committed -- is checkpointed into it, and its log restarts after the
        checkpoint's index. The node then catches up like any follower.
        Needs a serving leader (Unavailable otherwise). A repair that does
        not finish (a crash, an error) leaves the node damaged: it is
        retried, never mistaken for a healthy empty replica.
        """
        n = self.node(node)
        if (n.engine is not None and n.failed is None) or self.consensus.is_alive(node):
            raise InvalidArgument(f"node {node} is running: only a down node can be repaired")
        leader = self.leader()
        # Withdraw the node's vote first: entries it stored must not count toward a
        # commit the checkpoint below might not include, since they are deleted.
        self.consensus.forget(node)
        marker = self._repair_marker(node)
        atomic_write(self.fs, marker, lambda f: f.append(b"repair in progress\n"))
        cause = CorruptionError(marker, None, "a repair did not finish")
        self.consensus.damaged.setdefault(node, cause)
        n.damaged = n.damaged or NodeDamaged(node, cause)
        n.stop(crash=True)
        if not leader.wait_applied(self.consensus.commit_index, self.timeout):
            raise Unavailable(f"leader {leader.id} did not apply the log in time for a repair")
        source = leader.engine
        if source is None:
            raise Unavailable(f"leader {leader.id} went down during the repair")
        if self.fs.exists(n.path):
            self.fs.remove_tree(n.path)
        self.fs.mkdirs(n.path)
        seq = source.checkpoint(n.engine_dir(1))
        term = self.consensus.term_at(seq)
        if term is None:
            raise Unavailable(f"the log no longer names the term of index {seq}; retry")
        self.consensus.reseed(node, seq, term)
        try:
            n.start()
        except BaseException:
            self.consensus.crash(node)
            raise
        n.damaged = None
        self.fs.remove(marker)
        self.fs.sync_dir(self.path)
        log.warning("cluster: node %d repaired from a checkpoint of node %d at index %d",
                    node, leader.id, seq)

    def stats(self) -> dict[str, Any]:
        """Leader, term, commit index and, per node, its state, applied and commit index,
        the (first, last) index its log holds, and any damage or failure."""
        c = self.consensus
        per_node = []
        for n in self.nodes:
            failure = n.failed or c.failures.get(n.id)
            state = ("damaged" if n.damaged is not None else "failed" if failure is not None
                     else "running" if n.alive else "down")
            per_node.append({
                "id": n.id, "state": state, "applied_index": n.applied,
                "commit_index": c.node_commit_index(n.id),
                "log": c.log_span(n.id),
                "snapshots_installed": n.snapshots_installed,
                "damage": None if n.damaged is None else str(n.damaged.cause),
                "failure": None if failure is None else repr(failure),
            })
        return {"leader": c.leader_id, "term": c.term, "commit_index": c.commit_index,
                "first_index": c.first_index, "elections": c.elections, "nodes": per_node}

    def partition(self, nodes: Sequence[int]) -> None:
        self.consensus.partition(nodes)

    def heal(self) -> None:
        self.consensus.heal()

    def wait_converged(self, timeout: float = 10.0) -> bool:
        """Wait until every running replica has applied the whole committed log."""
        clock = self.runtime.now
        deadline = clock() + timeout
        while True:
            lid = self.consensus.leader_id
            # Right after a (re)open the commit index is 0 until the new leader's
            # no-op commits: "converged" would be vacuously true.
            if lid is not None and self.consensus.leader_ready(lid):
                target = self.consensus.commit_index
                if all(self.consensus.node_commit_index(n.id) >= target and n.applied >= target
                       for n in self.nodes if n.alive):
                    return True
            if clock() > deadline:
                return False
            self.runtime.pause(0.01)

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
        try:
            for node in self.nodes:
                node.stop()
            self.consensus.close()
        finally:
            self._dir_lock.release()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
