"""The nemesis proxy (bench/nemesis/proxy.py): frames through, cut, delayed, dropped, healed.

A small threaded echo server stands for a node: it decodes what arrives
with the real FrameDecoder (so a stream the proxy cut mid-frame would fail
here) and answers each frame with the same frame. Everything runs on
127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bench.nemesis.proxy import FlowRule, FrameSplitter, Proxy
from replication.transport.wire import (
    FrameDecoder,
    FrameType,
    Hello,
    Role,
    WireError,
    encode_frame,
    hello_frame,
)

HELLO = hello_frame(Hello(Role.CLIENT, 0, 0, b"test"))


def frame(i: int) -> bytes:
    return encode_frame(FrameType.CLIENT_REQUEST, f"frame-{i}".encode() * 3)


class EchoServer:
    """Decodes frames (errors recorded) and echoes each one back."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.received: list[bytes] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        decoder = FrameDecoder()
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    frames = decoder.feed(data)
                except WireError as exc:
                    with self.lock:
                        self.errors.append(str(exc))
                    return
                for f in frames:
                    with self.lock:
                        self.received.append(f.payload)
                    sock.sendall(encode_frame(f.type, f.payload))

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        except OSError:
            pass
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy(seed=7)
    yield p
    p.close()


def dial(proxy: Proxy, echo: EchoServer) -> socket.socket:
    address = proxy.add_link("a", "b", echo.address)
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(HELLO)
    return sock


def read_frames(sock: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    """Up to ``n`` echoed frames (fewer if none come for a while, or the stream ends)."""
    decoder = FrameDecoder()
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        out += [f.payload for f in decoder.feed(data)]
    return out


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- the pure splitter ------------------------------------------------------------------------


def test_splitter_yields_whole_frames_whatever_the_chunking() -> None:
    stream = HELLO + b"".join(frame(i) for i in range(20))
    for step in (1, 3, 19, 20, 21, 1000):
        s = FrameSplitter()
        units: list[bytes] = []
        for at in range(0, len(stream), step):
            units += s.feed(stream[at:at + step])
        assert b"".join(units) == stream and len(units) == 21 and s.raw is False
        assert s.buffered_bytes == 0


def test_splitter_passes_unframed_or_oversized_streams_through_raw() -> None:
    s = FrameSplitter()
    assert s.feed(b"GE") == [] and s.feed(b"T / HTTP/1.1\r\n") == [b"GET / HTTP/1.1\r\n"]
    assert s.raw is True
    big = bytearray(frame(0))
    big[8:12] = (1 << 30).to_bytes(4, "little")
    s = FrameSplitter(max_payload_bytes=1 << 20)
    assert s.feed(HELLO + bytes(big)) == [HELLO, bytes(big)] and s.raw is True


def test_only_loopback_is_listened_on_or_dialed() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Proxy(host="0.0.0.0")
    with Proxy() as p, pytest.raises(ValueError, match="loopback"):
        p.add_link("a", "b", ("10.1.2.3", 80))
    with pytest.raises(ValueError, match="probability"):
        FlowRule(drop=1.5)


# -- through sockets ---------------------------------------------------------------------------


def test_frames_pass_both_ways(proxy: Proxy, echo: EchoServer) -> None:
    with dial(proxy, echo) as sock:
        sock.sendall(b"".join(frame(i) for i in range(50)))
        got = read_frames(sock, 51)
    assert len(got) == 51 and got[1:] == [frame(i)[20:] for i in range(50)]
    stats = proxy.stats()
    assert stats[("a", "b")].frames == 51 and stats[("b", "a")].frames == 51
    assert not echo.errors


def test_a_one_way_cut_drops_whole_frames_and_heal_restores_the_stream(
        proxy: Proxy, echo: EchoServer) -> None:
    with dial(proxy, echo) as sock:
        sock.sendall(frame(0))
        assert len(read_frames(sock, 2)) == 2
        proxy.block("b", "a")  # a hears nothing from b; b still hears a
        sock.sendall(frame(1) + frame(2))
        wait_for(lambda: echo.count() == 4)
        assert read_frames(sock, 1, timeout=0.5) == []
        proxy.heal()
        sock.sendall(frame(3))
        assert read_frames(sock, 1) == [frame(3)[20:]]
        proxy.block("a", "b")  # now the other way
        sock.sendall(frame(4))
        time.sleep(0.3)
        assert echo.count() == 5
        proxy.heal([("a", "b")])
        sock.sendall(frame(5))
        assert read_frames(sock, 1) == [frame(5)[20:]]
    assert not echo.errors, echo.errors  # the receiver never saw half a frame
    assert proxy.stats()[("b", "a")].dropped == 2


def test_a_seeded_drop_fraction_loses_some_frames_and_never_corrupts(
        proxy: Proxy, echo: EchoServer) -> None:
    with dial(proxy, echo) as sock:
        assert len(read_frames(sock, 1)) == 1
        proxy.drop("a", "b", 0.5)
        for i in range(200):
            sock.sendall(frame(i))
        wait_for(lambda: proxy.stats()[("a", "b")].frames + proxy.stats()[("a", "b")].dropped
                 == 201)
        got = echo.count() - 1
    assert 60 < got < 140, got
    assert not echo.errors


def test_a_delay_holds_frames_back_in_order(proxy: Proxy, echo: EchoServer) -> None:
    with dial(proxy, echo) as sock:
        assert len(read_frames(sock, 1)) == 1
        proxy.delay("a", "b", 0.3)
        start = time.monotonic()
        sock.sendall(frame(1) + frame(2))
        got = read_frames(sock, 2)
        elapsed = time.monotonic() - start
    assert got == [frame(1)[20:], frame(2)[20:]]
    assert elapsed >= 0.3


def test_a_rule_that_hits_the_hello_closes_the_connection(proxy: Proxy,
                                                          echo: EchoServer) -> None:
    address = proxy.add_link("a", "b", echo.address)
    proxy.block("a", "b")
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(HELLO + frame(1))
        sock.settimeout(5)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    assert proxy.stats()[("a", "b")].closed == 1 and echo.count() == 0


def test_sever_closes_open_connections_and_a_dead_target_ends_new_ones(
        proxy: Proxy, echo: EchoServer) -> None:
    with dial(proxy, echo) as sock:
        assert len(read_frames(sock, 1)) == 1
        assert proxy.sever("b") == 1
        sock.settimeout(5)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    echo.close()
    with socket.create_connection(proxy.address("a", "b"), timeout=5) as sock:
        sock.settimeout(5)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
