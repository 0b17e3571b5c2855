"""etcd side by side: a 3-member etcd cluster on loopback and a client for its JSON gateway.

etcd is never required. :func:`etcd_binary` finds an ``etcd`` on PATH (Debian's
``etcd-server`` package); without one the benchmark leaves etcd out and its
test skips.

:class:`EtcdCluster` starts N ``etcd`` processes on 127.0.0.1 with free
ports, their data in ``BASE/m<i>.etcd`` and their logs in ``BASE/m<i>.log``,
with etcd's default settings (heartbeat 100 ms, election timeout 1 s, every
commit fsynced: etcd 3.4 has no way to turn that off). It can SIGKILL and
restart a member, and :meth:`EtcdCluster.stop` stops every process *by pid*
(SIGTERM, then SIGKILL after a timeout); it also runs when ``start`` fails
halfway, and each child gets SIGTERM from the kernel if its parent dies
(``PR_SET_PDEATHSIG``, Linux).

:class:`EtcdClient` speaks etcd's v3 JSON gateway (``/v3/kv/put``,
``/v3/kv/range``, ``/v3/kv/txn``; keys and values base64) over one
keep-alive ``http.client`` connection per thread -- no third-party library.
It sends to the leader first, as the stratakv client does, and on a
connection error, a timeout or an error answer moves to the next member and
retries until its overall ``timeout``. A range is linearizable (etcd's
default, ``serializable: false``); :meth:`EtcdClient.increment` is the
read-modify-write of the benchmark: a range, then a txn that puts the new
value only if the key's ``mod_revision`` is still the one read.

Thread-safety: an :class:`EtcdClient` may be shared by threads (each has
its own connection); an :class:`EtcdCluster` is driven from one thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from replication.processes import ChildNode, die_with_parent, free_ports, stop_nodes

__all__ = ["EtcdClient", "EtcdCluster", "EtcdError", "etcd_binary", "etcd_version"]

log = logging.getLogger(__name__)

class EtcdError(Exception):
    """etcd did not answer a request successfully within the client's timeout."""


def etcd_binary() -> str | None:
    """The path of the ``etcd`` binary on PATH, or None."""
    return shutil.which("etcd")


def etcd_version(binary: str | None = None) -> str:
    """``etcd --version``'s version number (for example ``3.4.23``); "?" if it cannot say."""
    binary = binary or etcd_binary()
    if binary is None:
        return "?"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"etcd Version:\s*(\S+)", out)
    return m.group(1) if m else "?"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _post(host: str, port: int, path: str, body: dict[str, Any], timeout: float
          ) -> dict[str, Any]:
    """One request on a fresh connection (status probes; not the measured path)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise EtcdError(f"{path}: HTTP {resp.status} {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result
    finally:
        conn.close()


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"


class EtcdCluster:
    """N etcd processes on loopback, in ``base_dir``; a context manager that stops them all."""

    def __init__(self, base_dir: str, n: int = 3, *, binary: str | None = None) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise FileNotFoundError("no etcd binary on PATH (Debian: apt-get install "
                                    "etcd-server)")
        self.binary = found
        self.base_dir = base_dir
        ports = free_ports(2 * n)
        self.members = [EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1],
                                   os.path.join(base_dir, f"m{i}.etcd")) for i in range(n)]
        self._token = f"stratakv-bench-{os.getpid()}-{ports[0]}"

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def command(self, i: int) -> list[str]:
        """The ``etcd`` command line of member ``i``: default settings, loopback only."""
        m = self.members[i]
        peers = ",".join(f"{x.name}=http://127.0.0.1:{x.peer_port}" for x in self.members)
        return [self.binary, "--name", m.name, "--data-dir", m.data_dir, "--logger", "zap",
                "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                "--initial-cluster", peers, "--initial-cluster-token", self._token,
                "--initial-cluster-state", "new"]

    def start_member(self, i: int) -> None:
        """Start (or restart, from its data directory) member ``i``."""
        os.makedirs(self.base_dir, exist_ok=True)
        m = self.members[i]
        with open(os.path.join(self.base_dir, f"{m.name}.log"), "ab") as logfile:
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
            m.process = subprocess.Popen(self.command(i), stdin=subprocess.DEVNULL,
                                         stdout=logfile, stderr=logfile, env=env,
                                         preexec_fn=die_with_parent)

    def restart(self, i: int) -> None:
        """Start member ``i`` again after :meth:`kill`, from its data directory."""
        self.start_member(i)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until one leads; on failure stop what started."""
        try:
            for i in range(len(self.members)):
                self.start_member(i)
            if self.wait_for_leader(timeout) is None:
                raise RuntimeError(f"etcd elected no leader in {timeout:.0f} s; the end of "
                                   f"its logs:\n{self.log_tails()}")
        except BaseException:
            self.stop()
            raise
        return self

    def log_tails(self, lines: int = 5) -> str:
        """The last ``lines`` lines of each member's log, exit status first (for errors)."""
        out = []
        for m in self.members:
            code = None if m.process is None else m.process.poll()
            try:
                with open(os.path.join(self.base_dir, f"{m.name}.log"), "rb") as f:
                    tail = f.read().decode(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                tail = [repr(exc)]
            out.append(f"{m.name} ({'running' if code is None else f'exited {code}'}):")
            out += [f"  {line[:300]}" for line in tail]
        return "\n".join(out)

    def status(self, i: int, timeout: float = 1.0) -> dict[str, Any] | None:
        """Member ``i``'s ``/v3/maintenance/status``, or None if it does not answer."""
        m = self.members[i]
        if m.process is None or m.process.poll() is not None:
            return None
        try:
            return _post("127.0.0.1", m.client_port, "/v3/maintenance/status", {}, timeout)
        except (OSError, http.client.HTTPException, EtcdError, ValueError):
            return None

    def leader(self) -> int | None:
        """The index of the member that says it leads (None if none does now)."""
        for i in range(len(self.members)):
            st = self.status(i)
            if st is not None and st.get("leader") and \
                    st.get("leader") == st.get("header", {}).get("member_id"):
                return i
        return None

    def wait_for_leader(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None:
                return found
            time.sleep(0.05)
        return None

    def max_term(self) -> int:
        """The highest raft term any member reports: its growth counts elections."""
        terms = [int(st.get("raftTerm", 0)) for i in range(len(self.members))
                 if (st := self.status(i)) is not None]
        return max(terms, default=0)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` by pid and reap it."""
        proc = self.members[i].process
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def pids(self) -> list[int]:
        """The pids of the members still running."""
        return [m.process.pid for m in self.members
                if m.process is not None and m.process.poll() is None]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every member by pid, wait up to ``timeout`` s, then SIGKILL the rest."""
        stop_nodes([ChildNode(i, ("127.0.0.1", m.client_port), m.data_dir, m.process)
                    for i, m in enumerate(self.members) if m.process is not None],
                   timeout=timeout)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EtcdClient:
    """etcd's v3 JSON gateway over keep-alive HTTP, leader first; str keys and values."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 30.0,
                 attempt_timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint")
        self._addresses: list[tuple[str, int]] = []
        for e in endpoints:
            u = urlsplit(e if "://" in e else "http://" + e)
            if u.hostname is None or u.port is None:
                raise ValueError(f"bad etcd endpoint {e!r}: expected http://HOST:PORT")
            self._addresses.append((u.hostname, u.port))
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()
        self._first = self._find_leader()

    def _find_leader(self) -> int:
        for i, (host, port) in enumerate(self._addresses):
            try:
                st = _post(host, port, "/v3/maintenance/status", {}, self.attempt_timeout)
            except (OSError, http.client.HTTPException, EtcdError, ValueError):
                continue
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return i
        return 0

    def _connection(self) -> tuple[int, http.client.HTTPConnection]:
        st = self._local
        conn: http.client.HTTPConnection | None = getattr(st, "conn", None)
        if conn is None:
            index: int = getattr(st, "index", self._first)
            host, port = self._addresses[index]
            conn = http.client.HTTPConnection(host, port, timeout=self.attempt_timeout)
            st.conn, st.index = conn, index
            with self._lock:
                self._open.add(conn)
        return st.index, conn

    def _drop(self, conn: http.client.HTTPConnection, index: int) -> None:
        """Close this thread's connection and move it to the next member."""
        conn.close()
        with self._lock:
            self._open.discard(conn)
        self._local.conn = None
        self._local.index = (index + 1) % len(self._addresses)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``, retrying on the next member until ``timeout``."""
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        deadline = time.monotonic() + self.timeout
        while True:
            index, conn = self._connection()
            try:
                conn.request("POST", path, payload, headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    result: dict[str, Any] = json.loads(data)
                    return result
                error = f"HTTP {resp.status} {data[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                error = repr(exc)
            self._drop(conn, index)
            if time.monotonic() >= deadline:
                raise EtcdError(f"{path}: {error}")
            time.sleep(0.01)

    def put(self, key: str, value: str) -> None:
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str) -> str | None:
        """A linearizable read (etcd's default range)."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs")
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def increment(self, key: str) -> int:
        """Add one to the integer at ``key`` (absent: 0) by compare-and-swap on
        ``mod_revision``; return how many times a concurrent writer made it retry."""
        k = _b64(key)
        retries = 0
        while True:
            kvs = self.call("/v3/kv/range", {"key": k}).get("kvs")
            value = int(_unb64(kvs[0].get("value", "")) or 0) if kvs else 0
            revision = kvs[0].get("mod_revision", "0") if kvs else "0"
            answer = self.call("/v3/kv/txn", {
                "compare": [{"key": k, "target": "MOD", "result": "EQUAL",
                             "mod_revision": revision}],
                "success": [{"request_put": {"key": k, "value": _b64(str(value + 1))}}]})
            if answer.get("succeeded"):
                return retries
            retries += 1

    def close(self) -> None:
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
