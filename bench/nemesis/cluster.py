"""A cluster of real node processes on 127.0.0.1: start, fault, inspect, always stop.

Used by ``python -m bench nemesis`` and by the tests (``tests/proc_cluster.py``).
Every process is started by :func:`replication.processes.start_node` and
stopped by its pid in :meth:`ProcCluster.stop` (SIGCONT first, for a
paused one; SIGTERM, then SIGKILL). Replica state and logs are read
offline, after the processes stopped, straight from their directories.

With a :class:`~bench.nemesis.proxy.Proxy`, node ``i`` listens at
``addresses[i]`` (``serve --listen``) and dials node ``j`` at the proxy's
link ``("n<i>", "n<j>")``, so every pair of nodes talks through the proxy
and its fault rules; :meth:`status` and the offline reads bypass it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import engine
from bench.nemesis.proxy import Proxy
from engine.fs import OSFileSystem
from replication.client import RemoteStore
from replication.cluster import DEFAULT_ENGINE_OPTIONS
from replication.command import decode_command
from replication.node_log import NodeLog
from replication.processes import ChildNode, free_ports, start_node, stop_nodes
from replication.sessions import INTERNAL_PREFIX, resolve_sessions
from replication.transport.tcp import Address, format_address

__all__ = ["FAST_ELECTIONS", "LIVENESS_S", "ProcCluster", "applied_log", "apply_log",
           "node_name"]

# Fast elections for tests; a CI machine is slow and loaded, so not too fast.
FAST_ELECTIONS = ("--election-timeout-ms", "400", "--heartbeat-ms", "40")
LIVENESS_S = 30.0  # a bound for "eventually": hitting it is a failure, never a timing claim

Log = list[tuple[int, dict[bytes, bytes | None]]]


def node_name(node: int) -> str:
    """The proxy's name for node ``node``."""
    return f"n{node}"


class ProcCluster:
    """``nodes`` node processes, data and logs under ``base`` (``node-<i>``, ``node-<i>.log``)."""

    def __init__(self, base: Path, nodes: int = 3, extra: Sequence[str] = (), *,
                 proxy: Proxy | None = None) -> None:
        self.base = base
        self.extra = list(FAST_ELECTIONS) + list(extra)
        self.proxy = proxy
        self.addresses: list[Address] = [("127.0.0.1", p) for p in free_ports(nodes)]
        self.dials: list[list[Address]] = [list(self.addresses) for _ in range(nodes)]
        if proxy is not None:
            for i in range(nodes):
                for j in range(nodes):
                    if i != j:
                        self.dials[i][j] = proxy.add_link(node_name(i), node_name(j),
                                                          self.addresses[j])
        self.paused: set[int] = set()
        self.children: list[ChildNode] = []
        os.makedirs(base, exist_ok=True)
        try:
            for i in range(nodes):
                self.children.append(self._start(i))
        except BaseException:
            self.stop()
            raise

    def _start(self, node: int) -> ChildNode:
        listen = self.addresses[node] if self.proxy is not None else None
        return start_node(node, self.dials[node], str(self.base), self.extra, listen=listen)

    @property
    def endpoints(self) -> str:
        return ",".join(format_address(a) for a in self.addresses)

    def client(self, timeout: float = 10.0, first: int = 0) -> RemoteStore:
        """A client whose endpoint list starts at node ``first`` (spread clients over nodes)."""
        order = self.addresses[first:] + self.addresses[:first]
        return RemoteStore(order, timeout=timeout)

    def status(self, node: int) -> dict[str, Any] | None:
        with RemoteStore([self.addresses[node]], timeout=2.0) as c:
            return c.status()[0]

    def running(self, node: int) -> bool:
        return self.children[node].process.poll() is None

    def leader(self, timeout: float = LIVENESS_S, *, exclude: int | None = None) -> int:
        """The node every running node agrees leads (waits for one)."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = set()
            for i in range(len(self.children)):
                if not self.running(i) or i in self.paused:
                    continue
                st = self.status(i)
                if st is not None and st["role"] == "leader" and i != exclude:
                    leaders.add(i)
            if len(leaders) == 1:
                return leaders.pop()
            if time.monotonic() >= deadline:
                raise AssertionError(f"no single leader within {timeout}s")
            time.sleep(0.05)

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        proc = self.children[node].process
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(LIVENESS_S)

    def pause(self, node: int) -> None:
        os.kill(self.children[node].pid, signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: int) -> None:
        os.kill(self.children[node].pid, signal.SIGCONT)
        self.paused.discard(node)

    def restart(self, node: int) -> None:
        if self.running(node):
            raise AssertionError(f"node {node} still runs")
        self.children[node] = self._start(node)

    def wait_converged(self, timeout: float = LIVENESS_S) -> None:
        """Every node has applied the leader's commit index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.status(self.leader(max(0.1, deadline - time.monotonic())))
            if lead is not None:
                target = lead["commit"]
                sts = [self.status(i) for i in range(len(self.children))]
                if all(s is not None and s["applied"] >= target for s in sts):
                    return
            time.sleep(0.1)
        raise AssertionError(f"replicas did not converge within {timeout}s")

    def stop(self) -> None:
        """Stop every process by its pid (paused ones are woken first to get SIGTERM)."""
        for i in list(self.paused):
            with contextlib.suppress(ProcessLookupError):
                self.resume(i)
        stop_nodes(self.children)
        for c in self.children:  # belt and braces: nothing outlives the caller
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait()

    # -- offline inspection (after stop) ---------------------------------------------------

    def replica_state(self, node: int) -> dict[bytes, bytes]:
        """Node ``node``'s engine contents without the session table, and ``__applied__``."""
        replica = self.base / f"node-{node}" / "replica"
        pointer = (replica / "ENGINE").read_text().strip() if (replica / "ENGINE").exists() \
            else "engine-000001"
        with engine.Engine(str(replica / pointer),
                           engine.Options(**DEFAULT_ENGINE_OPTIONS)) as e:
            applied = e.last_sequence
            state = {k: v for k, v in e.scan() if not k.startswith(INTERNAL_PREFIX)}
        state[b"__applied__"] = str(applied).encode()
        return state

    def committed_log(self, node: int, upto: int) -> Log:
        """Node ``node``'s log entries 1..``upto`` as applied (see :func:`applied_log`)."""
        return applied_log(self.base / f"node-{node}" / "log", node, upto)


def applied_log(log_dir: Path, node: int, upto: int) -> Log:
    """The log entries 1..``upto`` in ``log_dir`` as a replica applies them: no-ops left out,
    a repeat of a client session's request empty (replication.sessions: a client's retry
    after a lost answer is in the log twice but applies once), and the session table's own
    keys left out (replica_state leaves them out too)."""
    nlog = NodeLog(OSFileSystem(), str(log_dir), node)
    try:
        if nlog.base_index:
            raise ValueError(f"node {node}'s log was compacted up to {nlog.base_index}: it "
                             f"no longer tells the whole state")
        entries = nlog.read(1, upto)
    finally:
        nlog.close()
    commands = [(e.index, decode_command(e.payload, index=e.index))
                for e in entries if e.payload]
    return [(index, {k: v for k, v in batch.ops.items() if not k.startswith(INTERNAL_PREFIX)})
            for index, batch in resolve_sessions(commands, lambda _: None)]


def apply_log(log: Log) -> dict[bytes, bytes]:
    """The state a replica holds after applying ``log`` to an empty store."""
    state: dict[bytes, bytes] = {}
    for _, ops in log:
        for k, v in ops.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
    return state
