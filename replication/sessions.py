"""Client sessions in the replicated state machine: each write of a session applies once.

A network client tags each write with its session (a random 16-byte client
id) and a sequence number, and keeps at most one request of a session
outstanding: it sends request ``seq + 1`` only after learning how ``seq``
ended. It may send ``seq`` many times -- to a leader that died before
answering, then to its successor -- so the log may hold several entries of
one request. The applier applies the first and turns every later one into
an empty batch (Raft dissertation §6.3). The rule runs on every replica at
apply time from the replicated state only, so all replicas agree on which
copy counted.

The session table lives in the engine itself, under keys that no user key
can take (:data:`INTERNAL_PREFIX`: ``0xff`` never occurs in UTF-8, and the
string API is all that network clients have), so it is as durable as the
writes it guards, travels in snapshots, and needs no file of its own::

    session key   := 0xff "session/" client_id[16]
    session value := seq:u64 index:u64        (little-endian; the log index
                                               the request was applied at)

Sessions are not expired: each costs one key of 44 bytes for the life of
the store (a client process opens a few). Pure module: the caller passes a
lookup of the state applied so far.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from engine.batch import WriteBatch
from replication.command import Command, Session

__all__ = ["INTERNAL_PREFIX", "SESSION_PREFIX", "SessionRecord", "resolve_sessions",
           "session_key", "session_record"]

INTERNAL_PREFIX = b"\xff"
SESSION_PREFIX = INTERNAL_PREFIX + b"session/"
_RECORD = struct.Struct("<QQ")

SessionRecord = tuple[int, int]  # (last applied seq, the log index it was applied at)


def session_key(client_id: bytes) -> bytes:
    return SESSION_PREFIX + client_id


def session_record(value: bytes | None) -> SessionRecord | None:
    """The (seq, index) a session key holds, None for an unknown session."""
    if value is None:
        return None
    seq, index = _RECORD.unpack(value)
    return seq, index


def resolve_sessions(commands: Iterable[tuple[int, Command]],
                     lookup: Callable[[bytes], bytes | None]) -> list[tuple[int, WriteBatch]]:
    """The batch to apply at each index: a session's retried request becomes empty.

    ``commands`` are consecutive committed entries; ``lookup(key)`` reads
    the state applied before the first of them. A session write that
    applies also updates its session key, in the same batch (so at the same
    sequence, atomically).
    """
    last: dict[bytes, int] = {}  # client id -> seq, as of the entries seen so far
    out: list[tuple[int, WriteBatch]] = []
    for index, cmd in commands:
        s: Session | None = cmd.session
        if s is None:
            out.append((index, cmd.batch))
            continue
        seen = last.get(s.client_id)
        if seen is None:
            rec = session_record(lookup(session_key(s.client_id)))
            seen = 0 if rec is None else rec[0]
        if s.seq <= seen:  # a retry of a request that applied already
            out.append((index, WriteBatch()))
            continue
        cmd.batch.ops[session_key(s.client_id)] = _RECORD.pack(s.seq, index)
        last[s.client_id] = s.seq
        out.append((index, cmd.batch))
    return out
