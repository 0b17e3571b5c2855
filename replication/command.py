"""The payload of a replicated log entry: one certified write set, maybe of a client session.

Grammar (little-endian)::

    command := version:u8=1 txn_id[16] ops                       # no client session
             | version:u8=2 txn_id[16] client_id[16] seq:u64 ops
                                                  # ops: engine.batch's encoding

``txn_id`` is random and unique per commit attempt, so that a history
checker -- or a client resolving an AmbiguousCommit -- can find a
transaction in the log. Version 2 adds the client session of a network
client (Raft dissertation §6.3): the applier applies ``ops`` only if
``seq`` is newer than the last one it applied for ``client_id`` (see
:mod:`replication.sessions`), so a client may retry a write on a new
leader without it being applied twice. Version 1 stays what in-process
writes produce, and what older logs hold. Pure module.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from engine.batch import WriteBatch, encode_ops
from engine.errors import CorruptionError

__all__ = ["Command", "Session", "decode_command", "encode_command"]

VERSION = 1
SESSION_VERSION = 2
_SEQ = struct.Struct("<Q")


class Session(NamedTuple):
    """A client session's id (16 bytes) and the sequence number of one of its writes (>= 1)."""

    client_id: bytes
    seq: int


class Command(NamedTuple):
    """A decoded command: its transaction id, its write set and its client session, if any."""

    txn_id: bytes
    batch: WriteBatch
    session: Session | None


def encode_command(txn_id: bytes, ops: dict[bytes, bytes | None],
                   session: Session | None = None) -> bytes:
    if session is None:
        return bytes((VERSION,)) + txn_id + encode_ops(ops)
    if len(session.client_id) != 16 or not 1 <= session.seq < 1 << 64:
        raise ValueError(f"bad client session {session!r}")
    return (bytes((SESSION_VERSION,)) + txn_id + session.client_id + _SEQ.pack(session.seq)
            + encode_ops(ops))


def decode_command(payload: bytes, *, index: int = 0) -> Command:
    """The command in ``payload``; CorruptionError naming the log index if malformed."""
    where = f"<replicated log entry {index}>"
    version = payload[0] if payload else None
    head = 17 if version == VERSION else 41 if version == SESSION_VERSION else None
    if head is None or len(payload) < head:
        raise CorruptionError(where, 0, f"unknown command version {payload[:1]!r}"
                              if head is None else f"command cut off at {len(payload)} bytes")
    session = None
    if version == SESSION_VERSION:
        session = Session(payload[17:33], _SEQ.unpack_from(payload, 33)[0])
    try:
        return Command(payload[1:17], WriteBatch.from_bytes(payload[head:]), session)
    except CorruptionError as exc:
        raise CorruptionError(where, exc.offset, exc.detail) from None
