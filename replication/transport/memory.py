"""MemoryNetwork: Raft messages between the nodes of one process, with seeded faults.

In the spirit of etcd's ``rafttest/network.go``: every node attaches a
handler; :meth:`MemoryNetwork.send` hands a message to the handler of its
destination -- or does not, when the destination is down, cut off by a
partition, or the seeded generator drops it. A dropped or duplicated message
is what Raft is built to tolerate; nothing here ever corrupts one.

Nodes are addressed by index ``0..N-1``; a message names Raft ids, which are
index + 1 (the core reserves 0 for "nobody").

Delivery is synchronous (the handler runs in the sender's thread and must
only queue the message) unless ``latency_s`` is set: then a delivery thread
hands each message over ``latency_s`` after it was sent, in send order.

Thread-safe: ``_lock`` guards the topology (handlers, partitions) and the
random generator; handlers are called without it.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from replication.raft.messages import Message

__all__ = ["MemoryNetwork"]

log = logging.getLogger(__name__)

Handler = Callable[[Message], None]


class MemoryNetwork:
    """A seeded in-process network between ``nodes`` endpoints."""

    def __init__(self, nodes: int, *, rng: random.Random | None = None, drop: float = 0.0,
                 dup: float = 0.0, latency_s: float = 0.0) -> None:
        for name, p in (("drop", drop), ("dup", dup)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.nodes = nodes
        self.drop = drop
        self.dup = dup
        self.latency_s = latency_s
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._handlers: dict[int, Handler] = {}
        self._side: list[int] = [0] * nodes  # partition side of each node
        self.sent = 0
        self.delivered = 0
        self._queue: list[tuple[float, int, Message]] = []  # (due, seq, message)
        self._seq = 0
        self._queue_cv = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._filter: Callable[[Message], bool] | None = None

    # -- topology ----------------------------------------------------------------------

    def attach(self, node: int, handler: Handler) -> None:
        """Deliver messages for ``node`` to ``handler`` (the node is up)."""
        with self._lock:
            self._handlers[node] = handler

    def detach(self, node: int) -> None:
        """``node`` is down: messages to it are lost."""
        with self._lock:
            self._handlers.pop(node, None)

    def purge(self, node: int) -> None:
        """Drop every message from or to ``node`` still in flight (its storage is gone)."""
        with self._lock:
            kept = [q for q in self._queue if node not in (q[2].frm - 1, q[2].to - 1)]
            heapq.heapify(kept)
            self._queue = kept

    def partition(self, nodes: Sequence[int]) -> None:
        """Cut ``nodes`` off from the others, both ways."""
        side = set(nodes)
        with self._lock:
            self._side = [1 if i in side else 0 for i in range(self.nodes)]

    def heal(self) -> None:
        with self._lock:
            self._side = [0] * self.nodes

    def reachable(self, a: int, b: int) -> bool:
        """Can a message from node ``a`` reach node ``b`` now (b up, same side)?"""
        with self._lock:
            return b in self._handlers and self._side[a] == self._side[b]

    def set_filter(self, drop: Callable[[Message], bool] | None) -> None:
        """Lose every message for which ``drop(message)`` is true (None: lose none by kind).

        etcd's rafttest "ignore" in one hook: hold back one kind of traffic
        (say, appends that carry entries) while the rest flows.
        """
        with self._lock:
            self._filter = drop

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self.latency_s = seconds

    # -- sending ------------------------------------------------------------------------

    def send(self, m: Message) -> bool:
        """Hand ``m`` to its destination (now, or after the latency); False if it is lost."""
        frm, to = m.frm - 1, m.to - 1
        with self._lock:
            self.sent += 1
            handler = self._handlers.get(to)
            if (handler is None or self._side[frm] != self._side[to]
                    or (self._filter is not None and self._filter(m))
                    or (self.drop and self._rng.random() < self.drop)):
                return False
            copies = 2 if self.dup and self._rng.random() < self.dup else 1
            if self.latency_s > 0:
                due = time.monotonic() + self.latency_s
                for _ in range(copies):
                    self._seq += 1
                    heapq.heappush(self._queue, (due, self._seq, m))
                self._start_delivery()
                self._queue_cv.notify()
                return True
            self.delivered += copies
        for _ in range(copies):
            handler(m)
        return True

    def _start_delivery(self) -> None:
        """Start the delivery thread on first use. Holds _lock."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver_loop, daemon=True,
                                            name="stratakv-memory-network")
            self._thread.start()

    def _deliver_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (
                        not self._queue or self._queue[0][0] > time.monotonic()):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._queue_cv.wait(wait)
                if self._closed:
                    return
                _, _, m = heapq.heappop(self._queue)
                to = m.to - 1
                handler = self._handlers.get(to)
                if handler is None or self._side[m.frm - 1] != self._side[to]:
                    continue  # went down or got cut off while the message was in flight
                self.delivered += 1
            try:
                handler(m)
            except Exception:  # a handler only queues; never let one stop the network
                log.exception("memory network: delivering %r failed", m)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._queue_cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
