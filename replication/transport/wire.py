"""The wire format between stratakv processes: checksummed frames carrying explicit encodings.

Owns the bytes that cross a TCP connection and nothing else: no sockets,
threads or clocks (``tcp.py`` owns those). Everything here is pure, bytes
in and values out, so every corruption a network can produce is testable
without a network. ``docs/FORMAT.md`` ("Wire protocol") is the prose version.

Grammar (all integers little-endian; wire version 1)::

    stream  := hello frame*                  the first frame of a connection is its hello
    frame   := header payload[length]
    header  := magic[4]="SKVW" version:u8=1 type:u8 flags:u16=0 length:u32
               payload_crc:u32 header_crc:u32                          20 bytes
    payload_crc := mask(crc32c(payload))
    header_crc  := mask(crc32c(header bytes 0..15))
    type    := HELLO=1 | RAFT=2 | SNAPSHOT_CHUNK=3 (reserved)
             | CLIENT_REQUEST=16 (reserved) | CLIENT_RESPONSE=17 (reserved)

    hello   := role:u8 sender:u32 target:u32 cluster_len:u8 cluster_id[cluster_len]
    role    := PEER=1 | CLIENT=2

    raft    := tag:u8 frm:u32 to:u32 term:u64 body      tag: MessageType
    body    := APPEND=1            prev_index:u64 prev_term:u64 commit:u64
                                   count:u32 entry{count}
             | APPEND_RESPONSE=2   index:u64 flags:u8(bit0 reject) reject_hint:u64 log_term:u64
             | VOTE=3              last_index:u64 last_term:u64 flags:u8(bit0 pre_vote,
                                   bit1 transfer)
             | VOTE_RESPONSE=4     flags:u8(bit0 granted, bit1 pre_vote)
             | HEARTBEAT=5         commit:u64 blob                       blob = context
             | HEARTBEAT_RESPONSE=6 blob                                 blob = context
             | SNAPSHOT=7          index:u64 term:u64 npeers:u32 peer:u32{npeers} blob (data)
             | SNAPSHOT_RESPONSE=8 index:u64
             | TIMEOUT_NOW=9       (nothing)
    entry   := index:u64 term:u64 blob                                   blob = payload
    blob    := len:u32 bytes[len]

Invariants (each decoder raises :class:`WireError` when one fails):

1. Nothing is trusted before it is checked: the magic and the header
   checksum are verified before any other header field is used, the length is compared with the cap
   before a payload byte is buffered, and the payload checksum before the
   payload is decoded. TCP's own 16-bit checksum misses corruption that
   NICs, middleboxes and buggy kernels do produce ("TCP is never reliable").
2. Decoding is exact: every byte of a payload is consumed by exactly one
   field, so truncation and trailing bytes are errors, and unknown flag bits
   are errors. Hence ``encode(decode(b)) == b`` for every accepted ``b``,
   and ``decode(encode(m)) == m`` for every message.
3. Node ids on the wire are Raft ids (positive; 0 means "nobody" and only
   appears in a client's hello, as its sender and target: a client names
   no node).
4. Tags (:class:`FrameType`, :class:`Role`, ``MessageType``) are never
   renumbered; new ones get new numbers. A frame of a newer wire version is
   refused with an error saying so, never guessed at.

Thread-safety: the functions are pure; a :class:`FrameDecoder` belongs to
one connection's reader.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from engine.encoding import crc, mask_crc
from replication.consensus import LogEntry
from replication.errors import ReplicationError
from replication.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    MessageType,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "HEADER_SIZE",
    "MAGIC",
    "WIRE_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "Role",
    "WireError",
    "decode_frame",
    "decode_hello",
    "decode_message",
    "encode_frame",
    "encode_hello",
    "encode_message",
    "hello_frame",
    "message_frame",
]

MAGIC = b"SKVW"
WIRE_VERSION = 1
HEADER_SIZE = 20
# Payload cap: a leader's AppendEntries holds at most RaftConfig.max_append_bytes
# (1 MiB) of entry payloads, except that a single larger entry is still sent
# alone; snapshot chunks will be about 1 MiB. 64 MiB is the engine's largest
# write batch (Options.max_batch_bytes) plus room for framing, so any entry
# the engine accepts can be replicated, while a peer cannot make us buffer
# gigabytes by lying about a length.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024 + 64 * 1024

_HEAD = struct.Struct("<4sBBHII")  # magic version type flags length payload_crc (16 bytes)
_U32 = struct.Struct("<I")
_HELLO = struct.Struct("<BIIB")
_RAFT = struct.Struct("<BIIQ")  # tag frm to term
_APPEND = struct.Struct("<QQQI")
_ENTRY = struct.Struct("<QQI")
_APPEND_RESP = struct.Struct("<QBQQ")
_VOTE = struct.Struct("<QQB")
_U8 = struct.Struct("<B")
_U64 = struct.Struct("<Q")
_SNAP = struct.Struct("<QQI")


class WireError(ReplicationError):
    """Bytes from the network that are not a well-formed frame or message.

    Raised for truncation, a bad magic number, a checksum mismatch, a length
    over the cap, an unknown frame type or message tag, a newer wire
    version, unknown flag bits and trailing bytes. Not retryable: the same
    bytes fail the same way, so the connection that sent them is closed (its
    stream position can no longer be trusted) and the peer reconnects. Not
    ``deterministic`` in the applier's sense: it is damage in transit, never
    a property of a replicated entry.
    """

    retryable = False


class FrameType(IntEnum):
    """The ``type`` byte of a frame. Never renumber; append new ones.

    1-15 are for peer connections, 16-31 for client connections, 32-255 are
    unassigned. Reserved types are valid frames (the decoder accepts them)
    that the current transport does not serve: a connection sending one is
    closed as a protocol error, not as corruption.
    """

    HELLO = 1  # the first frame of every connection: who is talking, and as what
    RAFT = 2  # one Raft message (replication.raft.messages)
    SNAPSHOT_CHUNK = 3  # reserved: a piece of an engine checkpoint (issue 14, item 3)
    CLIENT_REQUEST = 16  # reserved: a client's operation (issue 14, item 4)
    CLIENT_RESPONSE = 17  # reserved: the answer to a CLIENT_REQUEST


class Role(IntEnum):
    """What the dialer of a connection is, as said in its hello."""

    PEER = 1  # another node of the cluster: the stream carries its Raft messages to us
    CLIENT = 2  # a client: requests in, responses out on the same connection


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of a connection.

    ``cluster_id``: the cluster the dialer belongs to (1-255 opaque bytes);
    a node refuses peers and clients of another cluster, so a misconfigured
    address cannot merge two clusters' logs. ``sender``: the dialer's Raft id
    (0 for a client). ``target``: the Raft id the dialer believes it reached
    (0: any, for a client); a node refuses a hello meant for another id, so
    swapped addresses in a peer list are found at once instead of as odd
    Raft behaviour.
    """

    role: Role
    sender: int
    target: int
    cluster_id: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame: its type and its payload (checksum already verified)."""

    type: FrameType
    payload: bytes


# -- frames --------------------------------------------------------------------------


def encode_frame(frame_type: FrameType, payload: bytes,
                 *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Header plus ``payload``; ValueError if the payload is over the cap (a sender bug)."""
    if len(payload) > max_payload_bytes:
        raise ValueError(f"frame payload of {len(payload)} bytes is over the cap of "
                         f"{max_payload_bytes} bytes")
    head = _HEAD.pack(MAGIC, WIRE_VERSION, frame_type, 0, len(payload), mask_crc(crc(payload)))
    return head + _U32.pack(mask_crc(crc(head))) + payload


def _check_header(data: bytes | bytearray | memoryview, max_payload_bytes: int
                  ) -> tuple[FrameType, int, int]:
    """Validate the HEADER_SIZE bytes at the start of ``data``: (type, length, payload crc)."""
    magic, version, type_byte, flags, length, payload_crc = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not a stratakv peer")
    (header_crc,) = _U32.unpack_from(data, 16)
    if header_crc != mask_crc(crc(bytes(data[:16]))):
        raise WireError("frame header checksum mismatch")
    if version != WIRE_VERSION:
        newer = "newer than" if version > WIRE_VERSION else "not"
        raise WireError(f"wire version {version} is {newer} supported (version {WIRE_VERSION})")
    try:
        frame_type = FrameType(type_byte)
    except ValueError:
        raise WireError(f"unknown frame type {type_byte}") from None
    if flags:
        raise WireError(f"unknown frame flags {flags:#06x}")
    if length > max_payload_bytes:
        raise WireError(f"frame payload of {length} bytes is over the cap of "
                        f"{max_payload_bytes} bytes")
    return frame_type, length, payload_crc


def _check_payload(payload: bytes, payload_crc: int) -> None:
    if mask_crc(crc(payload)) != payload_crc:
        raise WireError(f"frame payload checksum mismatch ({len(payload)} bytes)")


def decode_frame(data: bytes, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Frame:
    """Exactly one frame in ``data``: truncation and trailing bytes are WireErrors."""
    if len(data) < HEADER_SIZE:
        raise WireError(f"truncated frame: {len(data)} bytes, a header is {HEADER_SIZE}")
    frame_type, length, payload_crc = _check_header(data, max_payload_bytes)
    end = HEADER_SIZE + length
    if len(data) < end:
        raise WireError(f"truncated frame: payload of {length} bytes, "
                        f"{len(data) - HEADER_SIZE} present")
    if len(data) > end:
        raise WireError(f"{len(data) - end} trailing bytes after the frame")
    payload = data[HEADER_SIZE:end]
    _check_payload(payload, payload_crc)
    return Frame(frame_type, payload)


class FrameDecoder:
    """Cuts a byte stream into checked frames, as the bytes arrive.

    ``feed(data)`` returns the frames completed by ``data``. A header is
    checked as soon as its 20 bytes are in, so a bad magic, a bad header
    checksum or an oversized length is refused before any of the payload is
    buffered. A WireError refuses the whole chunk given to that ``feed``
    (frames before the bad one included) and leaves the decoder unusable:
    the stream has lost its framing, and the caller closes the connection. ``finish()`` at end of
    stream raises if a frame was cut off.
    """

    def __init__(self, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._buf = bytearray()
        self._head: tuple[FrameType, int, int] | None = None  # checked header of the next frame
        self._failed = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a returned frame (a checked header included)."""
        return len(self._buf) + (HEADER_SIZE if self._head is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._failed:
            raise WireError("stream already failed to decode")
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buf
        try:
            while True:
                if self._head is None:
                    if len(buf) - pos < HEADER_SIZE:
                        break
                    self._head = _check_header(memoryview(buf)[pos:pos + HEADER_SIZE],
                                               self.max_payload_bytes)
                    pos += HEADER_SIZE
                frame_type, length, payload_crc = self._head
                if len(buf) - pos < length:
                    break
                payload = bytes(buf[pos:pos + length])
                _check_payload(payload, payload_crc)
                frames.append(Frame(frame_type, payload))
                pos += length
                self._head = None
        except WireError:
            self._failed = True
            raise
        finally:
            if pos:
                del buf[:pos]
        return frames

    def finish(self) -> None:
        """End of stream: raise WireError if it stopped inside a frame."""
        if self.buffered_bytes:
            raise WireError(f"truncated frame at end of stream: {self.buffered_bytes} bytes "
                            f"of a frame buffered")


# -- hello ---------------------------------------------------------------------------


def encode_hello(hello: Hello) -> bytes:
    if not 1 <= len(hello.cluster_id) <= 255:
        raise ValueError(f"cluster id must be 1-255 bytes, got {len(hello.cluster_id)}")
    return _HELLO.pack(hello.role, hello.sender, hello.target,
                       len(hello.cluster_id)) + hello.cluster_id


def decode_hello(payload: bytes) -> Hello:
    if len(payload) < _HELLO.size:
        raise WireError(f"truncated hello: {len(payload)} bytes")
    role_byte, sender, target, n = _HELLO.unpack_from(payload)
    try:
        role = Role(role_byte)
    except ValueError:
        raise WireError(f"unknown hello role {role_byte}") from None
    if n == 0:
        raise WireError("hello names no cluster")
    if len(payload) != _HELLO.size + n:
        raise WireError(f"hello of {len(payload)} bytes, its cluster id says {_HELLO.size + n}")
    if role is Role.PEER and (sender == 0 or target == 0):
        raise WireError(f"peer hello from node {sender} to node {target}: Raft ids are positive")
    return Hello(role, sender, target, payload[_HELLO.size:])


def hello_frame(hello: Hello) -> bytes:
    return encode_frame(FrameType.HELLO, encode_hello(hello))


# -- Raft messages -------------------------------------------------------------------


def _flags(*bits: bool) -> int:
    return sum(1 << i for i, b in enumerate(bits) if b)


def _blob(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _encode_body(m: Message) -> bytes:
    if isinstance(m, AppendEntries):
        parts = [_APPEND.pack(m.prev_index, m.prev_term, m.commit, len(m.entries))]
        for e in m.entries:
            parts.append(_ENTRY.pack(e.index, e.term, len(e.payload)))
            parts.append(e.payload)
        return b"".join(parts)
    if isinstance(m, AppendEntriesResponse):
        return _APPEND_RESP.pack(m.index, _flags(m.reject), m.reject_hint, m.log_term)
    if isinstance(m, RequestVote):
        return _VOTE.pack(m.last_index, m.last_term, _flags(m.pre_vote, m.transfer))
    if isinstance(m, RequestVoteResponse):
        return _U8.pack(_flags(m.granted, m.pre_vote))
    if isinstance(m, Heartbeat):
        return _U64.pack(m.commit) + _blob(m.context)
    if isinstance(m, HeartbeatResponse):
        return _blob(m.context)
    if isinstance(m, InstallSnapshot):
        s = m.snapshot
        return (_SNAP.pack(s.index, s.term, len(s.peers))
                + struct.pack(f"<{len(s.peers)}I", *s.peers) + _blob(s.data))
    if isinstance(m, InstallSnapshotResponse):
        return _U64.pack(m.index)
    if isinstance(m, TimeoutNow):
        return b""
    raise TypeError(f"not a Raft message: {m!r}")


def encode_message(m: Message) -> bytes:
    """The ``raft`` payload of ``m``; ValueError if a field does not fit its width."""
    try:
        return _RAFT.pack(m.TYPE, m.frm, m.to, m.term) + _encode_body(m)
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(m).__name__}: {exc}") from None


def message_frame(m: Message, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """``m`` as one RAFT frame, ready to write."""
    return encode_frame(FrameType.RAFT, encode_message(m), max_payload_bytes=max_payload_bytes)


class _Reader:
    """Sequential, bounds-checked reads of one payload; every shortfall is a WireError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        if len(self.data) - self.pos < st.size:
            raise WireError(f"truncated {self.what} at byte {self.pos}: needs {st.size} more, "
                            f"{len(self.data) - self.pos} left")
        values = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return values

    def take(self, n: int) -> bytes:
        if len(self.data) - self.pos < n:
            raise WireError(f"truncated {self.what} at byte {self.pos}: a field of {n} bytes, "
                            f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def blob(self) -> bytes:
        (n,) = self.unpack(_U32)
        return self.take(n)

    def flags(self, f: int, *names: str) -> list[bool]:
        """The bits of flag byte ``f``, one per name (bit 0 first); other bits are errors."""
        if f >> len(names):
            raise WireError(f"unknown flag bits {f:#04x} in {self.what} "
                            f"(known: {', '.join(names)})")
        return [bool(f >> i & 1) for i in range(len(names))]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise WireError(f"{len(self.data) - self.pos} trailing bytes after {self.what}")


def _append(r: _Reader, frm: int, to: int, term: int) -> Message:
    prev_index, prev_term, commit, count = r.unpack(_APPEND)
    # Each entry takes at least _ENTRY.size bytes: refuse a count the payload cannot
    # hold before looping over it.
    if count * _ENTRY.size > len(r.data) - r.pos:
        raise WireError(f"truncated {r.what}: {count} entries cannot fit in "
                        f"{len(r.data) - r.pos} bytes")
    entries = []
    for i in range(count):
        index, eterm, n = r.unpack(_ENTRY)
        if index != prev_index + 1 + i:
            raise WireError(f"{r.what}: entry {i} has index {index}, expected "
                            f"{prev_index + 1 + i} (entries follow prev_index)")
        entries.append(LogEntry(index, eterm, r.take(n)))
    return AppendEntries(frm, to, term, prev_index, prev_term, tuple(entries), commit)


def _append_response(r: _Reader, frm: int, to: int, term: int) -> Message:
    index, f, hint, log_term = r.unpack(_APPEND_RESP)
    (reject,) = r.flags(f, "reject")
    return AppendEntriesResponse(frm, to, term, index, reject, hint, log_term)


def _vote(r: _Reader, frm: int, to: int, term: int) -> Message:
    last_index, last_term, f = r.unpack(_VOTE)
    pre_vote, transfer = r.flags(f, "pre_vote", "transfer")
    return RequestVote(frm, to, term, last_index, last_term, pre_vote, transfer)


def _vote_response(r: _Reader, frm: int, to: int, term: int) -> Message:
    (f,) = r.unpack(_U8)
    granted, pre_vote = r.flags(f, "granted", "pre_vote")
    return RequestVoteResponse(frm, to, term, granted, pre_vote)


def _heartbeat(r: _Reader, frm: int, to: int, term: int) -> Message:
    (commit,) = r.unpack(_U64)
    return Heartbeat(frm, to, term, commit, r.blob())


def _heartbeat_response(r: _Reader, frm: int, to: int, term: int) -> Message:
    return HeartbeatResponse(frm, to, term, r.blob())


def _snapshot(r: _Reader, frm: int, to: int, term: int) -> Message:
    index, sterm, npeers = r.unpack(_SNAP)
    peers = struct.unpack(f"<{npeers}I", r.take(4 * npeers))  # take() checks the length first
    if 0 in peers:
        raise WireError(f"{r.what}: peer id 0 in the configuration {peers}")
    return InstallSnapshot(frm, to, term, SnapshotMeta(index, sterm, tuple(peers), r.blob()))


def _snapshot_response(r: _Reader, frm: int, to: int, term: int) -> Message:
    (index,) = r.unpack(_U64)
    return InstallSnapshotResponse(frm, to, term, index)


def _timeout_now(r: _Reader, frm: int, to: int, term: int) -> Message:
    return TimeoutNow(frm, to, term)


_DECODERS: dict[MessageType, Callable[[_Reader, int, int, int], Message]] = {
    MessageType.APPEND: _append,
    MessageType.APPEND_RESPONSE: _append_response,
    MessageType.VOTE: _vote,
    MessageType.VOTE_RESPONSE: _vote_response,
    MessageType.HEARTBEAT: _heartbeat,
    MessageType.HEARTBEAT_RESPONSE: _heartbeat_response,
    MessageType.SNAPSHOT: _snapshot,
    MessageType.SNAPSHOT_RESPONSE: _snapshot_response,
    MessageType.TIMEOUT_NOW: _timeout_now,
}


def decode_message(payload: bytes) -> Message:
    """The Raft message of a RAFT frame's payload; WireError if it is not exactly one."""
    r = _Reader(payload, "raft message")
    tag, frm, to, term = r.unpack(_RAFT)
    try:
        mtype = MessageType(tag)
    except ValueError:
        raise WireError(f"unknown raft message tag {tag}") from None
    r.what = mtype.name.lower()
    if frm == 0 or to == 0:
        raise WireError(f"{r.what} from node {frm} to node {to}: Raft ids are positive")
    m = _DECODERS[mtype](r, frm, to, term)
    r.end()
    return m
