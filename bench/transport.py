"""``python -m bench transport``: Raft messages per second over loopback, threads vs asyncio.

The measurement behind the choice of threads for ``replication.transport.tcp``
(docs/ARCHITECTURE.md, "The TCP transport"). Each workload sends ``--messages``
messages from node 0 to node 1 over 127.0.0.1 and times first send to last
delivery; the median of ``--repeats`` runs is printed.

* ``threads``: :class:`TcpTransport` as the driver uses it -- ``send`` from
  the caller's thread, a sender thread per peer, a reader thread per
  connection, the handler called in the reader.
* ``asyncio-thread``: the same frames and batching in an asyncio event loop
  on its own thread; the caller hands each message over with
  ``call_soon_threadsafe``, as the thread-based driver would have to.
* ``asyncio-loop``: the same, producing inside the loop (the best case for
  asyncio: a driver rewritten as coroutines).

Workloads: ``heartbeat`` (a 49-byte frame) and ``append`` (AppendEntries of
16 entries of 256 bytes, about 4.6 KiB a frame). Senders that find a queue
full yield and retry, so nothing is dropped and the figure is throughput,
not loss. Also printed: the round trip of one heartbeat and its response
(``rtt``, threads only), the median over ``--messages // 20`` pings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterable

from replication.consensus import LogEntry
from replication.raft.messages import AppendEntries, Heartbeat, HeartbeatResponse, Message
from replication.transport.tcp import TcpTransport
from replication.transport.wire import (
    FrameDecoder,
    FrameType,
    Hello,
    Role,
    decode_message,
    hello_frame,
    message_frame,
)

CLUSTER = b"bench"
LOOPBACK = ("127.0.0.1", 0)


def make_message(workload: str, i: int) -> Message:
    if workload == "heartbeat":
        return Heartbeat(1, 2, 1, i)
    entries = tuple(LogEntry(16 * i + k + 1, 1, bytes(256)) for k in range(16))
    return AppendEntries(1, 2, 1, 16 * i, 1, entries, 16 * i)


class Counter:
    """Counts deliveries; ``done`` is set at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = threading.Event()

    def __call__(self, m: Message) -> None:
        self.count += 1  # one reader thread: no lock needed
        if self.count >= self.target:
            self.done.set()


def run_threads(workload: str, n: int) -> float:
    a = TcpTransport(0, cluster_id=CLUSTER, listen=LOOPBACK, max_queue_messages=4096)
    b = TcpTransport(1, cluster_id=CLUSTER, listen=LOOPBACK)
    try:
        a.set_peer(1, b.address)
        counter = Counter(n)
        b.attach(1, counter)
        msgs = [make_message(workload, i) for i in range(n)]
        while b.stats().connected_from != [0]:  # time the messages, not the connecting
            time.sleep(0.001)
        start = time.perf_counter()
        for m in msgs:
            while not a.send(m):
                time.sleep(0)  # queue full: let the sender run
        if not counter.done.wait(120):
            raise RuntimeError(f"only {counter.count} of {n} delivered")
        return n / (time.perf_counter() - start)
    finally:
        a.close()
        b.close()


def run_rtt(pings: int) -> float:
    """Median seconds of Heartbeat -> HeartbeatResponse between two transports."""
    a = TcpTransport(0, cluster_id=CLUSTER, listen=LOOPBACK)
    b = TcpTransport(1, cluster_id=CLUSTER, listen=LOOPBACK)
    try:
        a.set_peer(1, b.address)
        b.set_peer(0, a.address)
        got = threading.Event()

        def pong(m: Message) -> None:
            b.send(HeartbeatResponse(2, 1, m.term, b""))

        b.attach(1, pong)
        a.attach(0, lambda m: got.set())
        times = []
        for i in range(pings + 20):  # the first ones also pay for connecting
            got.clear()
            start = time.perf_counter()
            a.send(Heartbeat(1, 2, i, 0))
            if not got.wait(10):
                raise RuntimeError("ping lost")
            if i >= 20:
                times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        a.close()
        b.close()


class _AsyncLink:
    """node 0 -> node 1 over asyncio streams, with TcpTransport's framing and batching."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=4096)
        self.served = asyncio.Event()
        self.done_serving = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.served.set()
        decoder = FrameDecoder()
        while data := await reader.read(256 * 1024):
            for frame in decoder.feed(data):
                if frame.type is FrameType.RAFT:
                    self.counter(decode_message(frame.payload))
        writer.close()
        self.done_serving.set()

    async def send_loop(self, port: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello_frame(Hello(Role.PEER, 1, 2, CLUSTER)))
        try:
            while True:
                batch = [await self.queue.get()]
                while not self.queue.empty() and len(batch) < 1024:
                    batch.append(self.queue.get_nowait())
                writer.write(b"".join(map(message_frame, batch)))
                await writer.drain()
        finally:  # cancelled at the end of a run: EOF lets serve() finish
            writer.close()


def run_asyncio(workload: str, n: int, producer_in_loop: bool) -> float:
    counter = Counter(n)
    msgs = [make_message(workload, i) for i in range(n)]
    loop = asyncio.new_event_loop()
    link = _AsyncLink(counter)
    ready = threading.Event()
    elapsed: list[float] = []

    async def main() -> None:
        server = await asyncio.start_server(link.serve, *LOOPBACK)
        port = server.sockets[0].getsockname()[1]
        sender = asyncio.ensure_future(link.send_loop(port))
        await link.served.wait()  # time the messages, not the connecting
        if producer_in_loop:
            start = time.perf_counter()
            for m in msgs:
                await link.queue.put(m)  # waits while the queue is full
        else:
            ready.set()
        while not counter.done.is_set():
            await asyncio.sleep(0.0005)
        if producer_in_loop:
            elapsed.append(time.perf_counter() - start)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await link.done_serving.wait()
        server.close()
        await server.wait_closed()

    if producer_in_loop:
        loop.run_until_complete(main())
        loop.close()
        return n / elapsed[0]
    link.queue = asyncio.Queue()  # filled from this thread; bounded by the window below
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    ready.wait()
    start = time.perf_counter()
    for i, m in enumerate(msgs):
        while i - counter.count >= 4096:  # the same bound as the other variants' queues
            time.sleep(0)
        loop.call_soon_threadsafe(link.queue.put_nowait, m)
    if not counter.done.wait(120):
        raise RuntimeError(f"only {counter.count} of {n} delivered")
    result = n / (time.perf_counter() - start)
    thread.join()
    loop.close()
    return result


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench transport", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.messages
    print(f"loopback, {n} messages node 0 -> node 1, median of {args.repeats} runs")
    print(f"{'workload':<10} {'variant':<15} {'msgs/s':>10}")
    for workload in ("heartbeat", "append"):
        variants: dict[str, Callable[[str, int], float]] = {
            "threads": run_threads,
            "asyncio-thread": lambda w, k: run_asyncio(w, k, producer_in_loop=False),
            "asyncio-loop": lambda w, k: run_asyncio(w, k, producer_in_loop=True),
        }
        for name, fn in variants.items():
            rate = statistics.median(fn(workload, n) for _ in range(args.repeats))
            print(f"{workload:<10} {name:<15} {rate:>10,.0f}")
    print(f"rtt        threads         {run_rtt(max(20, n // 20)) * 1e6:>8,.0f} us")
    return 0
