"""The node process and the local launcher: ``python -m replication serve`` and ``... up``.

``serve`` runs one :class:`~replication.server.NodeServer` until SIGTERM or
SIGINT (then it stops cleanly: requests in flight answered, files closed),
or until the node stops itself on a failure (exit status 1).

``up`` starts N ``serve`` processes on 127.0.0.1 with their data in
``DIR/node-<i>`` and their logs in ``DIR/node-<i>.log``, waits until one
leads, prints one line per node (id, pid, address) and one
``endpoints=...`` line, and stops them all on SIGINT/SIGTERM. Children never
outlive it: each asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``, Linux), and ``up`` kills stragglers by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidArgument
from replication.client import RemoteStore
from replication.server import NodeServer, ServerOptions
from replication.transport.tcp import Address, format_address, parse_address

__all__ = ["ChildNode", "die_with_parent", "parse_peers", "serve", "start_nodes", "stop_nodes",
           "up", "wait_for_leader"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def parse_peers(text: str) -> list[Address]:
    """``0=H:P,1=H:P,...`` as the address of each node id; InvalidArgument if malformed."""
    found: dict[int, Address] = {}
    for item in text.split(","):
        ident, sep, addr = item.strip().partition("=")
        if not sep or not ident.isdigit():
            raise InvalidArgument(f"bad peer {item!r}: expected ID=HOST:PORT")
        try:
            found[int(ident)] = parse_address(addr)
        except ValueError as exc:
            raise InvalidArgument(f"bad peer {item!r}: {exc}") from None
    if sorted(found) != list(range(len(found))):
        raise InvalidArgument(f"peer ids must be 0..N-1, got {sorted(found)}")
    return [found[i] for i in range(len(found))]


def serve(node_id: int, peers: Sequence[Address], data_dir: str, *, cluster: str,
          options: ServerOptions, listen: Address | None = None) -> int:
    """Run a node until a signal (exit status 0) or a failure (1); ``listen``: see NodeServer."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("node %d: %s received, stopping", node_id, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = NodeServer(node_id, peers, data_dir, cluster=cluster, options=options,
                        listen=listen)
    server.on_failure = stop.set
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.close()
    return 1 if server.failed is not None else 0


# -- the launcher ------------------------------------------------------------------------


@dataclass
class ChildNode:
    """A node process started by :func:`start_nodes`."""

    id: int
    address: Address
    data_dir: str
    process: subprocess.Popen[bytes]
    reported: bool = False  # its exit was printed (by up)

    @property
    def pid(self) -> int:
        return self.process.pid


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (free now; a race is possible but rare)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_command(node_id: int, addresses: Sequence[Address], data_dir: str,
                  extra: Sequence[str] = (), listen: Address | None = None) -> list[str]:
    peers = ",".join(f"{i}={format_address(a)}" for i, a in enumerate(addresses))
    where = [] if listen is None else ["--listen", format_address(listen)]
    return [sys.executable, "-m", "replication", "serve", "--id", str(node_id), "--peers",
            peers, "--data", data_dir, *where, *extra]


def start_node(node_id: int, addresses: Sequence[Address], base_dir: str,
               extra: Sequence[str] = (), listen: Address | None = None) -> ChildNode:
    """Start ``serve`` for node ``node_id`` with data in ``base_dir/node-<id>``.

    ``listen``: where it listens, if not at ``addresses[node_id]`` (then
    ``addresses`` is where it dials its peers, e.g. through a proxy).
    """
    data_dir = os.path.join(base_dir, f"node-{node_id}")
    logfile = open(os.path.join(base_dir, f"node-{node_id}.log"), "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen(serve_command(node_id, addresses, data_dir, extra, listen),
                                stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                                preexec_fn=die_with_parent)
    finally:
        logfile.close()
    return ChildNode(node_id, listen or addresses[node_id], data_dir, proc)


def start_nodes(n: int, base_dir: str, *, port: int | None = None,
                extra: Sequence[str] = ()) -> list[ChildNode]:
    """Start ``n`` node processes on 127.0.0.1 (ports ``port``.. or free ones)."""
    os.makedirs(base_dir, exist_ok=True)
    ports = list(range(port, port + n)) if port is not None else free_ports(n)
    addresses = [("127.0.0.1", p) for p in ports]
    children: list[ChildNode] = []
    try:
        for i in range(n):
            children.append(start_node(i, addresses, base_dir, extra))
    except BaseException:
        stop_nodes(children)
        raise
    return children


def wait_for_leader(addresses: Sequence[Address], timeout: float, *,
                    cluster: str = "stratakv") -> int | None:
    """The id of a node that says it leads, within ``timeout`` seconds (None if none)."""
    deadline = time.monotonic() + timeout
    with RemoteStore(addresses, timeout=1.0, cluster=cluster) as client:
        while time.monotonic() < deadline:
            for st in client.status():
                if st is not None and st["role"] == "leader":
                    return int(st["id"])
            time.sleep(0.1)
    return None


def stop_nodes(children: Sequence[ChildNode], *, timeout: float = 10.0) -> None:
    """SIGTERM every child, wait up to ``timeout`` seconds, then SIGKILL the rest."""
    for c in children:
        if c.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for c in children:
        try:
            c.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("node %d (pid %d) did not stop in %.0fs: killing it", c.id, c.pid,
                        timeout)
            c.process.kill()
            c.process.wait()


def up(n: int, base_dir: str, *, port: int | None = None, extra: Sequence[str] = (),
       out: Any = None) -> int:
    """Run an ``n``-node local cluster until SIGINT/SIGTERM; exit status."""
    out = out or sys.stdout
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children = start_nodes(n, base_dir, port=port, extra=extra)
    try:
        addresses = [c.address for c in children]
        leader = wait_for_leader(addresses, 30.0)
        if leader is None:
            sys.stderr.write(f"error: no leader within 30s; see the node-<i>.log files in "
                             f"{base_dir}\n")
            return 1
        for c in children:
            out.write(f"node {c.id} pid {c.pid} address {format_address(c.address)}"
                      f"{' (leader)' if c.id == leader else ''}\n")
        out.write("endpoints=" + ",".join(format_address(a) for a in addresses) + "\n")
        out.flush()
        while not stop.wait(0.5):
            for c in children:
                code = c.process.poll()
                if code is not None and not c.reported:
                    c.reported = True
                    sys.stderr.write(f"node {c.id} (pid {c.pid}) exited with status {code}\n")
        return 0
    finally:
        stop_nodes(children)
