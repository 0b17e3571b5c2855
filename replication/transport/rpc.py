"""RpcConnection: one client connection to a node -- hello, then request/response calls.

The dialing half of the client protocol (:mod:`replication.protocol`);
the node's half is :class:`replication.server.NodeServer`. Used by the
network client (:mod:`replication.client`), by the CLI, and by a node
fetching a snapshot from its leader.

A call is synchronous: one request, then its response. A connection whose
call failed in transit (a timeout, a reset, a bad frame) is closed, since
its stream may hold a late answer to the abandoned request: the caller
dials again. Not thread-safe: one caller at a time (a pool hands
connections out).
"""

from __future__ import annotations

import socket
from typing import Any

from replication.protocol import decode_value, encode_value, raise_error
from replication.transport.wire import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    FrameDecoder,
    FrameType,
    Hello,
    Role,
    WireError,
    encode_frame,
    hello_frame,
)

__all__ = ["ConnectionLost", "RpcConnection"]

Address = tuple[str, int]
_RECV_BYTES = 256 * 1024


class ConnectionLost(OSError):
    """The connection failed before the answer arrived: the request may or may not have run."""


class RpcConnection:
    """A client connection to the node at ``address`` of cluster ``cluster_id``."""

    def __init__(self, address: Address, cluster_id: bytes, *, connect_timeout_s: float = 1.0,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        """Connect and say hello; OSError if the node cannot be reached."""
        self.address = address
        self._max = max_payload_bytes
        self._decoder = FrameDecoder(max_payload_bytes=max_payload_bytes)
        self._next_id = 1
        self._sock: socket.socket | None = socket.create_connection(
            address, timeout=connect_timeout_s)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.sendall(hello_frame(Hello(Role.CLIENT, 0, 0, cluster_id)))
        except OSError:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._sock is None

    def call(self, op: str, args: dict[str, Any], timeout_s: float) -> Any:
        """Run ``op`` on the node; its result, or the error it answered raised as the store
        would raise it. ConnectionLost (and the connection closed) if no answer came
        within ``timeout_s`` seconds or the connection failed."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"connection to {self.address} is closed")
        rid = self._next_id
        self._next_id += 1
        try:
            sock.settimeout(max(timeout_s, 0.001))
            sock.sendall(encode_frame(FrameType.CLIENT_REQUEST, encode_value([rid, op, args]),
                                      max_payload_bytes=self._max))
            while True:
                data = sock.recv(_RECV_BYTES)
                if not data:
                    raise ConnectionLost(f"{self.address[0]}:{self.address[1]} closed the "
                                         f"connection")
                frames = self._decoder.feed(data)
                if frames:
                    break
        except (OSError, WireError) as exc:
            self.close()
            if isinstance(exc, ConnectionLost):
                raise
            raise ConnectionLost(f"call {op} to {self.address[0]}:{self.address[1]} failed: "
                                 f"{exc}") from exc
        except BaseException:  # e.g. KeyboardInterrupt mid-call: the stream is out of step
            self.close()
            raise
        if len(frames) != 1 or frames[0].type is not FrameType.CLIENT_RESPONSE:
            self.close()
            raise ConnectionLost(f"unexpected frames from {self.address}: "
                                 f"{[f.type.name for f in frames]}")
        try:
            answer = decode_value(frames[0].payload)
        except WireError as exc:
            self.close()
            raise ConnectionLost(f"bad response from {self.address}: {exc}") from exc
        if (not isinstance(answer, list) or len(answer) != 3 or answer[0] != rid
                or not isinstance(answer[1], str)):
            self.close()
            raise ConnectionLost(f"response from {self.address} does not answer request {rid}")
        _, status, result = answer
        if status != "ok":
            raise_error(status, result)
        return result

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> RpcConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
