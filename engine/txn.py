"""Transactions: snapshot reads, buffered writes, certification at commit.

A transaction reads the snapshot taken at ``begin`` plus its own buffered
writes, and writes nothing until ``commit``, when the engine certifies it
(:mod:`engine.ssi`) and writes the buffer as one WAL batch: all or nothing
after a crash. Nothing waits on another transaction's locks; conflicts are
decided at commit, or earlier when the certifier dooms a transaction.

Thread-safety: one transaction belongs to one thread at a time; many
transactions may run concurrently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NoReturn, Protocol, cast

from engine.batch import Buffer, WriteBatch, check_key, check_keys, check_sync, scan_bounds
from engine.errors import InvalidArgument, SerializationFailure, TransactionClosed
from engine.options import Options
from engine.retry import CommitOnExit
from engine.ssi import TxnState

__all__ = ["BatchReadBackend", "SyncingBackend", "Transaction", "TransactionBackend"]


class TransactionBackend(Protocol):
    """Whoever certifies and stores transactions: a standalone engine or a replicated leader.

    ``read``/``scan`` record the read with the certifier, then read at
    ``state.snapshot``; ``commit`` certifies and makes the writes durable
    (returning their sequence, or None without writes); ``rollback`` forgets
    the transaction. Both end the transaction and release its snapshot. Any
    of them raises SerializationFailure when the certifier says so.
    """

    @property
    def options(self) -> Options: ...

    def read(self, state: TxnState, key: bytes) -> bytes | None: ...

    def scan(self, state: TxnState, lo: bytes | None, hi: bytes | None, reverse: bool
             ) -> Iterator[tuple[bytes, bytes]]: ...

    def commit(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int
               ) -> int | None: ...

    def rollback(self, state: TxnState) -> None: ...


class BatchReadBackend(Protocol):
    """A backend that can also read many keys at once (optional; the engine's is one).

    ``read_many`` records every key with the certifier, as ``read`` does for
    one, then reads them all at ``state.snapshot``. A backend without it
    serves :meth:`Transaction.multi_get` with one ``read`` per key.
    """

    def read_many(self, state: TxnState, keys: list[bytes]) -> list[bytes | None]: ...


class SyncingBackend(Protocol):
    """A backend whose commits can override the store's durability (optional; the engine's).

    ``commit_sync`` is ``commit`` with ``sync``: True makes the commit
    durable before it returns, False only hands it to the OS, None keeps
    the store's default. A replicated store's durability is its consensus
    log, so its backend has no such method and refuses ``sync=``.
    """

    def commit_sync(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int,
                    sync: bool | None) -> int | None: ...


class Transaction(CommitOnExit):
    """One serializable transaction (``isolation="ssi"``) or OCC one (``"occ"``)."""

    __slots__ = ("_backend", "_batch", "_done", "_state", "_sync", "_writes", "sequence")

    def __init__(self, backend: TransactionBackend, state: TxnState, *,
                 sync: bool | None = None) -> None:
        self._backend = backend
        self._state = state
        self._sync = check_sync(sync)  # commit's default durability (None: the store's)
        self._batch = WriteBatch(backend.options)  # checks sizes, keeps the last write per key
        self._writes = self._batch.ops
        self._done = False
        # Sequence the commit was written at (None before commit or without writes).
        self.sequence: int | None = None

    @property
    def snapshot_sequence(self) -> int:
        """The sequence number this transaction reads at."""
        return self._state.snapshot

    @property
    def read_only(self) -> bool:
        return self._state.read_only

    def _check(self) -> None:
        if self._done:
            raise TransactionClosed("transaction already committed, rolled back or failed")

    def _fail(self, exc: SerializationFailure) -> NoReturn:
        """A failure ends the transaction (and releases its snapshot)."""
        self._done = True
        self._backend.rollback(self._state)
        raise exc

    def get(self, key: Buffer) -> bytes | None:
        """The value at the snapshot, or this transaction's own uncommitted write."""
        self._check()
        k = check_key(key, self._backend.options)
        if k in self._writes:
            return self._writes[k]
        try:
            return self._backend.read(self._state, k)
        except SerializationFailure as exc:
            self._fail(exc)

    def multi_get(self, keys: Iterable[Buffer]) -> list[bytes | None]:
        """:meth:`get` of each of ``keys``, in order (duplicates allowed), in one call.

        Keys this transaction wrote give their buffered value; every other
        key is read at the snapshot and recorded by the certifier exactly as
        :meth:`get` records it, so SSI sees each of them as read.
        """
        self._check()
        ks = check_keys(keys, self._backend.options)
        writes = self._writes
        need = [k for k in dict.fromkeys(ks) if k not in writes]
        got: dict[bytes, bytes | None] = {}
        if need:
            backend = self._backend
            # hasattr, not isinstance of a runtime protocol: that costs microseconds.
            read_many = (cast(BatchReadBackend, backend) if hasattr(backend, "read_many")
                         else None)
            try:
                if read_many is not None:
                    values = read_many.read_many(self._state, need)
                else:
                    values = [backend.read(self._state, k) for k in need]
            except SerializationFailure as exc:
                self._fail(exc)
            got = dict(zip(need, values, strict=True))
        return [writes[k] if k in writes else got[k] for k in ks]

    def scan(self, start: Buffer | None = None, end: Buffer | None = None, *,
             reverse: bool = False, prefix: Buffer | None = None
             ) -> Iterator[tuple[bytes, bytes]]:
        """``[start, end)`` at the snapshot merged with own writes; the range counts as read.

        Registering the whole range (not only the keys found) is what makes a
        concurrent insert into it -- a phantom -- a conflict. ``prefix=p``
        scans ``[p, successor(p))`` (see :meth:`engine.Engine.scan`), and that
        whole range is what counts as read.
        """
        self._check()
        lo, hi = scan_bounds(start, end, prefix, self._backend.options)
        try:
            base = self._backend.scan(self._state, lo, hi, reverse)
        except SerializationFailure as exc:
            self._fail(exc)
        own = sorted((k, v) for k, v in self._writes.items()
                     if (lo is None or k >= lo) and (hi is None or k < hi))
        if reverse:
            own.reverse()
        return _overlay(base, own, reverse)

    def put(self, key: Buffer, value: Buffer) -> None:
        self._check()
        if self._state.read_only:
            raise InvalidArgument("put in a read-only transaction")
        self._batch.put(key, value)

    def delete(self, key: Buffer) -> None:
        self._check()
        if self._state.read_only:
            raise InvalidArgument("delete in a read-only transaction")
        self._batch.delete(key)

    def commit(self, *, sync: bool | None = None) -> None:
        """Certify and write; raises SerializationFailure (retryable) if it cannot commit.

        ``sync=True`` makes the commit (and every write before it) durable
        before returning whatever the store's default; ``sync=False`` only
        hands it to the OS. None: the transaction's ``sync`` (from
        ``db.transaction(sync=...)``), else the store's ``sync`` option.
        """
        self._check()
        durable = self._sync if sync is None else check_sync(sync)
        backend = self._backend
        syncing = cast(SyncingBackend, backend) if hasattr(backend, "commit_sync") else None
        if durable is not None and syncing is None:
            raise InvalidArgument("this store's transactions take no sync=: their "
                                  "durability comes from the replication log")
        self._done = True
        if syncing is not None:
            self.sequence = syncing.commit_sync(self._state, self._writes,
                                                self._batch.byte_size, durable)
        else:
            self.sequence = backend.commit(self._state, self._writes, self._batch.byte_size)

    def rollback(self) -> None:
        """Discard the transaction. A no-op once it has ended."""
        if self._done:
            return
        self._done = True
        self._backend.rollback(self._state)



def _overlay(base: Iterator[tuple[bytes, bytes]], own: list[tuple[bytes, bytes | None]],
             reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    """Merge buffered writes over snapshot items; ``None`` values hide keys."""
    i = 0
    n = len(own)
    for key, value in base:
        while i < n and (own[i][0] > key if reverse else own[i][0] < key):
            k, v = own[i]
            i += 1
            if v is not None:
                yield k, v
        if i < n and own[i][0] == key:
            k, v = own[i]
            i += 1
            if v is not None:
                yield k, v
            continue
        yield key, value
    for k, v in own[i:]:
        if v is not None:
            yield k, v

