"""TcpTransport: one node's Raft messages to and from its peers over TCP, in wire.py frames.

Owns one node's sockets and the threads that serve them; knows nothing of
Raft beyond the message types (the driver decides what to send and what a
delivered message means). It has MemoryNetwork's shape -- ``attach(node,
handler)``, ``detach(node)``, ``send(m) -> bool`` -- so a driver can run
over either; ``node`` is the index 0..N-1 and messages name Raft ids =
index + 1, as there.

::

    send(m) --> peer queue (bounded) --> sender thread --> socket --> peer's reader
                                      (connect, hello, batch,         (hello check,
                                       backoff, reconnect)             decode, handler)
    listener thread: accept --> one reader thread per inbound connection

Connections are one-way: a node writes its messages to peer p on the one
connection it dialed to p, and reads p's messages from the connection p
dialed to it. So no connection is ever shared by two writers, and a peer
restart only costs the connections it had.

Invariants:

1. ``send`` never blocks on the network: it appends to the peer's queue or,
   when that is full (``max_queue_messages`` or ``max_queue_bytes``), drops
   the message and counts it. Raft tolerates loss (it retransmits from its
   progress state); it does not tolerate a leader stalled behind a slow peer.
2. Messages queued for a peer that cannot be reached are dropped (and
   counted) at the failed attempt, so a peer that comes back is not flooded
   with stale messages; so are the messages of a batch whose write failed.
3. A connection that sends anything but a valid hello followed by valid
   RAFT frames from the peer it named is closed, logged at WARNING and
   counted (``bad_connections``); the transport goes on serving every other
   connection. A hello with role CLIENT hands the connection to
   ``on_client`` (if given; else it is refused) in its reader thread, with
   the frames that came with the hello; whatever ``on_client`` raises as a
   ``WireError`` closes the connection the same way. A frame cut off by the
   end of the stream is what a sender killed mid-write leaves (a torn tail,
   not corruption): its bytes are dropped and the disconnection logged like
   any other.
4. The handler is called in a reader thread, outside every lock of this
   module, for messages addressed to this node only; like MemoryNetwork's
   handlers it must only queue the message.
5. ``close()`` returns after every thread of the transport has ended and
   every socket is closed.

Thread-safety: ``send``, ``attach``, ``detach``, ``set_peer``, ``stats`` and
``close`` may be called from any thread. ``_lock`` guards the registries
(inbound connections, threads, ``_closed``); each peer's ``_Peer.cv`` (its
own lock) guards that peer's queue, socket and counters. ``_lock`` is never
taken while holding a peer's lock.
"""

from __future__ import annotations

import logging
import random
import select
import selectors
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from replication.raft.messages import (
    AppendEntries,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
)
from replication.transport.wire import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    Role,
    WireError,
    decode_hello,
    decode_message,
    hello_frame,
    message_frame,
)

__all__ = ["Address", "ClientHandler", "TcpTransport", "TransportStats", "format_address",
           "parse_address"]

log = logging.getLogger(__name__)

Address = tuple[str, int]
Handler = Callable[[Message], None]
# A client connection, handed over after its hello: the socket, the client's
# address, the frames that arrived with the hello, and the decoder holding any
# partial frame after them. The handler owns the connection until it returns
# (the transport then closes the socket); it runs in the connection's reader thread.
ClientHandler = Callable[[socket.socket, Address, list[Frame], FrameDecoder], None]

_RECV_BYTES = 256 * 1024
_CLIENT = -1  # _on_frame's answer for a client's hello: hand the connection over


def parse_address(text: str) -> Address:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) as (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a HOST:PORT address: {text!r}")
    return host.strip("[]"), int(port)


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _message_bytes(m: Message) -> int:
    """The payload bytes ``m`` carries, for the queue's byte bound (fixed fields not counted)."""
    if isinstance(m, AppendEntries):
        return sum(len(e.payload) for e in m.entries)
    if isinstance(m, InstallSnapshot):
        return len(m.snapshot.data)
    if isinstance(m, Heartbeat | HeartbeatResponse):
        return len(m.context)
    return 0


@dataclass
class TransportStats:
    """Counters of one transport since it started (a snapshot; see :meth:`TcpTransport.stats`).

    ``sent``: messages written to a socket (not necessarily received).
    ``dropped``: messages given to ``send`` that were not written: queue full,
    peer unreachable, failed write, too large to frame; ``dropped_queue_full``
    is the first kind alone. ``delivered``: messages received and handed to
    the handler. ``bad_connections``: inbound connections closed for a bad
    frame or a wrong hello. ``connects``: outbound connections established.
    ``connected_to``/``connected_from``: the peers with an open outbound
    connection, and those whose hello'd stream to us is open (sorted).
    """

    sent: int = 0
    dropped: int = 0
    dropped_queue_full: int = 0
    delivered: int = 0
    bad_connections: int = 0
    connects: int = 0
    dropped_by_peer: dict[int, int] = field(default_factory=dict)
    connected_to: list[int] = field(default_factory=list)
    connected_from: list[int] = field(default_factory=list)


class _Peer:
    """One destination: its queue, its sender thread's socket, its counters. Lock: ``cv``."""

    def __init__(self, index: int, address: Address) -> None:
        self.index = index
        self.address = address
        self.cv = threading.Condition(threading.Lock())
        self.queue: deque[Message] = deque()
        self.queued_bytes = 0
        self.sock: socket.socket | None = None
        self.address_changed = False
        self.sent = 0
        self.dropped = 0
        self.dropped_queue_full = 0
        self.connects = 0
        self.thread: threading.Thread | None = None


class TcpTransport:
    """Node ``node``'s end of a TCP network between the nodes of cluster ``cluster_id``.

    ``listen``: where to accept peers (port 0 picks a free port; see
    :attr:`address`); an address in use raises ``OSError`` here. ``peers``:
    index -> address of the other nodes (more can be given later with
    :meth:`set_peer`). Threads start at once; the listener is bound before
    the constructor returns.

    Bounds: ``max_queue_messages`` and ``max_queue_bytes`` (entry, snapshot
    and context bytes) per peer queue; ``max_batch_bytes`` per write (at
    least one message); ``max_payload_bytes`` per frame, both ways.
    Timeouts: ``connect_timeout_s`` per dial, ``write_timeout_s`` per write
    to a peer that stopped reading (then reconnect), ``hello_timeout_s`` for
    an inbound connection to say hello. Reconnection waits a delay drawn
    from [d/2, d], d doubling from ``backoff_initial_s`` to
    ``backoff_max_s`` and reset by a successful connect, so peers restarted
    together do not redial in lockstep.
    """

    def __init__(self, node: int, *, cluster_id: bytes, listen: Address,
                 peers: Mapping[int, Address] | None = None,
                 max_queue_messages: int = 1024, max_queue_bytes: int = 64 << 20,
                 max_batch_bytes: int = 1 << 20,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 connect_timeout_s: float = 1.0, write_timeout_s: float = 5.0,
                 hello_timeout_s: float = 5.0,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0,
                 rng: random.Random | None = None,
                 on_client: ClientHandler | None = None) -> None:
        if node < 0:
            raise ValueError(f"node index must be >= 0, got {node}")
        if max_queue_messages < 1 or max_queue_bytes < 1 or max_batch_bytes < 1:
            raise ValueError("queue and batch bounds must be positive")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        for index in peers or {}:  # before any thread starts
            if index == node or index < 0:
                raise ValueError(f"node {node} cannot have node {index} as a peer")
        self.node = node
        self.raft_id = node + 1
        self.cluster_id = cluster_id
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_payload_bytes = max_payload_bytes
        self.connect_timeout_s = connect_timeout_s
        self.write_timeout_s = write_timeout_s
        self.hello_timeout_s = hello_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._handler: Handler | None = None
        self._on_client = on_client
        self._lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()
        self._peers: dict[int, _Peer] = {}
        self._inbound: dict[socket.socket, int | None] = {}  # socket -> peer index once hello'd
        self._readers: set[threading.Thread] = set()
        self._delivered = 0
        self._bad_connections = 0
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self._listener = socket.create_server(listen, family=family)  # SO_REUSEADDR: restarts
        self.address: Address = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        log.info("node %d listening on %s", node, format_address(self.address))
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"stratakv-tcp-{node}-accept")
        self._acceptor.start()
        for index, address in (peers or {}).items():
            self.set_peer(index, address)

    # -- the MemoryNetwork shape -------------------------------------------------------

    def attach(self, node: int, handler: Handler) -> None:
        """Deliver the messages received for ``node`` (this transport's own) to ``handler``."""
        self._check_own(node)
        self._handler = handler

    def detach(self, node: int) -> None:
        """Stop delivering: messages received from now on are discarded."""
        self._check_own(node)
        self._handler = None

    def _check_own(self, node: int) -> None:
        if node != self.node:
            raise ValueError(f"this transport serves node {self.node}, not node {node}")

    def send(self, m: Message) -> bool:
        """Queue ``m`` for its destination; False if it is dropped (queue full, unknown, closed)."""
        peer = self._peers.get(m.to - 1)
        if peer is None or self._closed:
            return False
        size = _message_bytes(m)
        with peer.cv:
            if peer.queue and (len(peer.queue) >= self.max_queue_messages
                               or peer.queued_bytes + size > self.max_queue_bytes):
                peer.dropped += 1
                peer.dropped_queue_full += 1
                return False
            peer.queue.append(m)
            peer.queued_bytes += size
            peer.cv.notify()
        return True

    # -- peers -------------------------------------------------------------------------

    def set_peer(self, node: int, address: Address) -> None:
        """Send to ``node`` at ``address`` from now on (reconnecting if it moved)."""
        if node == self.node or node < 0:
            raise ValueError(f"node {self.node} cannot have node {node} as a peer")
        with self._lock:
            if self._closed:
                raise ValueError("transport is closed")
            peer = self._peers.get(node)
            if peer is None:
                peer = _Peer(node, address)
                peer.thread = threading.Thread(target=self._send_loop, args=(peer,),
                                               daemon=True,
                                               name=f"stratakv-tcp-{self.node}-to-{node}")
                self._peers[node] = peer
                peer.thread.start()
                return
        with peer.cv:
            if peer.address != address:
                peer.address = address
                peer.address_changed = True
                if peer.sock is not None:
                    _shutdown(peer.sock)
                peer.cv.notify()

    # -- sending -----------------------------------------------------------------------

    def _backoff(self, delay_s: float) -> float:
        """Wait a jittered ``delay_s`` (unless closing); return the next, doubled delay."""
        with self._rng_lock:
            jittered = delay_s * (0.5 + 0.5 * self._rng.random())
        self._closing.wait(jittered)
        return min(delay_s * 2, self.backoff_max_s)

    def _connect(self, peer: _Peer, quiet: bool) -> socket.socket | None:
        """Dial ``peer`` and say hello; None (queue dropped) if it cannot be reached."""
        with peer.cv:
            address = peer.address
            peer.address_changed = False
        try:
            sock = socket.create_connection(address, timeout=self.connect_timeout_s)
        except OSError as exc:
            (log.debug if quiet else log.info)(
                "node %d: cannot reach peer %d at %s: %s (retrying with backoff)",
                self.node, peer.index, format_address(address), exc)
            with peer.cv:
                peer.dropped += len(peer.queue)
                peer.queue.clear()
                peer.queued_bytes = 0
            return None
        try:
            sock.settimeout(self.write_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.sendall(hello_frame(Hello(Role.PEER, self.raft_id, peer.index + 1,
                                           self.cluster_id)))
        except OSError as exc:
            log.info("node %d: connection to peer %d at %s failed at hello: %s",
                     self.node, peer.index, format_address(address), exc)
            sock.close()
            return None
        with peer.cv:
            if self._closed:
                sock.close()
                return None
            peer.sock = sock
            peer.connects += 1
        log.info("node %d: connected to peer %d at %s", self.node, peer.index,
                 format_address(address))
        return sock

    def _take_batch(self, peer: _Peer) -> list[Message] | None:
        """Wait for queued messages and take up to ``max_batch_bytes`` of them; None: closing."""
        with peer.cv:
            while not peer.queue and not self._closed and not peer.address_changed:
                peer.cv.wait()
            if self._closed:
                return None
            batch: list[Message] = []
            size = 0
            while peer.queue and (not batch or size < self.max_batch_bytes):
                m = peer.queue.popleft()
                b = _message_bytes(m)
                peer.queued_bytes -= b
                size += b
                batch.append(m)
            return batch

    def _frames(self, peer: _Peer, batch: list[Message]) -> bytes:
        frames = []
        for m in batch:
            try:
                frames.append(message_frame(m, max_payload_bytes=self.max_payload_bytes))
            except ValueError as exc:  # a Raft config larger than the frame cap: a bug
                log.error("node %d: dropping a message to peer %d: %s", self.node,
                          peer.index, exc)
                with peer.cv:
                    peer.dropped += 1
        return b"".join(frames)

    def _send_loop(self, peer: _Peer) -> None:
        delay = self.backoff_initial_s
        failures = 0
        sock: socket.socket | None = None
        while not self._closing.is_set():
            if sock is None:
                sock = self._connect(peer, quiet=failures > 0)
                if sock is None:
                    failures += 1
                    delay = self._backoff(delay)
                    continue
                failures = 0
                delay = self.backoff_initial_s
            batch = self._take_batch(peer)
            if batch is None:
                break
            data = self._frames(peer, batch)
            try:
                if peer.address_changed:
                    raise ConnectionError("peer address changed")
                if _closed_by_peer(sock):
                    raise ConnectionError("closed by peer")
                sock.sendall(data)
            except OSError as exc:
                if not self._closing.is_set():
                    log.info("node %d: lost connection to peer %d at %s: %s", self.node,
                             peer.index, format_address(peer.address), exc)
                with peer.cv:
                    peer.dropped += len(batch)
                    peer.sock = None
                sock.close()
                sock = None
                continue
            with peer.cv:
                peer.sent += len(batch)
        if sock is not None:
            with peer.cv:
                peer.sock = None
            sock.close()

    # -- receiving ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        sock, addr = self._listener.accept()
                    except OSError as exc:  # e.g. out of file descriptors: retry shortly
                        log.warning("node %d: accept failed: %s", self.node, exc)
                        self._closing.wait(0.1)
                        continue
                    self._start_reader(sock, (addr[0], addr[1]))
        finally:
            sel.close()

    def _start_reader(self, sock: socket.socket, addr: Address) -> None:
        reader = threading.Thread(target=self._read_loop, args=(sock, addr), daemon=True,
                                  name=f"stratakv-tcp-{self.node}-from-{format_address(addr)}")
        with self._lock:
            if self._closed:
                sock.close()
                return
            self._inbound[sock] = None
            self._readers.add(reader)
        reader.start()

    def _check_hello(self, hello: Hello) -> int | None:
        """The peer index a valid peer hello names, None for a client; WireError if this
        node must refuse it."""
        if hello.cluster_id != self.cluster_id:
            raise WireError(f"hello from cluster {hello.cluster_id!r}, this node is in "
                            f"cluster {self.cluster_id!r}")
        if hello.role is Role.CLIENT:
            if self._on_client is None:
                raise WireError("hello as CLIENT: this transport serves peers only")
            if hello.target not in (0, self.raft_id):
                raise WireError(f"client hello meant for node {hello.target - 1}, this is "
                                f"node {self.node}")
            return None
        if hello.role is not Role.PEER:
            raise WireError(f"hello as {hello.role.name}: this transport serves peers only")
        if hello.target != self.raft_id:
            raise WireError(f"hello meant for node {hello.target - 1}, this is node "
                            f"{self.node} (check the peer list)")
        index = hello.sender - 1
        if index == self.node:
            raise WireError(f"hello from node {index}, which is this node")
        return index

    def _on_frame(self, sock: socket.socket, addr: Address, peer: int | None,
                  frame_type: FrameType, payload: bytes) -> int | None:
        """Handle one checked frame of an inbound connection; the peer it is from."""
        if peer is None:
            if frame_type is not FrameType.HELLO:
                raise WireError(f"first frame is {frame_type.name}, not HELLO")
            peer = self._check_hello(decode_hello(payload))
            sock.settimeout(None)
            if peer is None:
                return _CLIENT
            self._register_inbound(sock, addr, peer)
            return peer
        if frame_type is not FrameType.RAFT:
            raise WireError(f"{frame_type.name} frame on a peer connection")
        m = decode_message(payload)
        if m.frm != peer + 1 or m.to != self.raft_id:
            raise WireError(f"message from node {m.frm - 1} to node {m.to - 1} on the "
                            f"connection of peer {peer} to node {self.node}")
        handler = self._handler
        if handler is None:
            return peer
        try:
            handler(m)
        except Exception:  # a handler only queues; never let one kill the connection
            log.exception("node %d: handling %r failed", self.node, m)
        with self._lock:
            self._delivered += 1
        return peer

    def _register_inbound(self, sock: socket.socket, addr: Address, peer: int) -> None:
        """Record that ``sock`` is ``peer``'s stream; an older one from it is closed."""
        with self._lock:
            older = [s for s, p in self._inbound.items() if p == peer and s is not sock]
            for s in older:
                self._inbound[s] = None  # no longer the peer's stream, even before it ends
            self._inbound[sock] = peer
        for s in older:  # the peer reconnected: its old stream is dead or half-open
            _shutdown(s)
        log.info("node %d: peer %d connected from %s", self.node, peer, format_address(addr))

    def _read_loop(self, sock: socket.socket, addr: Address) -> None:
        decoder = FrameDecoder(max_payload_bytes=self.max_payload_bytes)
        peer: int | None = None
        reason = "closed by peer"
        try:
            sock.settimeout(self.hello_timeout_s)
            while True:
                data = sock.recv(_RECV_BYTES)
                if not data:
                    if decoder.buffered_bytes:  # a torn tail: the sender died mid-write
                        reason = f"closed mid-frame, {decoder.buffered_bytes} bytes dropped"
                    break
                frames = decoder.feed(data)
                rest: list[Frame] | None = None
                for i, frame in enumerate(frames):
                    peer = self._on_frame(sock, addr, peer, frame.type, frame.payload)
                    if peer == _CLIENT:
                        rest = frames[i + 1:]
                        break
                if rest is not None:
                    assert self._on_client is not None
                    peer = None  # not a peer: no (dis)connection lines for it here
                    self._on_client(sock, addr, rest, decoder)
                    reason = "client done"
                    break
        except WireError as exc:  # logged before counted: whoever sees the count sees the line
            reason = f"bad frame: {exc}"
            log.warning("node %d: closing connection from %s (peer %s): %s", self.node,
                        format_address(addr), "unknown" if peer is None else peer, exc)
            with self._lock:
                self._bad_connections += 1
        except TimeoutError:
            reason = "no hello in time"
            log.warning("node %d: closing connection from %s: no hello within %.1f s",
                        self.node, format_address(addr), self.hello_timeout_s)
            with self._lock:
                self._bad_connections += 1
        except OSError as exc:
            reason = str(exc)
        finally:
            sock.close()
            with self._lock:
                self._inbound.pop(sock, None)
                self._readers.discard(threading.current_thread())
            if peer is not None and not self._closing.is_set():
                log.info("node %d: peer %d disconnected (%s)", self.node, peer, reason)

    # -- the rest ----------------------------------------------------------------------

    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        out = TransportStats()
        for peer in list(self._peers.values()):
            with peer.cv:
                out.sent += peer.sent
                out.dropped += peer.dropped
                out.dropped_queue_full += peer.dropped_queue_full
                out.connects += peer.connects
                out.dropped_by_peer[peer.index] = peer.dropped
                if peer.sock is not None:
                    out.connected_to.append(peer.index)
        out.connected_to.sort()
        with self._lock:
            out.delivered = self._delivered
            out.bad_connections = self._bad_connections
            out.connected_from = sorted(p for p in self._inbound.values() if p is not None)
        return out

    def threads(self) -> list[threading.Thread]:
        """The live threads of this transport (for tests: all gone after close)."""
        with self._lock:
            threads = [self._acceptor, *self._readers]
            threads += [p.thread for p in self._peers.values() if p.thread is not None]
        return [t for t in threads if t.is_alive()]

    def close(self) -> None:
        """Stop: close every socket and join every thread. Queued messages are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            peers = list(self._peers.values())
        self._closing.set()
        self._wake_w.send(b"x")
        self._acceptor.join()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        for peer in peers:
            with peer.cv:
                peer.cv.notify_all()
                if peer.sock is not None:
                    _shutdown(peer.sock)
        with self._lock:
            inbound = list(self._inbound)
            readers = list(self._readers)
        for sock in inbound:
            _shutdown(sock)
        for t in readers:
            t.join()
        for peer in peers:
            if peer.thread is not None:
                peer.thread.join()
        log.info("node %d: transport closed", self.node)

    def __enter__(self) -> TcpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Has the peer closed this outbound connection (it never writes on it, so any data means
    EOF or an error)? Checked before each write: the first write after a peer restarted would
    otherwise vanish into the dead connection's send buffer, and only the next one fail."""
    poller = select.poll()  # not select(): file descriptors above 1023 are normal in a server
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False  # nothing to read: still open
    try:  # readable without blocking, whatever the socket's timeout
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True  # reset


def _shutdown(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock`` (its owner closes it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
