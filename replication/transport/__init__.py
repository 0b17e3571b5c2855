"""Transports that carry Raft messages between nodes.

``memory`` (all nodes in one process, seeded faults) and ``tcp`` (one node
per process; frames of ``wire``). Both have the shape of :class:`Transport`,
which is what a driver should be typed against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from replication.raft.messages import Message

__all__ = ["Transport"]


class Transport(Protocol):
    """What a Raft driver needs from a network: deliver to a handler, send without blocking.

    ``node`` is an index 0..N-1; messages name Raft ids (index + 1). A handler
    is called from a transport thread and must only queue the message. ``send``
    returns False when the message is certainly lost (destination unknown or
    down, queue full); True means handed on, not delivered -- Raft tolerates
    loss either way.
    """

    def attach(self, node: int, handler: Callable[[Message], None]) -> None: ...

    def detach(self, node: int) -> None: ...

    def send(self, m: Message) -> bool: ...
