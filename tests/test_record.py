"""Log framing (engine.record): the cases of LevelDB's db/log_test.cc, and ours."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import CorruptionError
from engine.record import BLOCK_SIZE, HEADER_SIZE, LogWriter, read_log


class Buf:
    """A WritableFile that keeps bytes in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data


def write(records: list[bytes]) -> bytes:
    buf = Buf()
    w = LogWriter(buf)  # type: ignore[arg-type]
    for r in records:
        w.add_record(r)
    return bytes(buf.data)


def payloads(data: bytes) -> list[bytes]:
    return [p for _, p in read_log("log", data).records]


def test_empty_log_has_no_records() -> None:
    """An empty file is a valid, empty log."""
    scan = read_log("log", b"")
    assert scan.records == [] and scan.torn is None and scan.valid_end == 0


def test_small_records_round_trip() -> None:
    """Several small records come back in order, including an empty one."""
    recs = [b"foo", b"bar", b"", b"xxxx"]
    assert payloads(write(recs)) == recs


def test_record_spanning_many_blocks() -> None:
    """A record larger than a block is fragmented FIRST/MIDDLE.../LAST and reassembled."""
    big = bytes(random.Random(1).randbytes(3 * BLOCK_SIZE + 100))
    recs = [b"small", big, b"after"]
    data = write(recs)
    assert len(data) > 3 * BLOCK_SIZE
    assert payloads(data) == recs


@pytest.mark.parametrize("pad", [HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, 0, 1])
def test_block_trailer_padding(pad: int) -> None:
    """A record ending fewer than 7 bytes before a block boundary leaves a zero trailer."""
    first = b"a" * (BLOCK_SIZE - HEADER_SIZE - pad)
    recs = [first, b"b", b"c" * 40000]
    data = write(recs)
    assert payloads(data) == recs
    if 0 < pad < HEADER_SIZE:
        assert data[BLOCK_SIZE - pad : BLOCK_SIZE] == bytes(pad)


def test_record_exactly_filling_a_block() -> None:
    """A FULL record filling its block to the byte leaves no trailer."""
    recs = [b"x" * (BLOCK_SIZE - HEADER_SIZE), b"y"]
    data = write(recs)
    assert len(data) == BLOCK_SIZE + HEADER_SIZE + 1
    assert payloads(data) == recs


@given(st.lists(st.binary(max_size=70000), max_size=12))
@settings(max_examples=40, deadline=None)
def test_round_trip_property(recs: list[bytes]) -> None:
    """Any sequence of records round-trips exactly."""
    assert payloads(write(recs)) == recs


def test_truncation_at_every_offset_of_last_record_is_a_torn_tail() -> None:
    """Cutting the file anywhere inside its last record drops exactly that record."""
    recs = [b"one" * 10, b"two" * 20, b"three" * 3000]
    data = write(recs)
    start = len(write(recs[:2]))
    for cut in range(start, len(data)):
        scan = read_log("log", data[:cut])
        assert [p for _, p in scan.records] == recs[:2], cut
        assert scan.torn is not None or cut == start
        assert scan.valid_end == start


def test_flipped_byte_in_middle_record_is_corruption() -> None:
    """Damage followed by a valid record is CorruptionError with path and offset."""
    recs = [b"a" * 100, b"b" * 100, b"c" * 100]
    data = bytearray(write(recs))
    data[HEADER_SIZE + 100 + HEADER_SIZE + 50] ^= 0x40
    with pytest.raises(CorruptionError) as err:
        read_log("wal.log", bytes(data))
    assert err.value.path == "wal.log"
    assert err.value.offset == HEADER_SIZE + 100


@pytest.mark.parametrize("field", range(HEADER_SIZE))
def test_damaged_header_field_followed_by_records_is_corruption(field: int) -> None:
    """Flipping any header byte (crc, length, type) of an early record is detected."""
    recs = [b"x" * 50, b"y" * 50, b"z" * 50]
    data = bytearray(write(recs))
    data[HEADER_SIZE + 50 + field] ^= 0xFF
    with pytest.raises(CorruptionError):
        read_log("log", bytes(data))


def test_damage_in_earlier_block_with_valid_records_later_is_corruption() -> None:
    """A bad fragment whose damage hides later blocks is still found by block resync."""
    recs = [b"p" * 20000, b"q" * 20000, b"r" * 20000, b"s" * 100]
    data = bytearray(write(recs))
    data[HEADER_SIZE + 10] ^= 1
    with pytest.raises(CorruptionError) as err:
        read_log("log", bytes(data))
    assert err.value.offset == 0


def test_damaged_last_record_is_torn_tail() -> None:
    """A checksum error in the final record (nothing valid after it) is a torn tail."""
    recs = [b"a" * 10, b"b" * 10]
    data = bytearray(write(recs))
    data[-1] ^= 1
    scan = read_log("log", bytes(data))
    assert [p for _, p in scan.records] == [b"a" * 10]
    assert scan.torn == "fragment checksum mismatch"


def test_zeroed_tail_is_torn() -> None:
    """Zeros after the last record (as a crash after file extension leaves) are a torn tail."""
    data = write([b"hello"]) + bytes(100)
    scan = read_log("log", data)
    assert [p for _, p in scan.records] == [b"hello"]
    assert scan.torn is not None


def test_torn_fragmented_record_with_later_middle_fragments_is_torn() -> None:
    """A torn multi-block last record: only MIDDLE/LAST fragments follow, so it is a tail."""
    big = b"m" * (3 * BLOCK_SIZE)
    data = bytearray(write([b"first", big]))
    data[BLOCK_SIZE + 100] ^= 1  # inside the second fragment of the big record
    scan = read_log("log", bytes(data))
    assert [p for _, p in scan.records] == [b"first"]
    assert scan.torn is not None


def test_missing_first_fragment_before_valid_record_is_corruption() -> None:
    """A LAST fragment without FIRST, followed by a valid record, is corruption."""
    big = b"m" * (BLOCK_SIZE + 10)
    data = bytearray(write([big, b"next"]))
    data[3] ^= 1  # break the FIRST fragment's crc
    with pytest.raises(CorruptionError):
        read_log("log", bytes(data))
