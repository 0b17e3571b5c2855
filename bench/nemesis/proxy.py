"""A fault-injecting TCP proxy for loopback clusters: cut, delay and drop whole wire frames.

Owns its listeners, the connections through them and one asyncio event
loop in a daemon thread; knows the wire format only as far as the frame
header (magic ``SKVW``, payload length at offset 8: ``replication.transport.wire``).

Vocabulary: an *endpoint* is a name (``"n0"`` for node 0, ``"c2"`` for
client process 2). A *link* ``(src, dst)`` is one listener: whatever
``src`` dials there is forwarded to ``dst``'s real address. A *flow*
``(frm, to)`` is the bytes that endpoint ``frm`` sends to ``to``, on any
link between them -- forward on link ``(frm, to)`` and backward (answers)
on link ``(to, frm)``. Faults are rules on flows, so "``to`` hears nothing
from ``frm``" is one rule whichever side dialed::

    src --dial--> [listener of link (src, dst)] --dial--> dst
         flow (src, dst) ------------------------------>
         <------------------------------ flow (dst, src)

Invariants:

1. Only loopback addresses are listened on or dialed (``ValueError``
   otherwise): this tool must never become a proxy for anything else.
2. A framed stream (one that starts with ``SKVW``) is cut only at frame
   boundaries: a rule drops whole frames, so what gets through is still a
   valid stream and the receiver's decoder never sees half a frame. A
   stream that is not framed is dropped in whole read chunks.
3. The first frame of each direction (a connection's hello) is never
   dropped on its own: if a rule would drop it, the connection is closed
   instead, so a dialer never sees a connection that silently lost its
   hello and then carries data.
4. Order is kept: a delayed flow delays every frame by the delay in force
   when it arrived, and nothing overtakes anything on one connection.
5. Memory is bounded: a direction whose receiver does not read (a paused
   process) stops being read past ``max_buffer_bytes``.

Thread-safety: every public method may be called from any thread; rules
are immutable values swapped in whole, and socket work runs on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from replication.transport.wire import DEFAULT_MAX_PAYLOAD_BYTES, HEADER_SIZE, MAGIC

__all__ = ["FlowRule", "FlowStats", "FrameSplitter", "Proxy"]

log = logging.getLogger(__name__)

Address = tuple[str, int]
Flow = tuple[str, str]
T = TypeVar("T")
_READ_BYTES = 64 * 1024
_LENGTH = struct.Struct("<I")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class FlowRule:
    """What happens to the frames of one flow: ``blocked`` (all dropped), ``delay_s`` added
    to each, ``drop`` the probability that one is dropped."""

    blocked: bool = False
    delay_s: float = 0.0
    drop: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop <= 1.0:
            raise ValueError(f"drop must be a probability, got {self.drop!r}")
        if self.delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")


@dataclass(slots=True)
class FlowStats:
    """Counters of one flow since the proxy started."""

    frames: int = 0
    dropped: int = 0
    bytes: int = 0
    closed: int = 0  # connections closed because a rule hit their hello


class FrameSplitter:
    """Cuts one direction of a stream into whole frames (pure; invariant 2).

    Undecided until 4 bytes arrived; then framed (``SKVW``) or raw for
    good. A framed stream that loses sync or announces a payload over the
    cap turns raw, so the receiver sees exactly the bad bytes and refuses
    them itself.
    """

    def __init__(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_payload_bytes
        self.raw: bool | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The whole units (frames, or raw chunks) completed by ``data``, in order."""
        buf = self._buf
        buf += data
        if self.raw is None and len(buf) >= len(MAGIC):
            self.raw = bytes(buf[:len(MAGIC)]) != MAGIC
        out: list[bytes] = []
        while not self.raw and len(buf) >= HEADER_SIZE:
            length = _LENGTH.unpack_from(buf, 8)[0]
            if bytes(buf[:len(MAGIC)]) != MAGIC or length > self._max:
                self.raw = True
                break
            total = HEADER_SIZE + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        if self.raw and buf:
            out.append(bytes(buf))
            buf.clear()
        return out


@dataclass
class _Link:
    src: str
    dst: str
    target: Address
    server: asyncio.Server | None = None
    address: Address = ("127.0.0.1", 0)
    conns: set[_Conn] = field(default_factory=set)


@dataclass(eq=False)
class _Conn:
    """One proxied connection: both sockets' streams."""

    link: _Link
    down: asyncio.StreamWriter  # to the dialer
    up: asyncio.StreamWriter | None = None  # to the target

    def close(self) -> None:
        for w in (self.down, self.up):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()  # at once, like a dead process: no lingering data


class Proxy:
    """Listeners on 127.0.0.1 for links between named endpoints, with per-flow fault rules.

    ``seed`` drives the frame drops. ``max_buffer_bytes`` bounds what one
    direction of one connection holds for a receiver that does not read.
    """

    def __init__(self, *, seed: int = 0, host: str = "127.0.0.1",
                 max_buffer_bytes: int = 8 << 20) -> None:
        if not _loopback(host):
            raise ValueError(f"the proxy listens on loopback only, not {host!r}")
        self.host = host
        self.max_buffer_bytes = max_buffer_bytes
        self._rng = random.Random(seed)
        self._rules: dict[Flow, FlowRule] = {}
        self._stats: dict[Flow, FlowStats] = {}
        self._links: dict[Flow, _Link] = {}
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="stratakv-nemesis-proxy")
        self._thread.start()

    # -- links ---------------------------------------------------------------------------

    def add_link(self, src: str, dst: str, target: Address) -> Address:
        """Listen for what ``src`` dials to reach ``dst`` at ``target``; the listen address."""
        if not _loopback(target[0]):
            raise ValueError(f"the proxy dials loopback only, not {target[0]!r}")
        if (src, dst) in self._links:
            raise ValueError(f"link {src}->{dst} exists")
        link = _Link(src, dst, target)
        self._links[(src, dst)] = link
        return self._run(self._listen(link))

    async def _listen(self, link: _Link) -> Address:
        link.server = await asyncio.start_server(
            lambda r, w: self._serve(link, r, w), self.host, 0, reuse_address=True)
        sock = link.server.sockets[0]
        link.address = sock.getsockname()[:2]
        return link.address

    def address(self, src: str, dst: str) -> Address:
        """Where ``src`` dials to reach ``dst``."""
        return self._links[(src, dst)].address

    def set_target(self, src: str, dst: str, target: Address) -> None:
        """Forward link ``(src, dst)``'s new connections to ``target`` from now on."""
        if not _loopback(target[0]):
            raise ValueError(f"the proxy dials loopback only, not {target[0]!r}")
        self._links[(src, dst)].target = target

    # -- rules ---------------------------------------------------------------------------

    def rule(self, frm: str, to: str) -> FlowRule:
        return self._rules.get((frm, to), FlowRule())

    def set_rule(self, frm: str, to: str, rule: FlowRule) -> None:
        """Apply ``rule`` to flow ``(frm, to)`` (a default FlowRule clears it)."""
        if rule == FlowRule():
            self._rules.pop((frm, to), None)
        else:
            self._rules[(frm, to)] = rule

    def block(self, frm: str, to: str) -> None:
        """``to`` hears nothing from ``frm`` (one way)."""
        self.set_rule(frm, to, replace(self.rule(frm, to), blocked=True))

    def cut(self, a: str, b: str) -> None:
        """Neither of ``a`` and ``b`` hears the other."""
        self.block(a, b)
        self.block(b, a)

    def delay(self, frm: str, to: str, seconds: float) -> None:
        self.set_rule(frm, to, replace(self.rule(frm, to), delay_s=seconds))

    def drop(self, frm: str, to: str, fraction: float) -> None:
        self.set_rule(frm, to, replace(self.rule(frm, to), drop=fraction))

    def heal(self, flows: Iterable[Flow] | None = None) -> None:
        """Clear the rules of ``flows`` (default: every rule)."""
        for flow in list(self._rules) if flows is None else list(flows):
            self._rules.pop(flow, None)

    def sever(self, endpoint: str | None = None) -> int:
        """Close (abort) every open connection touching ``endpoint`` (default: all); how many."""
        def pick() -> int:
            n = 0
            for link in self._links.values():
                if endpoint is None or endpoint in (link.src, link.dst):
                    for conn in list(link.conns):
                        conn.close()
                        n += 1
            return n
        return self._call(pick)

    def stats(self) -> dict[Flow, FlowStats]:
        """A copy of every flow's counters."""
        return self._call(lambda: {f: replace(s) for f, s in self._stats.items()})

    # -- forwarding ------------------------------------------------------------------------

    async def _serve(self, link: _Link, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        conn = _Conn(link, writer)
        link.conns.add(conn)
        try:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*link.target), 2.0)
            except (OSError, TimeoutError):
                return  # the target is down: the dialer sees its connection end
            conn.up = up_w
            with contextlib.suppress(OSError):
                up_w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                         socket.TCP_NODELAY, 1)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                           socket.TCP_NODELAY, 1)
            await asyncio.gather(self._pump(conn, reader, up_w, (link.src, link.dst)),
                                 self._pump(conn, up_r, writer, (link.dst, link.src)))
        finally:
            conn.close()
            link.conns.discard(conn)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, flow: Flow) -> None:
        """Forward one direction, frame by frame, under the flow's rule (invariants 2-5)."""
        loop = asyncio.get_running_loop()
        stats = self._stats.setdefault(flow, FlowStats())
        splitter = FrameSplitter()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        queued = 0
        first = True

        async def send() -> None:
            nonlocal queued
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                queued -= len(data)
                if queued <= self.max_buffer_bytes:
                    room.set()

        sender = asyncio.ensure_future(send())
        try:
            while not sender.done():
                data = await reader.read(_READ_BYTES)
                if not data:
                    break
                for unit in splitter.feed(data):
                    rule = self._rules.get(flow)
                    lost = rule is not None and (rule.blocked or (
                        rule.drop > 0 and self._rng.random() < rule.drop))
                    if lost and first:
                        stats.closed += 1
                        conn.close()  # invariant 3
                        return
                    first = False
                    if lost:
                        stats.dropped += 1
                        continue
                    stats.frames += 1
                    stats.bytes += len(unit)
                    delay = rule.delay_s if rule is not None else 0.0
                    queue.put_nowait((loop.time() + delay, unit))
                    queued += len(unit)
                    if queued > self.max_buffer_bytes:
                        room.clear()
                await room.wait()
            queue.put_nowait(None)
            await sender
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            conn.close()
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender

    # -- plumbing ------------------------------------------------------------------------

    def _run(self, coro: Coroutine[object, object, T]) -> T:
        if self._closed:
            coro.close()
            raise ValueError("the proxy is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10.0)

    def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the loop thread (where the connections live)."""
        async def run() -> T:
            return fn()
        return self._run(run())

    def close(self) -> None:
        """Stop listening, abort every connection, stop the loop thread."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            for link in self._links.values():
                if link.server is not None:
                    link.server.close()
                for conn in list(link.conns):
                    conn.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
