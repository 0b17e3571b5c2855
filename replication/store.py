"""KeyValueStore: the string key-value API over a replicated cluster.

* ``put``/``get``/``delete`` are linearizable: writes are acknowledged once
  committed in the log and applied by the leader; ``get`` confirms leadership
  with a quorum (read index) and reads at or after the commit index.
* ``transaction()`` is serializable (SSI on the leader) and strictly so: a
  transaction's snapshot is taken after a read-index check, so it sees every
  transaction acknowledged before it began.
* ``snapshot_read(key, node=i)`` reads a replica's applied prefix without
  asking anyone: possibly stale, never torn, not linearizable. Use it only
  where stale data is acceptable.

Operations route to the current leader and ride out elections: a NotLeader
or a quorum failure from an operation that certainly did not commit is
retried until ``timeout`` seconds have passed, then reported as
:class:`Unavailable`; every operation returns or raises within about
``timeout`` seconds. An :class:`AmbiguousCommit` is reported as is;
:meth:`KeyValueStore.outcome` resolves it. Keys and values are ``str``
(UTF-8 on disk); anything else is a TypeError. Every write is checked
against the engine's limits (``max_key_bytes``, ``max_value_bytes``,
``max_batch_bytes``) before anything is proposed: a write that would fail
on a replica never reaches the log.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import engine
from engine.errors import ClosedError, SerializationFailure
from engine.retry import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_RETRIES,
    CommitOnExit,
    run_with_retries,
)
from engine.txn import Transaction
from replication.cluster import Cluster
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.node import Node

__all__ = ["KeyValueStore", "StoreTransaction"]

T = TypeVar("T")


def _key(key: object, what: str = "key") -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"{what} must be str, got {type(key).__name__}")
    return key.encode("utf-8")


def _iterable(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be an iterable of str, got {type(values).__name__}")
    return list(values)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


class StoreTransaction(CommitOnExit):
    """A serializable transaction on the leader, with str keys and values."""

    __slots__ = ("_tx",)

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def get(self, key: str) -> str | None:
        return _text(self._tx.get(_key(key)))

    def put(self, key: str, value: str) -> None:
        self._tx.put(_key(key), _key(value, "value"))

    def delete(self, key: str) -> None:
        self._tx.delete(_key(key))

    def scan(self, start: str | None = None, end: str | None = None, *,
             reverse: bool = False) -> Iterator[tuple[str, str]]:
        lo = None if start is None else _key(start, "start")
        hi = None if end is None else _key(end, "end")
        for k, v in self._tx.scan(lo, hi, reverse=reverse):
            yield k.decode("utf-8"), v.decode("utf-8")

    def commit(self) -> None:
        self._tx.commit()

    def rollback(self) -> None:
        self._tx.rollback()

    @property
    def sequence(self) -> int | None:
        """The log index the commit was written at (None before commit or without writes)."""
        return self._tx.sequence

    @property
    def snapshot_sequence(self) -> int:
        return self._tx.snapshot_sequence



class KeyValueStore:
    """The ``KeyValueStore`` of the replicated store: put/get on strings, transactional."""

    def __init__(self, cluster: Cluster, *, timeout: float | None = None,
                 owns_cluster: bool = False) -> None:
        if timeout is not None and not timeout > 0:
            raise engine.InvalidArgument(f"timeout must be > 0 seconds, got {timeout!r}")
        self.cluster = cluster
        self.timeout = cluster.timeout if timeout is None else timeout
        self._owns = owns_cluster

    def _on_leader(self, fn: Callable[[Node, Callable[[], float]], T]) -> T:
        """Run ``fn(leader_node, left)``, retrying on leader changes until the timeout.

        ``left()`` is the time the operation has left: each wait inside the
        node asks it anew, so all of them together stay within the timeout.
        """
        runtime = self.cluster.runtime
        clock = runtime.now
        deadline = clock() + self.timeout

        def left() -> float:
            return max(0.0, deadline - clock())

        delay = 0.002
        while True:
            try:
                return fn(self.cluster.leader(left()), left)
            except (NotLeader, Unavailable) as exc:
                if clock() >= deadline:
                    if isinstance(exc, Unavailable):
                        raise
                    raise Unavailable(f"no leader could serve the request within "
                                      f"{self.timeout}s: {exc}") from exc
                runtime.pause(min(random.uniform(0, delay), max(0.0, deadline - clock())))
                delay = min(delay * 2, 0.05)

    def _batch(self) -> engine.WriteBatch:
        """An empty batch that checks keys and values against the replicas' limits."""
        return engine.WriteBatch(self.cluster.engine_options)

    def _write(self, batch: engine.WriteBatch) -> int:
        """Propose a checked blind write on the leader; the log index it committed at."""
        return self._on_leader(
            lambda node, left: node.transactions(left()).write(batch.ops, left()))

    def put(self, key: str, value: str) -> int:
        """Set ``key`` to ``value``; return the log index it committed at.

        Returns once the write is committed and applied on the leader.
        """
        batch = self._batch()
        batch.put(_key(key), _key(value, "value"))
        return self._write(batch)

    def delete(self, key: str) -> int:
        """Remove ``key``; return the log index the deletion committed at."""
        batch = self._batch()
        batch.delete(_key(key))
        return self._write(batch)

    def get(self, key: str) -> str | None:
        """The latest committed value of ``key`` (linearizable)."""
        k = _key(key)
        return _text(self._on_leader(lambda node, left: node.read(k, left())))

    def multi_get(self, keys: Iterable[str]) -> list[str | None]:
        """The latest committed values of ``keys``, in the order given, at one log index.

        Linearizable like :meth:`get`, and consistent: every value is read at
        the same committed index (one leadership check for all of them).
        """
        ks = [_key(k, f"keys[{i}]") for i, k in enumerate(_iterable(keys, "keys"))]
        values = self._on_leader(
            lambda node, left: node.read_snapshot(lambda snap: snap.multi_get(ks), left()))
        return [_text(v) for v in values]

    def scan(self, start: str | None = None, end: str | None = None, *,
             prefix: str | None = None, reverse: bool = False,
             limit: int | None = None) -> list[tuple[str, str]]:
        """Pairs with ``start <= key < end`` (or starting with ``prefix``), at one log index.

        Linearizable like :meth:`get`: the whole result is the committed state
        at one index, read after a leadership check, so it holds every write
        acknowledged before the call. Returned as a list (a scan that spans a
        leader change could not stay at one index); ``limit`` bounds it.
        """
        lo = None if start is None else _key(start, "start")
        hi = None if end is None else _key(end, "end")
        pre = None if prefix is None else _key(prefix, "prefix")
        if pre is not None and (lo is not None or hi is not None):
            raise engine.InvalidArgument("give prefix, or start and end, not both")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise engine.InvalidArgument(f"limit must be an int >= 0, got {limit!r}")

        def read(snap: engine.Snapshot) -> list[tuple[str, str]]:
            items = snap.scan(lo, hi, reverse=reverse, prefix=pre)
            return [(k.decode("utf-8"), v.decode("utf-8"))
                    for k, v in itertools.islice(items, limit)]

        return self._on_leader(lambda node, left: node.read_snapshot(read, left()))

    def stats(self) -> dict[str, Any]:
        """The cluster's state (leader, term, indexes, per-node state) plus each running
        replica's engine stats and log size."""
        out = self.cluster.stats()
        for entry, node in zip(out["nodes"], self.cluster.nodes, strict=True):
            e = node.engine
            entry["engine"] = e.stats() if e is not None and node.alive else None
        return out

    def transaction(self, *, read_only: bool = False) -> StoreTransaction:
        """Begin a transaction on the leader (a context manager: commit on clean exit)."""
        return StoreTransaction(self._on_leader(
            lambda node, left: node.transactions(left()).begin(
                read_only=read_only, timeout=left(), commit_timeout=self.timeout)))

    def run_transaction(self, fn: Callable[[StoreTransaction], T], *,
                        max_retries: int = DEFAULT_MAX_RETRIES,
                        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
                        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
                        read_only: bool = False) -> T:
        """Run ``fn(tx)`` and commit, retrying serialization failures and leader changes.

        The engine's loop (:func:`engine.retry.run_with_retries`, the same
        default of 30 retries and the same jittered exponential backoff),
        retrying SerializationFailure, NotLeader and Unavailable; after
        ``max_retries`` the last error is raised. AmbiguousCommit is never
        retried. A deterministic cluster waits by stepping its simulation.
        """
        return run_with_retries(lambda: self.transaction(read_only=read_only), fn,
                                max_retries=max_retries, backoff_base_s=backoff_base,
                                backoff_max_s=backoff_max,
                                retryable=(SerializationFailure, NotLeader, Unavailable),
                                sleep=self.cluster.runtime.pause)

    def outcome(self, ambiguous: AmbiguousCommit, timeout: float | None = None) -> bool:
        """Resolve an AmbiguousCommit: True if that write committed (whole), False if never.

        Waits until the log is committed at the entry's index (at most
        ``timeout`` seconds, default the store's), then compares the term of
        the entry committed there with the write's. Raises Unavailable if
        that cannot be learned in time, or once the log prefix holding the
        index was truncated.
        """
        c = self.cluster.consensus
        wait = self.timeout if timeout is None else timeout
        index = ambiguous.index

        def known(seconds: float) -> bool:
            """Is the entry at ``index`` committed and its term known (or truncated)?"""
            end = time.monotonic() + seconds
            while True:
                if c.commit_index >= index and (c.term_at(index) is not None
                                                or c.first_index > index):
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                c.wait_committed(index, min(left, 0.05))

        if not self.cluster.runtime.wait(known, wait):
            raise Unavailable(f"the log was not committed at {index} within {wait}s")
        term = c.term_at(index)
        if term is None:
            raise Unavailable(f"entry {index} was truncated from the log: its outcome can no "
                              f"longer be told")
        return term == ambiguous.term

    def snapshot_read(self, key: str, *, node: int | None = None) -> str | None:
        """Read ``key`` from replica ``node``'s applied state, without coordination.

        NOT linearizable and not part of any transaction: the replica may be
        behind. It never returns a value that was not committed. With
        ``node=None`` any running replica answers; a named replica that is
        down (crashed, damaged, installing a snapshot) raises Unavailable.
        """
        k = _key(key)
        if self.cluster.closed:
            raise ClosedError("the cluster is closed")
        if node is not None:
            candidates = [self.cluster.node(node)]
        else:
            candidates = [n for n in self.cluster.nodes if n.alive]
        for n in candidates:
            e = n.engine
            if e is None or not n.alive:
                continue
            try:
                return _text(e.get(k))
            except ClosedError:  # crashed or swapped for a snapshot while we read
                continue
        raise Unavailable(f"no running replica to read from"
                          f"{'' if node is None else f' (node {node} is down)'}")

    def close(self) -> None:
        if self._owns:
            self.cluster.close()

    def __enter__(self) -> KeyValueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
