"""TcpTransport over 127.0.0.1: delivery, reconnection, bad connections, drops, clean close.

Every transport listens on an ephemeral loopback port and is closed by the
fixture even when a test fails; every wait is bounded (``wait_for``), and no
test sleeps for a fixed time.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from engine.encoding import crc, mask_crc
from replication.consensus import LogEntry
from replication.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    Message,
    RequestVote,
    TimeoutNow,
)
from replication.transport import Transport
from replication.transport.memory import MemoryNetwork
from replication.transport.tcp import TcpTransport, format_address, parse_address
from replication.transport.wire import (
    FrameType,
    Hello,
    Role,
    encode_frame,
    hello_frame,
    message_frame,
)

LOOPBACK = ("127.0.0.1", 0)
CLUSTER = b"test-cluster"
TIMEOUT_S = 10.0

Factory = Callable[..., TcpTransport]


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


class Inbox:
    """A handler that records what it is given, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[Message] = []

    def __call__(self, m: Message) -> None:
        with self._lock:
            self.messages.append(m)

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)


def holds(inbox: Inbox, n: int) -> Callable[[], bool]:
    return lambda: len(inbox) == n


@pytest.fixture
def make() -> Iterator[Factory]:
    """Start transports on ephemeral loopback ports; close them all at the end."""
    made: list[TcpTransport] = []

    def factory(node: int, **kwargs: object) -> TcpTransport:
        kwargs.setdefault("listen", LOOPBACK)
        kwargs.setdefault("cluster_id", CLUSTER)
        kwargs.setdefault("backoff_initial_s", 0.01)
        kwargs.setdefault("backoff_max_s", 0.1)
        t = TcpTransport(node, **kwargs)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield factory
    for t in made:
        t.close()


def mesh(make: Factory, n: int) -> tuple[list[TcpTransport], list[Inbox]]:
    """``n`` transports that know each other, each with an Inbox attached."""
    nodes = [make(i) for i in range(n)]
    inboxes = [Inbox() for _ in range(n)]
    for i, t in enumerate(nodes):
        t.attach(i, inboxes[i])
        for j, other in enumerate(nodes):
            if i != j:
                t.set_peer(j, other.address)
    return nodes, inboxes


def send_until(t: TcpTransport, inbox: Inbox, make_message: Callable[[int], Message],
               what: str) -> None:
    """Keep sending (as Raft keeps retransmitting) until ``inbox`` got a message."""
    i = 0
    deadline = time.monotonic() + TIMEOUT_S
    while not len(inbox):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        t.send(make_message(i))
        i += 1
        time.sleep(0.01)


def raw_connect(t: TcpTransport) -> socket.socket:
    sock = socket.create_connection(t.address, timeout=TIMEOUT_S)
    sock.settimeout(TIMEOUT_S)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes the connection (EOF or reset): True if it did in time."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    finally:
        sock.close()
    return True


# -- delivery ------------------------------------------------------------------------


def test_two_transports_deliver_every_message_in_order(make: Factory,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="replication.transport.tcp")
    (a, b), (_, inbox_b) = mesh(make, 2)
    sent: list[Message] = [
        AppendEntries(1, 2, 3, 4, 2, (LogEntry(5, 3, b"x" * 5000), LogEntry(6, 3, b"")), 5),
        AppendEntriesResponse(1, 2, 3, 6, reject=True, reject_hint=2, log_term=1),
        RequestVote(1, 2, 4, 6, 3, pre_vote=True),
        TimeoutNow(1, 2, 4),
    ]
    sent += [Heartbeat(1, 2, 5, i, context=str(i).encode()) for i in range(1000)]  # < queue bound
    for m in sent:
        assert a.send(m)
    wait_for(lambda: len(inbox_b) == len(sent), "all messages at b")
    assert inbox_b.snapshot() == sent
    wait_for(lambda: a.stats().sent == len(sent), "the sender's count")  # counted after write
    assert b.stats().delivered == len(sent)
    assert a.stats().dropped == 0
    assert a.stats().connected_to == [1]
    wait_for(lambda: b.stats().connected_from == [0], "b sees a's stream")
    text = caplog.text
    assert f"node 0 listening on {format_address(a.address)}" in text
    assert f"node 0: connected to peer 1 at {format_address(b.address)}" in text
    wait_for(lambda: "node 1: peer 0 connected from" in caplog.text, "inbound log line")


def test_three_transports_deliver_between_every_pair(make: Factory) -> None:
    nodes, inboxes = mesh(make, 3)
    for i, t in enumerate(nodes):
        for j in range(3):
            if i != j:
                assert t.send(Heartbeat(i + 1, j + 1, 1, 10 * i + j))
    for j, inbox in enumerate(inboxes):
        wait_for(holds(inbox, 2), f"two messages at node {j}")
        assert sorted(m.frm for m in inbox.snapshot()) == [i + 1 for i in range(3) if i != j]
        assert all(m.to == j + 1 for m in inbox.snapshot())


def test_send_to_unknown_peer_or_after_close_is_false(make: Factory) -> None:
    a = make(0)
    assert not a.send(Heartbeat(1, 5, 1, 0))
    a.close()
    assert not a.send(Heartbeat(1, 5, 1, 0))
    a.close()  # idempotent


def test_attach_is_for_the_own_node_only(make: Factory) -> None:
    a = make(0)
    with pytest.raises(ValueError, match="serves node 0, not node 1"):
        a.attach(1, Inbox())
    with pytest.raises(ValueError):
        a.set_peer(0, a.address)
    before = threading.active_count()
    with pytest.raises(ValueError, match="cannot have node 1 as a peer"):
        TcpTransport(1, cluster_id=CLUSTER, listen=LOOPBACK, peers={1: a.address})
    assert threading.active_count() == before  # refused before any thread started
    with pytest.raises(OSError):
        TcpTransport(1, cluster_id=CLUSTER, listen=a.address)  # a's port is taken


def test_detached_node_discards_and_handler_errors_do_not_kill_the_stream(
        make: Factory) -> None:
    (a, b), (_, inbox_b) = mesh(make, 2)
    b.detach(1)
    assert a.send(Heartbeat(1, 2, 1, 0))
    wait_for(lambda: a.stats().sent == 1, "first message written")
    calls = []

    def flaky(m: Message) -> None:
        calls.append(m)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        inbox_b(m)

    b.attach(1, flaky)
    send_until(a, inbox_b, lambda i: Heartbeat(1, 2, 2, i), "delivery after a handler error")
    assert b.stats().bad_connections == 0


# -- reconnection --------------------------------------------------------------------


def test_restarted_peer_is_reconnected(make: Factory) -> None:
    (a, b), (_, inbox_b) = mesh(make, 2)
    assert a.send(Heartbeat(1, 2, 1, 0))
    wait_for(lambda: len(inbox_b) == 1, "first delivery")
    port = b.address
    b.close()
    b2 = make(1, listen=port)  # same address, as a restarted process would use
    inbox_b2 = Inbox()
    b2.attach(1, inbox_b2)
    send_until(a, inbox_b2, lambda i: Heartbeat(1, 2, 2, i), "delivery to the restarted peer")
    assert a.stats().connects >= 2
    assert all(m.term == 2 for m in inbox_b2.snapshot())


def test_peer_started_late_is_reached_and_moved_peer_followed(make: Factory) -> None:
    a = make(0)
    placeholder = socket.create_server(LOOPBACK)  # reserve a port nobody serves yet
    late_port = placeholder.getsockname()
    placeholder.close()
    a.set_peer(1, late_port)
    assert a.send(Heartbeat(1, 2, 1, 0))  # queued, then dropped while unreachable
    wait_for(lambda: a.stats().dropped >= 1, "drop while unreachable")
    b = make(1)  # on another port: the peer "moved"
    inbox_b = Inbox()
    b.attach(1, inbox_b)
    a.set_peer(1, b.address)
    send_until(a, inbox_b, lambda i: Heartbeat(1, 2, 1, i), "delivery at the new address")


# -- bad connections -----------------------------------------------------------------

PEER_HELLO = hello_frame(Hello(Role.PEER, 2, 1, CLUSTER))  # node 1 to node 0


def _bad_payload_crc() -> bytes:
    frame = bytearray(message_frame(Heartbeat(2, 1, 1, 0)))
    frame[-1] ^= 0xFF
    return PEER_HELLO + bytes(frame)


def _bad_message() -> bytes:
    payload = struct.pack("<BIIQ", 99, 2, 1, 1)
    return PEER_HELLO + encode_frame(FrameType.RAFT, payload)


def _oversized_header() -> bytes:
    head = struct.pack("<4sBBHII", b"SKVW", 1, FrameType.RAFT, 0, 2**31, 0)
    return head + struct.pack("<I", mask_crc(crc(head)))


BAD_STREAMS = {
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "raft before hello": message_frame(Heartbeat(2, 1, 1, 0)),
    "other cluster": hello_frame(Hello(Role.PEER, 2, 1, b"other")),
    "hello for another node": hello_frame(Hello(Role.PEER, 2, 3, CLUSTER)),
    "hello from itself": hello_frame(Hello(Role.PEER, 1, 1, CLUSTER)),
    "client hello": hello_frame(Hello(Role.CLIENT, 0, 0, CLUSTER)),
    "payload checksum": _bad_payload_crc(),
    "unknown message tag": _bad_message(),
    "spoofed sender": PEER_HELLO + message_frame(Heartbeat(3, 1, 1, 0)),
    "oversized length": _oversized_header(),
    "reserved frame type": PEER_HELLO + encode_frame(FrameType.CLIENT_REQUEST, b"x"),
}


@pytest.mark.parametrize("stream", list(BAD_STREAMS.values()), ids=list(BAD_STREAMS))
def test_bad_connection_is_closed_and_transport_keeps_working(
        make: Factory, stream: bytes, caplog: pytest.LogCaptureFixture) -> None:
    (a, b), (inbox_a, _) = mesh(make, 2)
    # b's own stream first, so that a bad hello naming peer 1 replaces it, not the reverse
    wait_for(lambda: a.stats().connected_from == [1], "b's stream to a")
    sock = raw_connect(a)
    sock.sendall(stream)
    assert closed_by_server(sock), "the transport kept a bad connection open"
    assert a.stats().bad_connections == 1
    assert "closing connection from" in caplog.text
    assert inbox_a.snapshot() == []  # nothing from the bad connection was delivered
    # The bad hellos that name peer 1 replaced b's own stream (the newest stream of a
    # peer wins), so b may lose a message and reconnect, as after any disconnection.
    send_until(b, inbox_a, lambda i: Heartbeat(2, 1, 7, i), "delivery from the real peer")
    assert {m.term for m in inbox_a.snapshot()} == {7}


def test_frame_torn_by_end_of_stream_is_dropped_like_a_disconnection(
        make: Factory, caplog: pytest.LogCaptureFixture) -> None:
    """A peer killed mid-write: the whole frames arrive, the torn one is dropped, no alarm."""
    caplog.set_level(logging.INFO, logger="replication.transport.tcp")
    a = make(0)
    inbox = Inbox()
    a.attach(0, inbox)
    sock = raw_connect(a)
    sock.sendall(PEER_HELLO + message_frame(Heartbeat(2, 1, 1, 0))
                 + message_frame(Heartbeat(2, 1, 2, 0))[:-3])
    sock.shutdown(socket.SHUT_WR)
    assert closed_by_server(sock)
    wait_for(lambda: "closed mid-frame, 46 bytes dropped" in caplog.text, "disconnection line")
    assert [m.term for m in inbox.snapshot()] == [1]
    assert a.stats().bad_connections == 0


def test_silent_connection_is_closed_after_the_hello_timeout(make: Factory) -> None:
    a = make(0, hello_timeout_s=0.2)
    sock = raw_connect(a)
    assert closed_by_server(sock)
    assert a.stats().bad_connections == 1


def test_reconnecting_peer_replaces_its_old_inbound_stream(make: Factory) -> None:
    a = make(0)
    inbox = Inbox()
    a.attach(0, inbox)
    old = raw_connect(a)
    old.sendall(PEER_HELLO)
    wait_for(lambda: a.stats().connected_from == [1], "the first stream registered")
    new = raw_connect(a)
    new.sendall(PEER_HELLO + message_frame(Heartbeat(2, 1, 3, 0)))
    assert closed_by_server(old), "the stale stream of the same peer was kept"
    wait_for(lambda: len(inbox) == 1, "delivery on the new stream")
    assert a.stats().connected_from == [1]
    new.close()
    assert a.stats().bad_connections == 0


# -- drops and close -----------------------------------------------------------------


def test_full_queue_drops_and_counts_without_blocking(make: Factory) -> None:
    """A peer that accepts but never reads: the kernel buffers fill, then the queue, then drops."""
    stalled = socket.create_server(LOOPBACK)  # never accept()ed: the backlog holds the connection
    try:
        a = make(0, max_queue_messages=4, write_timeout_s=30.0)
        a.set_peer(1, stalled.getsockname())
        big = b"x" * (1 << 20)
        results = []
        slowest = 0.0
        for i in range(64):
            start = time.monotonic()
            results.append(a.send(AppendEntries(1, 2, 1, i, 1, (LogEntry(i + 1, 1, big),), 0)))
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 0.5, "send() blocked on the network"
        stats = a.stats()
        assert stats.dropped_queue_full == results.count(False) > 0
        assert stats.dropped_by_peer[1] >= stats.dropped_queue_full
        start = time.monotonic()
        a.close()  # its sender is blocked in a write to the stalled peer
        assert time.monotonic() - start < 5.0
        assert a.threads() == []
    finally:
        stalled.close()


def test_close_joins_every_thread(make: Factory) -> None:
    nodes, inboxes = mesh(make, 3)
    for t in nodes:
        for j in range(3):
            if j != t.node:
                t.send(Heartbeat(t.raft_id, j + 1, 1, 0))
    for inbox in inboxes:
        wait_for(holds(inbox, 2), "deliveries")
    unreachable = make(3, peers={0: ("127.0.0.1", 1)})  # retries with backoff until closed
    raw = raw_connect(nodes[0])  # an inbound connection still waiting for its hello
    before = {t.name for t in threading.enumerate() if t.name.startswith("stratakv-tcp-")}
    assert len(before) >= 3 * (1 + 2 + 2) + 2  # listener, 2 senders, 2 readers per node
    start = time.monotonic()
    for t in [*nodes, unreachable]:
        t.close()
        assert t.threads() == []
    assert time.monotonic() - start < 5.0
    left = [t.name for t in threading.enumerate() if t.name.startswith("stratakv-tcp-")]
    assert left == []
    assert closed_by_server(raw)


def test_both_transports_have_the_transport_shape(make: Factory) -> None:
    """Checked by mypy (the assignments) and at run time (the attributes)."""
    memory: Transport = MemoryNetwork(2)
    tcp: Transport = make(0)
    for t in (memory, tcp):
        assert callable(t.attach) and callable(t.detach) and callable(t.send)


def test_parse_and_format_address() -> None:
    assert parse_address("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_address("[::1]:7001") == ("::1", 7001)
    assert format_address(("::1", 7001)) == "[::1]:7001"
    for bad in ("7001", "host:", ":7001", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


# -- Raft over TCP ------------------------------------------------------------------


def test_raft_over_tcp_elects_commits_and_survives_a_restart(make: Factory,
                                                               tmp_path: Path) -> None:
    """Three RaftConsensus drivers, unchanged, over TcpTransport instead of MemoryNetwork.

    The groundwork of a node process: the handler contract is the memory
    network's, and a node whose process "restarts" (driver and transport
    closed, then reopened on the same port and log) catches up.
    """
    from engine.fs import OSFileSystem
    from replication.driver import RaftConsensus
    from replication.raft.node import RaftConfig

    fs = OSFileSystem()
    config = RaftConfig(election_timeout_ticks=10, heartbeat_ticks=2)
    transports = [make(i) for i in range(3)]
    for t in transports:
        for other in transports:
            if other is not t:
                t.set_peer(other.node, other.address)

    def open_node(i: int) -> RaftConsensus:
        return RaftConsensus(i, 3, fs, str(tmp_path / f"node-{i}"),
                             cast(Any, transports[i]), config=config,
                             rng=random.Random(i), tick_s=0.01)

    nodes = [open_node(i) for i in range(3)]
    try:
        def leader() -> RaftConsensus | None:
            ready = [n for n in nodes if n.leader_ready()]
            return ready[0] if len(ready) == 1 else None

        wait_for(leader, "a leader over TCP")
        first = leader()
        assert first is not None and first.propose(b"one")
        wait_for(lambda: all(n.get_committed_transactions() == [b"one"] for n in nodes),
                 "'one' everywhere")

        down = next(n.id for n in nodes if n is not first)  # restart a follower
        nodes[down].close()
        transports[down].close()
        assert first.propose(b"two")  # a quorum of two remains
        transports[down] = make(down, listen=transports[down].address)
        for other in transports:
            if other.node != down:
                transports[down].set_peer(other.node, other.address)
        nodes[down] = open_node(down)
        wait_for(lambda: nodes[down].get_committed_transactions() == [b"one", b"two"],
                 "the restarted node to catch up")
        assert all(t.stats().bad_connections == 0 for t in transports)
    finally:
        for n in nodes:
            n.close()


def test_loopback_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench transport`` (the threads vs asyncio measurement), tiny."""
    from bench.transport import main

    assert main(["--messages", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for variant in ("threads", "asyncio-thread", "asyncio-loop", "rtt"):
        assert variant in out
