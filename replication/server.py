"""NodeServer: one replica as a process -- Raft over TCP, a Node, and the client protocol.

``python -m replication serve`` runs one of these per node. It composes
what the embedded cluster runs in one process, for one replica::

    peers <--TCP--> TcpTransport <--> RaftConsensus (log in DIR/log) --Member--> Node
    clients --TCP--> (same port, hello says CLIENT) --> request handlers --^   (DIR/replica)

Directory layout (``DIR`` is ``--data``)::

    DIR/NODE        who this directory belongs to: cluster name, node id, size
    DIR/LOCK        held while the process runs (a second process refuses)
    DIR/log/        the replica's Raft log (replication.node_log.NodeLog)
    DIR/replica/    its engine generations and ENGINE pointer (replication.node)
    DIR/snapshots/  the checkpoint it serves to followers (replication.snapshots)
    DIR/incoming/   a snapshot download in progress (resumable)

Invariants:

1. A directory serves one node of one cluster for ever: ``NODE`` is
   written on first start and every later start must name the same
   cluster, id and size, before any other file is touched.
2. Every request is answered by the node that received it, in order, on
   its connection; requests that must run on the leader fail with
   ``not_leader`` and the leader's id and address. Writes carry a client
   session, so a client may retry one anywhere (:mod:`replication.sessions`).
3. Interactive transactions live on the connection that began them: a
   closed connection rolls them back at once, and one idle longer than
   ``txn_idle_timeout_s`` is rolled back by the maintenance thread -- so a
   client that vanishes frees its certifier state.
4. Shutdown (``close``) first refuses new requests, waits for the ones in
   flight (at most ``request_timeout_s``), then stops the node, Raft, the
   transport and releases ``LOCK``: every file is closed on return.

Thread-safety: one thread per client connection (the transport's reader),
plus Raft's threads, the applier and one maintenance thread. ``_lock``
guards the transaction registry and the in-flight count.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import engine
from engine.errors import InvalidArgument, TransactionClosed
from engine.fs import FileSystem, OSFileSystem, atomic_write
from engine.txn import Transaction
from replication.cluster import VALID_SIZES
from replication.command import Session
from replication.driver import RaftConsensus
from replication.errors import NotLeader, Unavailable
from replication.member import Member
from replication.node import Node
from replication.options import DEFAULT_ENGINE_OPTIONS
from replication.protocol import decode_value, encode_value, error_result
from replication.raft.node import RaftConfig, Role
from replication.sessions import INTERNAL_PREFIX, session_key, session_record
from replication.snapshots import DEFAULT_CHUNK_BYTES, SnapshotInfo, SnapshotStore, fetch_snapshot
from replication.transport.rpc import RpcConnection
from replication.transport.tcp import Address, TcpTransport, format_address
from replication.transport.wire import Frame, FrameDecoder, FrameType, WireError, encode_frame

__all__ = ["NodeServer", "ServerOptions"]

log = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
_IDENTITY_HEADER = "stratakv node 1"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """A node process's settings; :meth:`validate` raises InvalidArgument naming the field.

    ``election_timeout_ms``: a follower that hears no leader for a random
    [T, 2T) campaigns; a leader that hears no quorum for T steps down.
    ``heartbeat_ms``: the leader's heartbeat (and the Raft tick).
    ``request_timeout_s``: the longest a request waits on the node (a
    client asks for less with ``timeout_ms``). ``txn_idle_timeout_s``: an
    interactive transaction with no request for this long is rolled back.
    ``max_log_entries``/``log_keep_entries``: once the log holds more
    committed entries than the first, it is compacted to the second
    (followers further behind get a snapshot). ``snapshot_chunk_bytes``:
    the size of one snapshot read.

    ``unsafe_follower_reads``: DELIBERATELY BROKEN, for testing checkers
    only. A ``get`` is served from this node's engine as it stands -- on a
    follower, on a partitioned or deposed leader -- without ReadIndex, so
    it can return a stale value and reads stop being linearizable. ``python
    -m bench nemesis --unsafe-follower-reads`` uses it to show that the
    linearizability checker catches exactly this bug. Never set it otherwise.
    """

    election_timeout_ms: int = 500
    heartbeat_ms: int = 50
    request_timeout_s: float = 5.0
    txn_idle_timeout_s: float = 30.0
    max_log_entries: int = 50_000
    log_keep_entries: int = 5_000
    snapshot_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    unsafe_follower_reads: bool = False
    engine: engine.Options = field(
        default_factory=lambda: engine.Options(**DEFAULT_ENGINE_OPTIONS))

    def validate(self) -> ServerOptions:
        for name in ("election_timeout_ms", "heartbeat_ms", "max_log_entries",
                     "snapshot_chunk_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidArgument(f"{name} must be an int >= 1, got {value!r}")
        if type(self.log_keep_entries) is not int or not \
                0 <= self.log_keep_entries < self.max_log_entries:
            raise InvalidArgument(f"log_keep_entries must be an int in [0, max_log_entries), "
                                  f"got {self.log_keep_entries!r}")
        if self.election_timeout_ms < 3 * self.heartbeat_ms:
            raise InvalidArgument(f"election_timeout_ms ({self.election_timeout_ms}) must be "
                                  f"at least 3 x heartbeat_ms ({self.heartbeat_ms})")
        for name in ("request_timeout_s", "txn_idle_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InvalidArgument(f"{name} must be > 0 seconds, got {value!r}")
        if not isinstance(self.engine, engine.Options):
            raise InvalidArgument("engine must be an engine.Options")
        self.engine.validate()
        return self

    def raft_config(self) -> RaftConfig:
        return RaftConfig(election_timeout_ticks=self.election_timeout_ms // self.heartbeat_ms,
                          heartbeat_ticks=1)


@dataclass(slots=True)
class _Txn:
    """An interactive transaction of one connection (invariant 3)."""

    id: int
    tx: Transaction
    conn: int
    last_used: float
    busy: bool = False


class NodeServer:
    """Node ``node_id`` of the cluster whose nodes listen at ``peers`` (index = node id).

    ``listen``: where this node accepts peers and clients, if not at
    ``peers[node_id]``. Then ``peers`` says only where this node *dials*
    each peer (and names in not-leader hints), which lets a fault-injecting
    proxy or a NAT sit between every pair of nodes (``bench/nemesis``).
    """

    def __init__(self, node_id: int, peers: Sequence[Address], data_dir: str, *,
                 cluster: str = "stratakv", options: ServerOptions | None = None,
                 fs: FileSystem | None = None, listen: Address | None = None) -> None:
        self.options = (options or ServerOptions()).validate()
        if len(peers) not in VALID_SIZES:
            raise InvalidArgument(f"a cluster has 3, 5 or 7 nodes, got {len(peers)} addresses")
        if type(node_id) is not int or not 0 <= node_id < len(peers):
            raise InvalidArgument(f"node id must be in [0, {len(peers)}), got {node_id!r}")
        if not cluster or len(cluster.encode("utf-8")) > 255:
            raise InvalidArgument("cluster name must be 1-255 bytes")
        if len(set(peers)) != len(peers):
            raise InvalidArgument(f"peer addresses must differ: {peers}")
        self.id = node_id
        self.peers = list(peers)
        self.cluster = cluster
        self.path = data_dir
        self.fs = fs or OSFileSystem()
        self.timeout = self.options.request_timeout_s
        self._cluster_id = cluster.encode("utf-8")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._txns: dict[int, _Txn] = {}
        self._txn_ids = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._inflight = 0
        self._closing = False
        self._closed = False
        self._stop = threading.Event()
        self.failed: BaseException | None = None  # why the node stopped itself
        self.on_failure: Callable[[], None] | None = None
        self.fs.mkdirs(data_dir)
        self._dir_lock = self.fs.lock(self.fs.join(data_dir, "LOCK"))
        self.transport: TcpTransport | None = None
        self.consensus: RaftConsensus | None = None
        try:
            self._check_identity()
            self.snapshots = SnapshotStore(self.fs, self.fs.join(data_dir, "snapshots"))
            self.transport = TcpTransport(
                node_id, cluster_id=self._cluster_id, listen=listen or self.peers[node_id],
                peers={i: a for i, a in enumerate(self.peers) if i != node_id},
                on_client=self._serve_client)
            config = self.options.raft_config()
            self.consensus = RaftConsensus(
                node_id, len(peers), self.fs, self.fs.join(data_dir, "log"), self.transport,
                config=config, rng=random.Random(), tick_s=self.options.heartbeat_ms / 1000,
                on_leader=self._elected, on_fail=self._raft_failed)
            self.member = Member(self.consensus, on_crash=self._applier_failed)
            self.node = Node(node_id, self.fs.join(data_dir, "replica"), self.member,
                             self.options.engine, self.fs, self._fetch_snapshot,
                             timeout=self.timeout)
            self.node.start()
        except BaseException:
            self._teardown()
            raise
        self._maintenance = threading.Thread(target=self._maintain, daemon=True,
                                             name=f"stratakv-server-{node_id}")
        self._maintenance.start()
        log.info("node %d of cluster %r serving at %s (%d nodes, data %s)", node_id, cluster,
                 format_address(self.address), len(peers), data_dir)

    @property
    def address(self) -> Address:
        assert self.transport is not None
        return self.transport.address

    # -- identity (invariant 1) -------------------------------------------------------------

    def _check_identity(self) -> None:
        path = self.fs.join(self.path, "NODE")
        want = {"cluster": self.cluster, "node": str(self.id), "nodes": str(len(self.peers))}
        if not self.fs.exists(path):
            if any(n not in ("LOCK",) for n in self.fs.listdir(self.path)):
                raise InvalidArgument(f"{self.path} holds files but no NODE file: not a "
                                      f"stratakv node directory")
            text = _IDENTITY_HEADER + "\n" + "".join(f"{k} {v}\n" for k, v in want.items())
            atomic_write(self.fs, path, lambda f: f.append(text.encode("utf-8")))
            return
        lines = self.fs.read_file(path).decode("utf-8", "replace").splitlines()
        if not lines or lines[0] != _IDENTITY_HEADER:
            raise engine.CorruptionError(path, 0, "not a stratakv NODE file")
        have = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
        for key, value in want.items():
            if have.get(key) != value:
                raise InvalidArgument(
                    f"{self.path} belongs to {key} {have.get(key)!r}, not {value!r} "
                    f"(node {have.get('node')} of cluster {have.get('cluster')!r} with "
                    f"{have.get('nodes')} nodes): refusing to start")

    # -- events -----------------------------------------------------------------------------

    def _elected(self, node: int, term: int) -> None:
        log.info("node %d became leader in term %d", node, term)

    def _raft_failed(self, node: int, exc: BaseException) -> None:
        self._fail(exc)

    def _applier_failed(self) -> None:
        self._fail(self.node.failed or RuntimeError("applier failed"))

    def _fail(self, exc: BaseException) -> None:
        log.error("node %d stops: %r", self.id, exc)
        self.failed = exc
        self._stop.set()
        if self.on_failure is not None:
            self.on_failure()

    # -- the client protocol (invariant 2) -----------------------------------------------

    def _serve_client(self, sock: Any, addr: Address, frames: list[Frame],
                      decoder: FrameDecoder) -> None:
        conn = next(self._conn_ids)
        try:
            for frame in frames:
                self._answer(sock, conn, frame)
            while True:
                data = sock.recv(_RECV_BYTES)
                if not data:
                    return
                for frame in decoder.feed(data):
                    self._answer(sock, conn, frame)
        finally:
            self._drop_connection(conn)

    def _answer(self, sock: Any, conn: int, frame: Frame) -> None:
        if frame.type is not FrameType.CLIENT_REQUEST:
            raise WireError(f"{frame.type.name} frame on a client connection")
        request = decode_value(frame.payload)
        if (not isinstance(request, list) or len(request) != 3 or type(request[0]) is not int
                or not isinstance(request[1], str) or not isinstance(request[2], dict)):
            raise WireError("a client request must be [id, op, args]")
        rid, op, args = request
        handler = _OPS.get(op)
        with self._lock:
            closing = self._closing
            if not closing:
                self._inflight += 1
        try:
            if closing:
                # Not run at all: Unavailable (retryable) sends the client to another node.
                raise Unavailable(f"node {self.id} is shutting down")
            if handler is None:
                raise InvalidArgument(f"unknown operation {op!r}")
            status, result = "ok", handler(self, conn, args)
        except Exception as exc:
            status, result = error_result(exc)
            if isinstance(exc, NotLeader):
                hint = exc.leader if exc.leader is not None else self.member.leader_id
                if hint is not None and hint != self.id:
                    result["leader"] = hint
                    result["address"] = format_address(self.peers[hint])
            elif status == "error":
                log.exception("node %d: %s failed", self.id, op)
        finally:
            if not closing:
                with self._lock:
                    self._inflight -= 1
                    self._idle.notify_all()
        sock.sendall(encode_frame(FrameType.CLIENT_RESPONSE, encode_value([rid, status, result])))

    def _deadline(self, args: dict[str, Any]) -> float:
        """The seconds a request may take: the client's ``timeout_ms``, capped by ours."""
        ms = args.get("timeout_ms")
        if ms is None:
            return self.timeout
        if type(ms) is not int or ms < 1:
            raise InvalidArgument(f"timeout_ms must be an int >= 1, got {ms!r}")
        return min(self.timeout, ms / 1000)

    # -- operations -----------------------------------------------------------------------

    def _leader_tm(self, timeout: float) -> Any:
        return self.node.transactions(timeout)

    def _write(self, ops: dict[bytes, bytes | None], args: dict[str, Any]) -> dict[str, Any]:
        session = _session(args)
        timeout = self._deadline(args)
        index = self._leader_tm(timeout).write(ops, timeout, session)
        e = self.node.engine
        if session is not None and e is not None:  # a retry: report where the first applied
            rec = session_record(e.get(session_key(session.client_id)))
            if rec is not None and rec[0] == session.seq:
                index = rec[1]
        return {"index": index}

    def op_put(self, conn: int, args: dict[str, Any]) -> Any:
        batch = engine.WriteBatch(self.options.engine)
        batch.put(_text(args, "key"), _text(args, "value"))
        return self._write(batch.ops, args)

    def op_delete(self, conn: int, args: dict[str, Any]) -> Any:
        batch = engine.WriteBatch(self.options.engine)
        batch.delete(_text(args, "key"))
        return self._write(batch.ops, args)

    def op_get(self, conn: int, args: dict[str, Any]) -> Any:
        key = _text(args, "key")
        if self.options.unsafe_follower_reads:  # broken on purpose: see ServerOptions
            e = self.node.engine
            if e is None:
                raise NotLeader(f"node {self.id} has no engine")
            return _str_or_none(e.get(key))
        return _str_or_none(self.node.read(key, self._deadline(args)))

    def op_multi_get(self, conn: int, args: dict[str, Any]) -> Any:
        keys = args.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TypeError("keys must be a list of str")
        ks = [k.encode("utf-8") for k in keys]
        values = self.node.read_snapshot(lambda snap: snap.multi_get(ks), self._deadline(args))
        return [_str_or_none(v) for v in values]

    def op_scan(self, conn: int, args: dict[str, Any]) -> Any:
        lo, hi, pre, reverse, limit = _scan_args(args)
        return self.node.read_snapshot(lambda snap: _scan(snap, lo, hi, pre, reverse, limit),
                                       self._deadline(args))

    def op_begin(self, conn: int, args: dict[str, Any]) -> Any:
        timeout = self._deadline(args)
        read_only = args.get("read_only", False)
        if not isinstance(read_only, bool):
            raise TypeError("read_only must be a bool")
        tx = self._leader_tm(timeout).begin(read_only=read_only, timeout=timeout,
                                            commit_timeout=timeout, session=_session(args))
        with self._lock:
            txn = _Txn(next(self._txn_ids), tx, conn, time.monotonic())
            self._txns[txn.id] = txn
        return {"txn": txn.id, "snapshot": tx.snapshot_sequence}

    def _txn(self, conn: int, args: dict[str, Any]) -> _Txn:
        tid = args.get("txn")
        with self._lock:
            txn = self._txns.get(tid) if type(tid) is int else None
            if txn is None or txn.conn != conn:
                raise TransactionClosed(f"no transaction {tid!r} on this connection (ended, "
                                        f"idle for over {self.options.txn_idle_timeout_s}s, "
                                        f"or its leader stepped down)")
            txn.busy = True
            txn.last_used = time.monotonic()
            return txn

    def _done(self, txn: _Txn, *, end: bool) -> None:
        with self._lock:
            txn.busy = False
            txn.last_used = time.monotonic()
            if end:
                self._txns.pop(txn.id, None)

    def op_tx_get(self, conn: int, args: dict[str, Any]) -> Any:
        txn = self._txn(conn, args)
        try:
            return _str_or_none(txn.tx.get(_text(args, "key")))
        finally:
            self._done(txn, end=False)

    def op_tx_put(self, conn: int, args: dict[str, Any]) -> Any:
        txn = self._txn(conn, args)
        try:
            txn.tx.put(_text(args, "key"), _text(args, "value"))
        finally:
            self._done(txn, end=False)

    def op_tx_delete(self, conn: int, args: dict[str, Any]) -> Any:
        txn = self._txn(conn, args)
        try:
            txn.tx.delete(_text(args, "key"))
        finally:
            self._done(txn, end=False)

    def op_tx_scan(self, conn: int, args: dict[str, Any]) -> Any:
        lo, hi, pre, reverse, limit = _scan_args(args)
        txn = self._txn(conn, args)
        try:
            return _scan(txn.tx, lo, hi, pre, reverse, limit)
        finally:
            self._done(txn, end=False)

    def op_tx_commit(self, conn: int, args: dict[str, Any]) -> Any:
        txn = self._txn(conn, args)
        try:
            txn.tx.commit()
            return {"sequence": txn.tx.sequence}
        finally:
            self._done(txn, end=True)

    def op_tx_rollback(self, conn: int, args: dict[str, Any]) -> Any:
        txn = self._txn(conn, args)
        try:
            txn.tx.rollback()
        finally:
            self._done(txn, end=True)

    def op_outcome(self, conn: int, args: dict[str, Any]) -> Any:
        """Did session request (client, seq) apply? Definitive: a barrier entry first.

        Once an entry of this leader's term that was appended after the
        question is applied, every entry that could ever commit before it is
        applied too; a request not applied by then never will be (its
        client sends nothing newer on that session before it knows).
        """
        session = _session(args)
        if session is None:
            raise InvalidArgument("outcome needs session and seq")
        timeout = self._deadline(args)
        self._leader_tm(timeout).write({}, timeout)
        e = self.node.engine
        if e is None:
            raise NotLeader(f"node {self.id} went down")
        rec = session_record(e.get(session_key(session.client_id)))
        applied = rec is not None and rec[0] >= session.seq
        return {"applied": applied, "index": rec[1] if applied and rec is not None else None}

    def op_status(self, conn: int, args: dict[str, Any]) -> Any:
        return self.status()

    def op_transfer_leader(self, conn: int, args: dict[str, Any]) -> Any:
        to = args.get("to")
        if type(to) is not int or not 0 <= to < len(self.peers):
            raise InvalidArgument(f"to must be a node id in [0, {len(self.peers)}), got {to!r}")
        assert self.consensus is not None
        self.consensus.transfer_leadership(to)
        deadline = time.monotonic() + self._deadline(args)
        while time.monotonic() < deadline:
            lead = self.consensus.leader_id
            if lead == to:
                return {"leader": to}
            time.sleep(0.01)
        raise Unavailable(f"node {to} did not take over within the timeout")

    def op_snapshot_open(self, conn: int, args: dict[str, Any]) -> Any:
        min_index = args.get("min_index")
        if type(min_index) is not int or min_index < 0:
            raise InvalidArgument(f"min_index must be an int >= 0, got {min_index!r}")
        e = self.node.engine
        if e is None or not self.node.alive:
            raise Unavailable(f"node {self.id} has no engine to snapshot")
        return self.snapshots.prepare(e, min_index).to_wire()

    def op_snapshot_read(self, conn: int, args: dict[str, Any]) -> Any:
        snap_id, name = args.get("id"), args.get("name")
        offset, length = args.get("offset"), args.get("length")
        if not isinstance(snap_id, str) or not isinstance(name, str) \
                or type(offset) is not int or type(length) is not int:
            raise TypeError("snapshot_read needs id: str, name: str, offset: int, length: int")
        return self.snapshots.read(snap_id, name, offset, length)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``ctl status`` prints for this node."""
        c = self.consensus
        assert c is not None
        st = c.status()
        lead = None if st.leader is None else st.leader - 1
        heard = c.last_heard.get(lead) if lead is not None and lead != self.id else None
        return {
            "id": self.id, "address": format_address(self.address), "cluster": self.cluster,
            "nodes": len(self.peers), "role": Role(st.role).name.lower(), "term": st.term,
            "leader": lead, "commit": c.committed, "applied": self.node.applied,
            "log_first": st.first_index, "log_last": st.last_index,
            "log_entries": st.last_index - st.first_index + 1,
            "last_contact_ms": None if heard is None else int((time.monotonic() - heard) * 1000),
            "snapshots_installed": self.node.snapshots_installed,
            "transactions": len(self._txns),
            "certifier": self.node.certifier_state(),
        }

    # -- snapshots: the follower's side ----------------------------------------------------

    def _fetch_snapshot(self, node_id: int, base_index: int, dest: str) -> int:
        """Node's snapshot source: download a checkpoint of at least ``base_index`` from the
        leader. Anything that goes wrong is Unavailable: the applier tries again later,
        resuming the download (replication.snapshots, invariant 2)."""
        lead = self.member.leader_id
        if lead is None or lead == self.id:
            raise Unavailable("no leader to fetch a snapshot from yet")
        chunk = self.options.snapshot_chunk_bytes
        try:
            with RpcConnection(self.peers[lead], self._cluster_id) as rpc:
                info = SnapshotInfo.from_wire(
                    rpc.call("snapshot_open", {"min_index": base_index}, self.timeout))
                log.info("node %d: fetching snapshot %s (index %d, %d bytes) from node %d",
                         self.id, info.id, info.index, sum(s for _, s, _ in info.files), lead)

                def read(name: str, offset: int, length: int) -> bytes:
                    data = rpc.call("snapshot_read", {"id": info.id, "name": name,
                                                      "offset": offset, "length": length},
                                    self.timeout)
                    if not isinstance(data, bytes):
                        raise ValueError("snapshot_read answered no bytes")
                    return data

                return fetch_snapshot(self.fs, self.fs.join(self.path, "incoming"), dest, info,
                                      read, chunk)
        except (OSError, ValueError, engine.EngineError) as exc:
            if isinstance(exc, (NotLeader, Unavailable)):
                raise
            raise Unavailable(f"snapshot from node {lead} failed: {exc}") from exc

    # -- maintenance ---------------------------------------------------------------------------

    def _maintain(self) -> None:
        role: tuple[Role, int | None] | None = None
        next_compaction = 0.0
        while not self._stop.wait(0.1):
            try:
                c = self.consensus
                if c is None or self._closing:
                    continue
                st = c.status()
                now = (Role(st.role), st.leader)
                if now != role:
                    role = now
                    if st.role == Role.FOLLOWER:
                        lead = None if st.leader is None else st.leader - 1
                        log.info("node %d is a follower in term %d (leader %s)", self.id,
                                 st.term, "unknown" if lead is None else lead)
                self._reap_idle()
                if time.monotonic() >= next_compaction:
                    next_compaction = time.monotonic() + 1.0
                    self._compact_log()
            except Exception:
                log.exception("node %d: maintenance failed", self.id)

    def _reap_idle(self) -> None:
        """Roll back transactions idle for longer than txn_idle_timeout_s (invariant 3)."""
        limit = time.monotonic() - self.options.txn_idle_timeout_s
        with self._lock:
            idle = [t for t in self._txns.values() if not t.busy and t.last_used < limit]
            for t in idle:
                del self._txns[t.id]
        for t in idle:
            log.info("node %d: rolled back transaction %d, idle for over %.1fs", self.id, t.id,
                     self.options.txn_idle_timeout_s)
            t.tx.rollback()

    def _compact_log(self) -> None:
        c = self.consensus
        e = self.node.engine
        if c is None or e is None or not self.node.alive:
            return
        base = c.log.base_index
        if c.committed - base <= self.options.max_log_entries:
            return
        e.flush()
        upto = min(e.persisted_sequence, c.committed) - self.options.log_keep_entries
        if upto > base:
            c.compact(upto)
            log.info("node %d: compacted its log up to %d", self.id, upto)

    def _drop_connection(self, conn: int) -> None:
        with self._lock:
            gone = [t for t in self._txns.values() if t.conn == conn]
            for t in gone:
                del self._txns[t.id]
        for t in gone:
            t.tx.rollback()

    # -- lifecycle (invariant 4) ----------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the node stops itself (a failure) or ``timeout``; True if it stopped."""
        return self._stop.wait(timeout)

    def close(self) -> None:
        """Finish the requests in flight, then stop everything and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._closing = True
            deadline = time.monotonic() + self.timeout
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
        self._stop.set()
        if threading.current_thread() is not self._maintenance:
            self._maintenance.join()
        self._teardown()
        log.info("node %d stopped", self.id)

    def _teardown(self) -> None:
        node = getattr(self, "node", None)
        try:
            if self.transport is not None:
                self.transport.close()  # clients and peers first: nothing new arrives
            with self._lock:
                txns, self._txns = list(self._txns.values()), {}
            for t in txns:
                t.tx.rollback()
            if node is not None:
                node.stop()
            if self.consensus is not None:
                self.consensus.close()
        finally:
            self._dir_lock.release()

    def __enter__(self) -> NodeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- argument checking ----------------------------------------------------------------------


def _text(args: dict[str, Any], name: str) -> bytes:
    value = args.get(name)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    return value.encode("utf-8")


def _opt_text(args: dict[str, Any], name: str) -> bytes | None:
    return None if args.get(name) is None else _text(args, name)


def _str_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def _session(args: dict[str, Any]) -> Session | None:
    client, seq = args.get("session"), args.get("seq")
    if client is None and seq is None:
        return None
    if not isinstance(client, bytes) or len(client) != 16 or type(seq) is not int or seq < 1:
        raise InvalidArgument("session must be 16 bytes and seq an int >= 1")
    return Session(client, seq)


def _scan_args(args: dict[str, Any]) -> tuple[bytes | None, bytes | None, bytes | None, bool,
                                              int | None]:
    lo, hi, pre = _opt_text(args, "start"), _opt_text(args, "end"), _opt_text(args, "prefix")
    reverse, limit = args.get("reverse", False), args.get("limit")
    if pre is not None and (lo is not None or hi is not None):
        raise InvalidArgument("give prefix, or start and end, not both")
    if not isinstance(reverse, bool):
        raise TypeError("reverse must be a bool")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise InvalidArgument(f"limit must be an int >= 0, got {limit!r}")
    if pre is None and (hi is None or hi > INTERNAL_PREFIX):
        hi = INTERNAL_PREFIX  # the session table is not the user's (replication.sessions)
    return lo, hi, pre, reverse, limit


def _scan(reader: Any, lo: bytes | None, hi: bytes | None, pre: bytes | None, reverse: bool,
          limit: int | None) -> list[list[str]]:
    out: list[list[str]] = []
    for k, v in reader.scan(lo, hi, reverse=reverse, prefix=pre):
        if limit is not None and len(out) >= limit:
            break
        out.append([k.decode("utf-8"), v.decode("utf-8")])
    return out


_OPS: dict[str, Callable[[NodeServer, int, dict[str, Any]], Any]] = {
    name[3:]: getattr(NodeServer, name) for name in dir(NodeServer) if name.startswith("op_")
}
