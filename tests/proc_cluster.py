"""A cluster of real node processes on 127.0.0.1 for tests: start, fault, inspect, always stop.

Every process is started by :func:`replication.processes.start_node` and
stopped by its pid in :meth:`ProcCluster.stop` (SIGCONT first, for a
paused one; SIGTERM, then SIGKILL) -- the fixture calls it even when the
test fails. Replica state and logs are read offline, after the processes
stopped, straight from their directories.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import engine
from engine.fs import OSFileSystem
from replication.client import RemoteStore
from replication.cluster import DEFAULT_ENGINE_OPTIONS
from replication.command import decode_command
from replication.log_store import NodeLog
from replication.processes import ChildNode, start_node, start_nodes, stop_nodes
from replication.sessions import INTERNAL_PREFIX
from replication.transport.tcp import Address, format_address

# Fast elections for tests; a CI machine is slow and loaded, so not too fast.
FAST = ("--election-timeout-ms", "400", "--heartbeat-ms", "40")
LIVENESS_S = 30.0  # a bound for "eventually": hitting it is a failure, never a timing claim


class ProcCluster:
    def __init__(self, base: Path, nodes: int = 3, extra: Sequence[str] = ()) -> None:
        self.base = base
        self.extra = list(FAST) + list(extra)
        self.children: list[ChildNode] = start_nodes(nodes, str(base), extra=self.extra)
        self.addresses: list[Address] = [c.address for c in self.children]
        self.paused: set[int] = set()

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

    def leader(self, timeout: float = LIVENESS_S, *, exclude: int | None = None) -> int:
        """The node every running node agrees leads (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            for i, c in enumerate(self.children):
                if c.process.poll() is not None or i in self.paused:
                    continue
                st = self.status(i)
                if st is not None and st["role"] == "leader" and i != exclude:
                    leaders.add(i)
            if len(leaders) == 1:
                return leaders.pop()
            time.sleep(0.05)
        raise AssertionError(f"no single leader within {timeout}s")

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        proc = self.children[node].process
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(LIVENESS_S)

    def pause(self, node: int) -> None:
        os.kill(self.children[node].pid, signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: int) -> None:
        os.kill(self.children[node].pid, signal.SIGCONT)
        self.paused.discard(node)

    def restart(self, node: int) -> None:
        assert self.children[node].process.poll() is not None, f"node {node} still runs"
        self.children[node] = start_node(node, self.addresses, str(self.base), self.extra)

    def wait_converged(self, timeout: float = LIVENESS_S) -> None:
        """Every node has applied the leader's commit index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.status(self.leader())
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
        for c in self.children:  # belt and braces: nothing outlives the test
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait()

    # -- offline inspection (after stop) ---------------------------------------------------

    def replica_state(self, node: int) -> dict[bytes, bytes]:
        """Node ``node``'s engine contents without the session table."""
        replica = self.base / f"node-{node}" / "replica"
        pointer = (replica / "ENGINE").read_text().strip() if (replica / "ENGINE").exists() \
            else "engine-000001"
        with engine.Engine(str(replica / pointer),
                           engine.Options(**DEFAULT_ENGINE_OPTIONS)) as e:
            applied = e.last_sequence
            state = {k: v for k, v in e.scan() if not k.startswith(INTERNAL_PREFIX)}
        state[b"__applied__"] = str(applied).encode()
        return state

    def committed_log(self, node: int, upto: int) -> list[tuple[int, dict[bytes, bytes | None]]]:
        """The decoded log entries 1..``upto`` of node ``node`` (no-ops left out)."""
        nlog = NodeLog(OSFileSystem(), str(self.base / f"node-{node}" / "log"), node)
        try:
            entries = nlog.read(nlog.base_index + 1, upto)
        finally:
            nlog.close()
        return [(e.index, dict(decode_command(e.payload, index=e.index).batch.ops))
                for e in entries if e.payload]


@contextlib.contextmanager
def proc_cluster(base: Path, nodes: int = 3, extra: Sequence[str] = ()
                 ) -> Iterator[ProcCluster]:
    cluster = ProcCluster(base, nodes, extra)
    try:
        cluster.leader()
        yield cluster
    finally:
        cluster.stop()
