"""The transaction backend of a standalone engine: its certifier, its commit pipeline.

:class:`LocalTransactions` is the engine's
:class:`~engine.txn.TransactionBackend`: ``begin`` takes a snapshot and
registers it with the certifier; reads record SIREAD entries and read
through the :class:`~engine.reads.Reader`; a commit is one batch in the
:class:`~engine.commit.CommitPipeline`. It sees nothing else of the engine.

Lock rules: every certifier call holds ``_mutex`` (the engine's): the
certifier is pure and serialised by its caller (engine/ssi.py). Reads
themselves take no lock.

Invariants:

1. Certification happens under ``_mutex`` in the same critical section that
   queues the commit's batch (``CommitPipeline.commit``), so certification
   order is sequence order (ssi.py invariant 1).
2. ``begin`` takes its snapshot and records every blind write that snapshot
   cannot see (``BlindWrites.on_begin``) in one ``_mutex`` section, after
   every certified commit became visible: no write is in neither the
   snapshot nor the certifier.
3. Every transaction ends exactly once with the certifier (committed,
   aborted or refused) and releases its snapshot pin exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from engine.commit import CommitPipeline
from engine.lifecycle import Lifecycle
from engine.options import Options
from engine.reads import Reader
from engine.ssi import Certifier, TxnState
from engine.versions import Versions

__all__ = ["LocalTransactions"]


class LocalTransactions:
    """The transaction backend of a standalone engine (module docstring)."""

    __slots__ = ("_certifier", "_durability", "_lifecycle", "_mutex", "_pipeline", "_reader",
                 "_versions", "options")

    def __init__(self, options: Options, mutex: threading.Lock, certifier: Certifier,
                 reader: Reader, pipeline: CommitPipeline, versions: Versions,
                 lifecycle: Lifecycle, durability: Callable[[bool | None], bool]) -> None:
        self.options = options
        self._mutex = mutex
        self._certifier = certifier
        self._reader = reader
        self._pipeline = pipeline
        self._versions = versions  # snapshot pins only
        self._lifecycle = lifecycle  # open/writable checks only
        self._durability = durability  # sync= argument -> whether the commit syncs

    def begin(self, *, read_only: bool) -> TxnState:
        """Register a new transaction reading the latest visible state (invariant 2)."""
        life = self._lifecycle
        with self._mutex:
            if read_only or life.read_only:  # a read-only engine refuses writes at commit
                life.check_open()
            else:
                life.check_writable("begin")
            seq = self._pipeline.wait_certified()
            now = time.monotonic()
            self._certifier.expire(now)
            # Writes queued while nothing was tracked were not recorded; those
            # this snapshot cannot see must be, before it reads.
            self._pipeline.blind_writes.on_begin(seq, now)
            state = self._certifier.begin(seq, now, read_only=read_only)
            self._versions.pin(seq)
        return state

    def read(self, state: TxnState, key: bytes) -> bytes | None:
        with self._mutex:
            self._certifier.on_read(state, key, time.monotonic())
        return self._reader.get_at(key, state.snapshot)

    def read_many(self, state: TxnState, keys: list[bytes]) -> list[bytes | None]:
        with self._mutex:
            now = time.monotonic()
            for key in keys:
                self._certifier.on_read(state, key, now)
        return self._reader.get_many_at(keys, state.snapshot)

    def scan(self, state: TxnState, lo: bytes | None, hi: bytes | None, reverse: bool
             ) -> Iterator[tuple[bytes, bytes]]:
        with self._mutex:
            self._certifier.on_scan(state, lo, hi, time.monotonic())
        return self._reader.scan_at(lo, hi, reverse, state.snapshot)

    def commit(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int
               ) -> int | None:
        return self.commit_sync(state, ops, nbytes, None)

    def commit_sync(self, state: TxnState, ops: dict[bytes, bytes | None], nbytes: int,
                    sync: bool | None) -> int | None:
        """:meth:`commit` with a per-commit ``sync=`` (None: the store's default)."""
        try:
            if ops:
                return self._pipeline.commit([(None, ops)], nbytes, state,
                                             sync=self._durability(sync), what="commit")
            with self._mutex:
                self._certifier.commit_empty(state, time.monotonic())
            return None
        except BaseException:
            # Refused before certification (closed or read-only engine): forget
            # it, or it would pin the certifier's state. A no-op if it failed later.
            with self._mutex:
                self._certifier.abort(state, "refused")
            raise
        finally:
            self._versions.unpin(state.snapshot)

    def rollback(self, state: TxnState) -> None:
        with self._mutex:
            self._certifier.abort(state)
        self._versions.unpin(state.snapshot)
