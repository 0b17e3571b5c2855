"""The pure parts of the network path: the client value codec, error mapping, session
commands and their exactly-once rule, and resumable snapshot downloads."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine
from engine.errors import CorruptionError, InvalidArgument, SerializationFailure
from engine.fs import OSFileSystem
from replication import Cluster
from replication.command import Command, Session, decode_command, encode_command
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.protocol import decode_value, encode_value, error_result, raise_error
from replication.sessions import resolve_sessions, session_key, session_record
from replication.snapshots import SnapshotInfo, SnapshotStore, fetch_snapshot
from replication.transport.wire import WireError

# -- the value codec ----------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.binary()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(values)
def test_every_value_round_trips_exactly(value: Any) -> None:
    data = encode_value(value)
    assert decode_value(data) == value
    assert encode_value(decode_value(data)) == data


@given(values, st.data())
def test_a_truncated_or_extended_value_is_a_wire_error(value: Any, data: st.DataObject) -> None:
    raw = encode_value(value)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(WireError):
        decode_value(raw[:cut])
    with pytest.raises(WireError, match="trailing"):
        decode_value(raw + b"\x00")


@pytest.mark.parametrize("raw, what", [
    (b"\x09", "unknown client value tag"),
    (b"\x05\x02\x00\x00\x00\xff\xfe", "UTF-8"),
    (b"\x06\xff\xff\xff\x7f\x00", "items"),  # a count larger than the bytes that follow
    (b"\x07\x02\x00\x00\x00\x05\x01\x00\x00\x00a\x00\x05\x01\x00\x00\x00a\x00", "dict key"),
    (b"\x07\x01\x00\x00\x00\x03" + b"\x00" * 8 + b"\x00", "dict key"),  # an int key
    (b"\x06\x01\x00\x00\x00" * 10 + b"\x00", "deeper"),
])
def test_malformed_values_are_refused_with_a_reason(raw: bytes, what: str) -> None:
    with pytest.raises(WireError, match=what):
        decode_value(raw)


def test_values_the_codec_cannot_carry_are_refused_when_encoding() -> None:
    with pytest.raises(TypeError, match="float"):
        encode_value(1.5)
    with pytest.raises(TypeError, match="dict keys"):
        encode_value({1: 2})


@pytest.mark.parametrize("exc", [
    NotLeader("not me", leader=2),
    Unavailable("no quorum"),
    AmbiguousCommit("unknown", index=7, term=3),
    SerializationFailure("dangerous_structure", "pivot"),
    InvalidArgument("bad key"),
    TypeError("key must be str"),
])
def test_an_error_answer_raises_what_the_embedded_store_would(exc: Exception) -> None:
    code, info = error_result(exc)
    with pytest.raises(type(exc)) as raised:
        raise_error(code, decode_value(encode_value(info)))
    assert str(raised.value) == str(exc)
    if isinstance(exc, NotLeader):
        assert isinstance(raised.value, NotLeader) and raised.value.leader == 2
    if isinstance(exc, AmbiguousCommit):
        assert isinstance(raised.value, AmbiguousCommit) and raised.value.index == 7


def test_an_unexpected_server_error_is_unavailable_not_a_crash() -> None:
    code, info = error_result(RuntimeError("boom"))
    assert code == "error"
    with pytest.raises(Unavailable, match="boom"):
        raise_error(code, info)


# -- commands and sessions -----------------------------------------------------------------------


def test_a_session_command_round_trips_and_a_plain_one_keeps_version_1() -> None:
    ops = {b"k": b"v", b"gone": None}
    plain = encode_command(b"t" * 16, ops)
    assert plain[0] == 1 and decode_command(plain).session is None
    s = Session(b"c" * 16, 42)
    cmd = decode_command(encode_command(b"t" * 16, ops, s))
    assert cmd.session == s and cmd.txn_id == b"t" * 16 and dict(cmd.batch.ops) == ops
    with pytest.raises(CorruptionError, match="cut off"):
        decode_command(encode_command(b"t" * 16, ops, s)[:30], index=9)
    with pytest.raises(ValueError):
        encode_command(b"t" * 16, ops, Session(b"short", 1))


def _cmd(ops: dict[bytes, bytes | None], session: Session | None) -> Command:
    return decode_command(encode_command(b"t" * 16, ops, session))


def test_a_retried_session_request_applies_once() -> None:
    a, b = b"a" * 16, b"b" * 16
    state: dict[bytes, bytes] = {}
    batches = resolve_sessions([
        (1, _cmd({b"x": b"1"}, Session(a, 1))),
        (2, _cmd({b"x": b"2"}, Session(b, 1))),
        (3, _cmd({b"x": b"1"}, Session(a, 1))),  # the retry, after b's write: must not apply
        (4, _cmd({b"y": b"1"}, Session(a, 2))),
        (5, _cmd({b"z": b"1"}, None)),
    ], state.get)
    applied = {i: dict(batch.ops) for i, batch in batches}
    assert applied[3] == {}
    assert applied[2][b"x"] == b"2" and applied[4][b"y"] == b"1" and applied[5] == {b"z": b"1"}
    assert session_record(applied[4][session_key(a)]) == (2, 4)
    # The rule reads the state applied before the batch: a retry in a later batch is empty too.
    state = {session_key(a): applied[4][session_key(a)]}
    later = resolve_sessions([(6, _cmd({b"y": b"1"}, Session(a, 2)))], state.get)
    assert dict(later[0][1].ops) == {}


def test_a_retried_write_applies_once_on_every_replica(tmp_path: Path) -> None:
    """The state machine rule end to end in an embedded cluster: the same session request
    written twice, another write between, leaves the other write in place everywhere."""
    with Cluster.open(str(tmp_path / "c"), 3, election_timeout_ms=50) as cluster:
        leader = cluster.leader(5.0)
        tm = leader.transactions(5.0)
        s = Session(b"s" * 16, 1)
        first = tm.write({b"k": b"first"}, 5.0, s)
        tm.write({b"k": b"other"}, 5.0)
        tm.write({b"k": b"first"}, 5.0, s)  # the client's retry after a lost answer
        assert cluster.wait_converged(10.0)
        for node in cluster.nodes:
            assert node.engine is not None
            assert node.engine.get(b"k") == b"other", f"node {node.id} applied the retry"
            assert session_record(node.engine.get(session_key(s.client_id))) == (1, first)


# -- snapshots -----------------------------------------------------------------------------------


def _source(tmp_path: Path) -> engine.Engine:
    e = engine.open(str(tmp_path / "src"))
    rng = random.Random(7)
    for i in range(3000):
        e.put(f"k{i:05d}".encode(), rng.randbytes(64))
    e.flush()
    return e


def test_a_snapshot_download_resumes_after_drops_and_after_a_server_restart(
        tmp_path: Path) -> None:
    fs = OSFileSystem()
    src = _source(tmp_path)
    try:
        store = SnapshotStore(fs, str(tmp_path / "serve"))
        info = SnapshotInfo.from_wire(store.prepare(src, 1).to_wire())
        total = sum(size for _, size, _ in info.files)
        assert total > 40_000
        served = []
        budget = [25_000]

        def flaky(name: str, offset: int, length: int) -> bytes:
            if budget[0] <= 0:
                raise ConnectionResetError("dropped")
            data = store.read(info.id, name, offset, length)
            budget[0] -= len(data)
            served.append(len(data))
            return data

        dest = str(tmp_path / "dest")
        with pytest.raises(ConnectionResetError):
            fetch_snapshot(fs, str(tmp_path / "incoming"), dest, info, flaky, 4096)
        # The server restarts: the same snapshot, same id and checksum, from disk.
        store = SnapshotStore(fs, str(tmp_path / "serve"))
        assert store.prepare(src, 1) == info
        budget[0] = 1 << 40
        index = fetch_snapshot(fs, str(tmp_path / "incoming"), dest, info, flaky, 4096)
        assert index == info.index == src.last_sequence
        assert sum(served) == total, "bytes fetched before the drop were fetched again"
        with engine.open(dest) as copy:
            assert dict(copy.scan()) == dict(src.scan())
    finally:
        src.close()


def test_a_corrupted_snapshot_file_is_not_installed(tmp_path: Path) -> None:
    fs = OSFileSystem()
    src = _source(tmp_path)
    try:
        store = SnapshotStore(fs, str(tmp_path / "serve"))
        info = store.prepare(src, 1)
        victim = max(info.files, key=lambda f: f[1])[0]

        def read(name: str, offset: int, length: int) -> bytes:
            data = store.read(info.id, name, offset, length)
            if name == victim and offset == 0:
                data = bytes([data[0] ^ 1]) + data[1:]
            return data

        dest = tmp_path / "dest"
        with pytest.raises(CorruptionError, match=victim):
            fetch_snapshot(fs, str(tmp_path / "incoming"), str(dest), info, read, 4096)
        assert not dest.exists()
        with pytest.raises(InvalidArgument, match="name"):
            store.read(info.id, "../etc/passwd", 0, 10)
        with pytest.raises(ValueError, match="checksum"):
            SnapshotInfo.from_wire({**info.to_wire(), "checksum": info.checksum ^ 1})
    finally:
        src.close()


def test_the_offline_log_replay_applies_a_retried_request_once(tmp_path: Path) -> None:
    """The history checks replay a node's log: a client's retry that landed after another
    client's write must not win there either (it did not on the replicas). The replay once
    applied every copy and reported a replica that was right as diverged."""
    from bench.nemesis.cluster import applied_log, apply_log
    from replication.consensus import LogEntry
    from replication.node_log import NodeLog

    a, b = Session(b"a" * 16, 1), Session(b"b" * 16, 1)
    nlog = NodeLog(OSFileSystem(), str(tmp_path / "log"), 0)
    nlog.append([LogEntry(1, 1, b""),
                 LogEntry(2, 1, encode_command(b"t" * 16, {b"r": b"a1"}, a)),
                 LogEntry(3, 1, encode_command(b"u" * 16, {b"r": b"b1"}, b)),
                 LogEntry(4, 2, encode_command(b"v" * 16, {b"r": b"a1"}, a))])  # a's retry
    nlog.sync()
    nlog.close()
    log = applied_log(tmp_path / "log", 0, 4)
    assert [i for i, _ in log] == [2, 3, 4] and log[2][1] == {}
    assert apply_log(log) == {b"r": b"b1"}
