"""MemoryNetwork's fault hooks: a kind of traffic held back, a node's messages purged."""

from __future__ import annotations

import threading
import time

from replication.raft.messages import AppendEntries, Heartbeat, LogEntry, Message
from replication.transport.memory import MemoryNetwork


def _append(frm: int, to: int, entries: tuple[LogEntry, ...]) -> AppendEntries:
    return AppendEntries(frm, to, 1, 0, 0, entries, 0)


def test_a_filter_holds_back_one_kind_of_message_and_lets_the_rest_pass() -> None:
    net = MemoryNetwork(2)
    got: list[Message] = []
    net.attach(1, got.append)
    net.set_filter(lambda m: isinstance(m, AppendEntries) and bool(m.entries))
    assert net.send(_append(1, 2, (LogEntry(1, 1, b"x"),))) is False
    assert net.send(_append(1, 2, ())) is True
    assert net.send(Heartbeat(1, 2, 1, 0)) is True
    net.set_filter(None)
    assert net.send(_append(1, 2, (LogEntry(1, 1, b"x"),))) is True
    assert [type(m).__name__ for m in got] == ["AppendEntries", "Heartbeat", "AppendEntries"]
    assert got[0].entries == () and got[2].entries  # type: ignore[union-attr]
    net.close()


def test_purge_drops_only_the_messages_of_that_node_still_in_flight() -> None:
    net = MemoryNetwork(3, latency_s=0.2)
    got: list[Message] = []
    done = threading.Event()

    def handler(m: Message) -> None:
        got.append(m)
        done.set()

    net.attach(0, handler)
    net.send(Heartbeat(2, 1, 1, 0))  # from node index 1: purged below
    net.send(Heartbeat(3, 1, 1, 0))  # from node index 2: delivered
    net.purge(1)
    assert done.wait(5.0)
    time.sleep(0.3)  # past the latency: the purged message would have arrived by now
    assert [m.frm for m in got] == [3]
    net.close()
