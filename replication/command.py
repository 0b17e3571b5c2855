"""The payload of a replicated log entry: one certified write set.

Grammar (little-endian)::

    command := version:u8=1 txn_id[16] ops          # ops: engine.batch's encoding

``txn_id`` is random and unique per commit attempt, so that a history
checker -- or a client resolving an AmbiguousCommit -- can find a
transaction in the log. Pure module.
"""

from __future__ import annotations

from engine.batch import WriteBatch, encode_ops
from engine.errors import CorruptionError

__all__ = ["decode_command", "encode_command"]

VERSION = 1


def encode_command(txn_id: bytes, ops: dict[bytes, bytes | None]) -> bytes:
    return bytes((VERSION,)) + txn_id + encode_ops(ops)


def decode_command(payload: bytes, *, index: int = 0) -> tuple[bytes, WriteBatch]:
    """(txn_id, batch) of a command; CorruptionError naming the log index if malformed."""
    where = f"<replicated log entry {index}>"
    if len(payload) < 17 or payload[0] != VERSION:
        raise CorruptionError(where, 0, f"unknown command version {payload[:1]!r}")
    try:
        return payload[1:17], WriteBatch.from_bytes(payload[17:])
    except CorruptionError as exc:
        raise CorruptionError(where, exc.offset, exc.detail) from None
