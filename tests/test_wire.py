"""The wire codec: every message round-trips, every kind of damage is a WireError.

Pure tests, no sockets: the frames are built and broken in memory. A
helper writes headers with arbitrary fields but *valid* checksums, so each
check (magic, version, type, flags, cap, payload checksum, message grammar)
is reached on its own rather than hidden behind the header checksum.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.encoding import crc, mask_crc
from replication.consensus import LogEntry
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
from replication.transport.wire import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    HEADER_SIZE,
    MAGIC,
    WIRE_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    Role,
    WireError,
    decode_frame,
    decode_hello,
    decode_message,
    encode_frame,
    encode_hello,
    encode_message,
    hello_frame,
    message_frame,
)

U32 = 2**32 - 1
U64 = 2**64 - 1

# One of each message, with every optional field set away from its default.
EXAMPLES: list[Message] = [
    AppendEntries(1, 2, 3, 4, 2, (LogEntry(5, 3, b"put"), LogEntry(6, 3, b"")), 5),
    AppendEntries(3, 1, 7, 0, 0, (), 0),
    AppendEntriesResponse(2, 1, 3, 6),
    AppendEntriesResponse(2, 1, 3, 9, reject=True, reject_hint=4, log_term=2),
    RequestVote(1, 3, 8, 10, 7),
    RequestVote(1, 3, 9, 10, 7, pre_vote=True, transfer=True),
    RequestVoteResponse(3, 1, 8, granted=True),
    RequestVoteResponse(3, 1, 9, granted=False, pre_vote=True),
    Heartbeat(1, 2, 4, 12),
    Heartbeat(1, 2, 4, 12, context=b"\x00read-7"),
    HeartbeatResponse(2, 1, 4),
    HeartbeatResponse(2, 1, 4, context=b"read-7"),
    InstallSnapshot(1, 2, 5, SnapshotMeta(100, 4, (1, 2, 3), b"checkpoint-ref")),
    InstallSnapshot(1, 2, 5, SnapshotMeta()),
    InstallSnapshotResponse(2, 1, 5, 100),
    TimeoutNow(1, 2, 6),
]


def raw_frame(payload: bytes, *, magic: bytes = MAGIC, version: int = WIRE_VERSION,
              frame_type: int = FrameType.RAFT, flags: int = 0,
              length: int | None = None) -> bytes:
    """A frame with any header fields, its checksums computed so that they match."""
    n = len(payload) if length is None else length
    head = struct.pack("<4sBBHII", magic, version, frame_type, flags, n, mask_crc(crc(payload)))
    return head + struct.pack("<I", mask_crc(crc(head))) + payload


def roundtrip(m: Message) -> Message:
    frame = decode_frame(message_frame(m))
    assert frame.type is FrameType.RAFT
    return decode_message(frame.payload)


# -- round trips ---------------------------------------------------------------------


def test_every_message_type_has_an_example() -> None:
    assert {m.TYPE for m in EXAMPLES} == set(MessageType)


@pytest.mark.parametrize("m", EXAMPLES, ids=lambda m: type(m).__name__)
def test_example_round_trips(m: Message) -> None:
    assert roundtrip(m) == m
    assert encode_message(decode_message(encode_message(m))) == encode_message(m)


def test_worked_examples_of_format_md() -> None:
    """The bytes docs/FORMAT.md shows are what the encoders write."""
    text = (Path(__file__).parent.parent / "docs" / "FORMAT.md").read_text()
    block = re.search(r"is the 49-byte frame\n\n```\n(.*?)```", text, re.S)
    assert block
    shown = bytes.fromhex(" ".join(line.split("  ")[0] for line in block[1].splitlines()))
    assert shown == message_frame(Heartbeat(1, 2, 5, 3))
    assert len(shown) == HEADER_SIZE + 29
    hello = re.search(r"cluster `demo` is `([0-9a-f \n]+)`.*?followed by\n`([0-9a-f \n]+)`",
                      text, re.S)
    assert hello
    assert bytes.fromhex((hello[1] + hello[2]).replace("\n", " ")) == \
        hello_frame(Hello(Role.PEER, 1, 2, b"demo"))


ids = st.integers(1, U32)
u64 = st.integers(0, U64)
blobs = st.binary(max_size=40)


@st.composite
def appends(draw: st.DrawFn) -> AppendEntries:
    prev_index = draw(st.integers(0, 2**63))
    bodies = draw(st.lists(st.tuples(u64, blobs), max_size=5))
    entries = tuple(LogEntry(prev_index + 1 + i, t, p) for i, (t, p) in enumerate(bodies))
    return AppendEntries(draw(ids), draw(ids), draw(u64), prev_index, draw(u64), entries,
                         draw(u64))


messages: st.SearchStrategy[Message] = st.one_of(
    appends(),
    st.builds(AppendEntriesResponse, ids, ids, u64, u64, st.booleans(), u64, u64),
    st.builds(RequestVote, ids, ids, u64, u64, u64, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, ids, ids, u64, st.booleans(), st.booleans()),
    st.builds(Heartbeat, ids, ids, u64, u64, blobs),
    st.builds(HeartbeatResponse, ids, ids, u64, blobs),
    st.builds(InstallSnapshot, ids, ids, u64,
              st.builds(SnapshotMeta, u64, u64, st.lists(ids, max_size=7).map(tuple), blobs)),
    st.builds(InstallSnapshotResponse, ids, ids, u64, u64),
    st.builds(TimeoutNow, ids, ids, u64),
)


@given(messages)
def test_generated_messages_round_trip(m: Message) -> None:
    assert roundtrip(m) == m


@given(st.lists(messages, min_size=1, max_size=6), st.data())
def test_stream_of_frames_in_any_chunks(batch: list[Message], data: st.DataObject) -> None:
    """A stream cut anywhere (as TCP may deliver it) yields the same messages, in order."""
    stream = hello_frame(Hello(Role.PEER, 1, 2, b"c")) + b"".join(map(message_frame, batch))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += decoder.feed(stream[a:b])
    decoder.finish()
    assert frames[0].type is FrameType.HELLO
    assert [decode_message(f.payload) for f in frames[1:]] == batch
    assert decoder.buffered_bytes == 0


@given(messages)
def test_no_proper_prefix_of_a_message_decodes(m: Message) -> None:
    """Exact decoding: a payload cut short anywhere is refused, never read as another message."""
    payload = encode_message(m)
    for n in range(len(payload)):
        with pytest.raises(WireError, match="truncated"):
            decode_message(payload[:n])


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_payloads_raise_only_wire_errors(data: bytes) -> None:
    try:
        m = decode_message(data)
    except WireError:
        return
    assert encode_message(m) == data  # whatever is accepted is canonical


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_streams_raise_only_wire_errors(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        decoder.feed(data)
        decoder.finish()
    except WireError:
        return
    assert data == b""


# -- hello ---------------------------------------------------------------------------


def test_hello_round_trips() -> None:
    for hello in (Hello(Role.PEER, 1, 3, b"prod-eu"), Hello(Role.CLIENT, 0, 0, bytes(255))):
        frame = decode_frame(hello_frame(hello))
        assert frame.type is FrameType.HELLO
        assert decode_hello(frame.payload) == hello


@pytest.mark.parametrize("payload, match", [
    (b"\x01\x01\x00\x00", "truncated hello"),
    (b"\x09\x01\x00\x00\x00\x02\x00\x00\x00\x01c", "unknown hello role 9"),
    (b"\x01\x01\x00\x00\x00\x02\x00\x00\x00\x00", "names no cluster"),
    (b"\x01\x01\x00\x00\x00\x02\x00\x00\x00\x02c", "its cluster id says"),
    (b"\x01\x01\x00\x00\x00\x02\x00\x00\x00\x01cc", "its cluster id says"),
    (b"\x01\x00\x00\x00\x00\x02\x00\x00\x00\x01c", "Raft ids are positive"),
    (b"\x01\x01\x00\x00\x00\x00\x00\x00\x00\x01c", "Raft ids are positive"),
])
def test_malformed_hellos_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_hello(payload)


def test_hello_cluster_id_bounds_on_encode() -> None:
    with pytest.raises(ValueError):
        encode_hello(Hello(Role.PEER, 1, 2, b""))
    with pytest.raises(ValueError):
        encode_hello(Hello(Role.PEER, 1, 2, bytes(256)))


# -- frame corruption ----------------------------------------------------------------


FRAME = message_frame(EXAMPLES[0])


def test_every_flipped_byte_of_a_frame_is_detected() -> None:
    for i in range(len(FRAME)):
        damaged = bytearray(FRAME)
        damaged[i] ^= 0xFF
        with pytest.raises(WireError):
            decode_frame(bytes(damaged))


def test_flipped_bits_name_the_check_that_failed() -> None:
    def flip(i: int) -> bytes:
        damaged = bytearray(FRAME)
        damaged[i] ^= 0x01
        return bytes(damaged)

    with pytest.raises(WireError, match="bad magic"):
        decode_frame(flip(0))
    for i in range(4, HEADER_SIZE):  # version, type, flags, length, either checksum
        with pytest.raises(WireError, match="header checksum"):
            decode_frame(flip(i))
    with pytest.raises(WireError, match="payload checksum"):
        decode_frame(flip(HEADER_SIZE + 3))


def test_every_truncation_is_refused() -> None:
    for n in range(len(FRAME)):
        with pytest.raises(WireError, match="truncated"):
            decode_frame(FRAME[:n])
        decoder = FrameDecoder()
        assert decoder.feed(FRAME[:n]) == []
        if n:
            with pytest.raises(WireError, match="truncated frame at end of stream"):
                decoder.finish()


def test_trailing_bytes_after_a_frame() -> None:
    with pytest.raises(WireError, match="1 trailing bytes after the frame"):
        decode_frame(FRAME + b"\x00")


def test_trailing_bytes_after_a_message() -> None:
    payload = encode_message(EXAMPLES[-1]) + b"\x00\x00"
    decode_frame(raw_frame(payload))  # the frame itself is fine
    with pytest.raises(WireError, match="2 trailing bytes after timeout_now"):
        decode_message(payload)


def test_bad_magic() -> None:
    with pytest.raises(WireError, match="bad magic b'GET '"):
        decode_frame(raw_frame(b"", magic=b"GET "))


@pytest.mark.parametrize("version, match", [(2, "newer than supported"), (0, "not supported")])
def test_other_wire_versions_are_refused(version: int, match: str) -> None:
    with pytest.raises(WireError, match=f"wire version {version} is {match}"):
        decode_frame(raw_frame(b"", version=version))


def test_unknown_frame_type() -> None:
    with pytest.raises(WireError, match="unknown frame type 200"):
        decode_frame(raw_frame(b"", frame_type=200))


def test_reserved_frame_types_are_valid_frames() -> None:
    for t in (FrameType.SNAPSHOT_CHUNK, FrameType.CLIENT_REQUEST, FrameType.CLIENT_RESPONSE):
        assert decode_frame(encode_frame(t, b"later")) == Frame(t, b"later")


def test_unknown_frame_flags() -> None:
    with pytest.raises(WireError, match="unknown frame flags 0x0100"):
        decode_frame(raw_frame(b"", flags=0x100))


def test_size_cap() -> None:
    cap = 1000
    assert decode_frame(encode_frame(FrameType.RAFT, bytes(cap), max_payload_bytes=cap),
                        max_payload_bytes=cap).payload == bytes(cap)
    with pytest.raises(ValueError, match="over the cap"):
        encode_frame(FrameType.RAFT, bytes(cap + 1), max_payload_bytes=cap)
    with pytest.raises(WireError, match="over the cap of 1000 bytes"):
        decode_frame(raw_frame(bytes(cap + 1)), max_payload_bytes=cap)


def test_oversized_length_is_refused_before_the_payload_arrives() -> None:
    """A header claiming 4 GiB is refused on its 20 bytes alone: nothing is buffered for it."""
    decoder = FrameDecoder()
    with pytest.raises(WireError, match="over the cap"):
        decoder.feed(raw_frame(b"", length=U32)[:HEADER_SIZE])
    with pytest.raises(WireError, match="already failed"):
        decoder.feed(b"")
    assert U32 > DEFAULT_MAX_PAYLOAD_BYTES


def test_decoder_stops_at_the_first_bad_frame() -> None:
    decoder = FrameDecoder()
    good = message_frame(EXAMPLES[-1])
    damaged = FRAME[:-1] + bytes([FRAME[-1] ^ 0xFF])
    assert decoder.feed(good) == [Frame(FrameType.RAFT, good[HEADER_SIZE:])]
    with pytest.raises(WireError, match="payload checksum"):
        decoder.feed(good + damaged + good)  # the whole chunk is refused


# -- message grammar -----------------------------------------------------------------


def head(tag: int, frm: int = 1, to: int = 2, term: int = 3) -> bytes:
    return struct.pack("<BIIQ", tag, frm, to, term)


@pytest.mark.parametrize("payload, match", [
    (head(0), "unknown raft message tag 0"),
    (head(99), "unknown raft message tag 99"),
    (head(MessageType.TIMEOUT_NOW, frm=0), "Raft ids are positive"),
    (head(MessageType.TIMEOUT_NOW, to=0), "Raft ids are positive"),
    (head(MessageType.VOTE_RESPONSE) + b"\x04", r"unknown flag bits 0x04 in vote_response"),
    (head(MessageType.VOTE) + struct.pack("<QQB", 1, 1, 0x80), "unknown flag bits 0x80"),
    (head(MessageType.APPEND_RESPONSE) + struct.pack("<QBQQ", 1, 2, 0, 0),
     "unknown flag bits 0x02"),
    (head(MessageType.APPEND) + struct.pack("<QQQI", 4, 1, 0, 1) + struct.pack("<QQI", 6, 1, 0),
     "entry 0 has index 6, expected 5"),
    (head(MessageType.APPEND) + struct.pack("<QQQI", 4, 1, 0, U32), "cannot fit"),
    (head(MessageType.HEARTBEAT) + struct.pack("<QI", 1, 100) + b"short", "truncated heartbeat"),
    (head(MessageType.SNAPSHOT) + struct.pack("<QQI", 1, 1, U32), "truncated snapshot"),
    (head(MessageType.SNAPSHOT) + struct.pack("<QQIII", 1, 1, 2, 1, 0) + struct.pack("<I", 0),
     "peer id 0"),
])
def test_malformed_messages_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_message(payload)


def test_unencodable_message_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot encode TimeoutNow"):
        encode_message(TimeoutNow(1, 2, 2**64))
    with pytest.raises(ValueError, match="cannot encode Heartbeat"):
        encode_message(Heartbeat(2**32, 1, 1, 0))
