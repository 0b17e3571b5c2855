"""The engine's exception hierarchy: one root, :class:`EngineError`.

Every error says two things a caller needs to decide what to do next:

* ``retryable`` -- running the same operation again may succeed (a
  serialization failure); it never is for corruption or bad input.
* ``deterministic`` -- every replica applying the same input would fail the
  same way (bad input). A replica's applier stops the node on a
  non-deterministic failure (I/O, corruption) rather than diverge.

A missing key is ``None``, never an exception.
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "ClosedError",
    "CorruptionError",
    "EngineError",
    "InvalidArgument",
    "ReadOnlyError",
    "SerializationFailure",
    "StorageError",
    "TransactionClosed",
]


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""

    retryable: ClassVar[bool] = False
    deterministic: ClassVar[bool] = False


class InvalidArgument(EngineError, ValueError):
    """An argument has the right type but an unacceptable value (too large, bad option)."""

    deterministic = True


class ClosedError(EngineError):
    """The engine (or a snapshot or iterator bound to it) was used after ``close()``."""

    deterministic = True


class CorruptionError(EngineError):
    """Stored bytes failed a check: a checksum, a magic number, a length or a version.

    ``path`` names the file and ``offset`` the byte position where the bad
    data starts (``None`` when the problem is about the file as a whole, such
    as a missing table).
    """

    def __init__(self, path: str, offset: int | None, detail: str) -> None:
        self.path = path
        self.offset = offset
        self.detail = detail
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"corruption in {where}: {detail}")


class ReadOnlyError(EngineError):
    """A write call (put, delete, batch, a commit with writes, flush, compact, sync, ...)
    on an engine opened with ``read_only=True``; the message names the call.

    Nothing was written. Open the store without ``read_only`` (in the one
    process that owns it) to write.
    """

    deterministic = True


class StorageError(EngineError):
    """Writing to stable storage failed (disk full, I/O error).

    The engine stops accepting writes after such a failure because it can no
    longer tell what reached the disk; reads keep working. Reopen to recover.
    """


SerializationReason = Literal[
    "write_write", "dangerous_structure", "too_old", "doomed", "stale_read"
]


class SerializationFailure(EngineError):
    """The transaction could not be serialized and was rolled back; retry it.

    ``reason`` is one of:

    * ``write_write`` -- a concurrent transaction committed a write to a key
      this one writes (first committer wins);
    * ``dangerous_structure`` -- this transaction would close a chain of two
      rw-antidependencies whose last member committed first (SSI);
    * ``doomed`` -- reserved for a transaction marked to fail by another's
      commit. PostgreSQL needs it; with buffered writes our certifier always
      finds the victim acting itself, so it never occurs (engine/ssi.py);
    * ``too_old`` -- the transaction ran longer than ``Options.max_txn_age_s``;
    * ``stale_read`` -- OCC only: something this transaction read was
      overwritten by a transaction that committed after its snapshot.
    """

    retryable = True
    deterministic = True

    def __init__(self, reason: SerializationReason, detail: str = "") -> None:
        self.reason: SerializationReason = reason
        super().__init__(f"serialization failure ({reason}){': ' + detail if detail else ''}")


class TransactionClosed(EngineError):
    """A transaction was used after it committed, rolled back or failed."""

    deterministic = True
