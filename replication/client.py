"""RemoteStore: the KeyValueStore API over the network, against node processes.

``replication.connect("h1:p1,h2:p2,h3:p3")`` returns a :class:`RemoteStore`
with the guarantees of the embedded :class:`~replication.store.KeyValueStore`:
``put``/``get``/``delete`` are linearizable (the leader confirms its
leadership with ReadIndex before reading), ``scan`` and ``multi_get`` read
one committed index, and ``transaction()`` is serializable (SSI on the
leader) and strict.

Routing: every request goes to the node believed to lead; a ``not_leader``
answer names the leader's address, which the next attempt uses, and a node
that cannot be reached sends the next attempt to the next endpoint. What
certainly did not commit is retried with jittered backoff until
``timeout`` seconds have passed, then reported as :class:`Unavailable`.

Exactly-once writes (Raft dissertation §6.3): each write carries a client
session -- a random 16-byte id -- and a sequence number, and a session has
one request outstanding at a time. A write whose answer was lost (the
leader died, the connection broke) is sent again *with the same number*,
to whichever node leads by then; the replicas apply it once
(:mod:`replication.sessions`). Only a client that gives up before learning
the outcome sees :class:`AmbiguousCommit`; :meth:`RemoteStore.outcome`
resolves it (the session is then retired, never reused, so the answer
stays true).

Transactions are server-side: the leader holds the snapshot and the
certifier state for the connection that began it. If that connection
breaks, the transaction is gone (rolled back there) and the client raises
NotLeader, which ``run_transaction`` retries -- unless the break came
during ``commit``, when the client asks the new leader whether the commit
applied before it decides.

Thread-safety: a RemoteStore may be shared by threads (each call takes a
pooled connection and a session); a transaction belongs to one thread.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import engine
from engine.errors import ClosedError, SerializationFailure
from engine.retry import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_RETRIES,
    CommitOnExit,
    run_with_retries,
)
from replication.errors import AmbiguousCommit, NotLeader, Unavailable
from replication.transport.rpc import ConnectionLost, RpcConnection
from replication.transport.tcp import Address, format_address, parse_address

__all__ = ["RemoteStore", "RemoteTransaction", "connect", "parse_endpoints"]

T = TypeVar("T")
_POOL_PER_NODE = 64


def parse_endpoints(endpoints: str | Sequence[str]) -> list[Address]:
    """``"h:p,h:p"`` or a list of ``"h:p"`` as addresses; InvalidArgument if malformed."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for item in items:
        try:
            out.append(parse_address(item.strip()))
        except (ValueError, AttributeError) as exc:
            raise engine.InvalidArgument(f"bad endpoint {item!r}: {exc}") from None
    if not out:
        raise engine.InvalidArgument("no endpoints given")
    return out


def connect(endpoints: str | Sequence[str], *, timeout: float = 5.0,
            attempt_timeout: float = 2.0, cluster: str = "stratakv",
            by_id: bool = False) -> RemoteStore:
    """A client of the cluster whose nodes listen at ``endpoints`` (``"HOST:PORT,..."``).

    Connections are made on first use; ``timeout`` bounds every operation,
    ``attempt_timeout`` each try of it on one node, ``by_id`` how leader
    hints are followed (see :class:`RemoteStore`).
    """
    return RemoteStore(parse_endpoints(endpoints), timeout=timeout,
                       attempt_timeout=attempt_timeout, cluster=cluster, by_id=by_id)


def _key(key: object, what: str = "key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{what} must be str, got {type(key).__name__}")
    return key


def _scan_args(start: str | None, end: str | None, prefix: str | None, reverse: bool,
               limit: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {"reverse": bool(reverse), "limit": limit}
    for name, value in (("start", start), ("end", end), ("prefix", prefix)):
        if value is not None:
            args[name] = _key(value, name)
    return args


class _Session:
    """A client session: its id and the number of its last request (one outstanding)."""

    __slots__ = ("client_id", "seq")

    def __init__(self) -> None:
        self.client_id = random.randbytes(16)
        self.seq = 0

    def next(self) -> dict[str, Any]:
        self.seq += 1
        return {"session": self.client_id, "seq": self.seq}


class RemoteStore:
    """The ``KeyValueStore`` API of a cluster of node processes. Thread-safe.

    ``timeout``: seconds an operation may take in all. ``attempt_timeout``:
    seconds one try on one node may take before the client gives up on that
    node and tries the next -- a node that is paused, partitioned or
    overloaded answers nothing, and without this bound one silent node
    would use up the whole timeout. Retrying a write is safe (sessions);
    a transaction whose node goes silent fails with NotLeader.

    ``by_id``: ``endpoints[i]`` is node ``i`` (all of them, in id order), so
    a not-leader hint is followed to the endpoint of the node it names
    rather than to the address that node dials it at -- for clients that
    reach the nodes another way than the nodes reach each other (through a
    proxy, as ``python -m bench nemesis`` does, or a NAT).
    """

    def __init__(self, endpoints: Sequence[Address], *, timeout: float = 5.0,
                 attempt_timeout: float = 2.0, cluster: str = "stratakv",
                 by_id: bool = False) -> None:
        if not timeout > 0:
            raise engine.InvalidArgument(f"timeout must be > 0 seconds, got {timeout!r}")
        if not attempt_timeout > 0:
            raise engine.InvalidArgument(
                f"attempt_timeout must be > 0 seconds, got {attempt_timeout!r}")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.by_id = by_id
        self._cluster_id = cluster.encode("utf-8")
        self._lock = threading.Lock()  # the pools, the sessions, the leader guess
        self._leader = 0
        self._pool: dict[Address, list[RpcConnection]] = {a: [] for a in self.endpoints}
        self._sessions: list[_Session] = []
        self._closed = False

    # -- connections and routing -------------------------------------------------------

    def _take(self, address: Address, left: float) -> RpcConnection:
        with self._lock:
            if self._closed:
                raise ClosedError("the store is closed")
            pool = self._pool.setdefault(address, [])
            if pool:
                return pool.pop()
        return RpcConnection(address, self._cluster_id, connect_timeout_s=min(1.0, left))

    def _give(self, conn: RpcConnection) -> None:
        with self._lock:
            pool = self._pool.setdefault(conn.address, [])
            if not conn.closed and not self._closed and len(pool) < _POOL_PER_NODE:
                pool.append(conn)
                return
        conn.close()

    def _route(self, exc: BaseException | None) -> None:
        """After a failed attempt: follow a NotLeader hint, else try the next endpoint."""
        with self._lock:
            if isinstance(exc, NotLeader) and self.by_id:
                if exc.leader is not None and 0 <= exc.leader < len(self.endpoints):
                    self._leader = exc.leader
                    return
            elif isinstance(exc, NotLeader) and exc.address is not None:
                try:
                    address = parse_address(exc.address)
                except ValueError:
                    address = None
                if address is not None:
                    if address not in self.endpoints:
                        self.endpoints.append(address)
                    self._leader = self.endpoints.index(address)
                    return
            self._leader = (self._leader + 1) % len(self.endpoints)

    def _call(self, op: str, args: dict[str, Any], *, write: bool = False,
              deadline: float | None = None, keep: bool = False) -> Any:
        """Run ``op`` on the leader, retrying what certainly did not run, until the deadline.

        ``write``: the args carry a session, so a retry cannot apply twice;
        if no attempt got a definite answer by the deadline and one may have
        applied, raise AmbiguousCommit (with the session) instead of Unavailable.
        ``keep``: return ``(result, connection)``, the connection not pooled
        (a transaction lives on it).
        """
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        delay = 0.005
        maybe_applied = False
        last: BaseException | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._lock:
                address = self.endpoints[self._leader]
            try:
                conn = self._take(address, left)
            except OSError as exc:
                last = exc
                self._route(exc)
            else:
                wait = min(left, self.attempt_timeout)
                try:
                    result = conn.call(op, {**args, "timeout_ms": max(1, int(wait * 1000))},
                                       wait + 0.25)
                except (NotLeader, Unavailable) as exc:
                    last = exc
                    self._give(conn)
                    self._route(exc)
                    if isinstance(exc, NotLeader) and (exc.leader if self.by_id
                                                       else exc.address) is not None:
                        continue  # a fresh hint: go at once
                except AmbiguousCommit as exc:  # the node could not learn the outcome in time
                    last = exc
                    maybe_applied = True
                    self._give(conn)
                except ConnectionLost as exc:
                    last = exc
                    maybe_applied = maybe_applied or write
                    self._route(exc)
                except BaseException:
                    self._give(conn)
                    raise
                else:
                    if keep:
                        return result, conn
                    self._give(conn)
                    return result
            time.sleep(min(random.uniform(0, delay), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
        if maybe_applied:
            session = args.get("session"), args.get("seq")
            raise AmbiguousCommit(f"{op}: no answer within {self.timeout}s; it may have "
                                  f"applied (resolve with RemoteStore.outcome)", index=0, term=0,
                                  session=session if session[0] is not None else None)  # type: ignore[arg-type]
        raise Unavailable(f"{op}: no leader answered within {self.timeout}s: {last}") from last

    def _session(self) -> _Session:
        with self._lock:
            return self._sessions.pop() if self._sessions else _Session()

    def _release(self, session: _Session) -> None:
        with self._lock:
            self._sessions.append(session)

    def _write(self, op: str, args: dict[str, Any]) -> int:
        session = self._session()
        try:
            result = self._call(op, {**args, **session.next()}, write=True)
        except AmbiguousCommit:
            raise  # the session is retired: its last request's fate is unknown
        except BaseException:
            self._release(session)  # a definite answer: the request did not apply
            raise
        self._release(session)
        return int(result["index"])

    # -- the KeyValueStore API ----------------------------------------------------------

    def put(self, key: str, value: str) -> int:
        """Set ``key`` to ``value``; return the log index it committed at (exactly once)."""
        return self._write("put", {"key": _key(key), "value": _key(value, "value")})

    def delete(self, key: str) -> int:
        """Remove ``key``; return the log index the deletion committed at."""
        return self._write("delete", {"key": _key(key)})

    def get(self, key: str) -> str | None:
        """The latest committed value of ``key`` (linearizable)."""
        result = self._call("get", {"key": _key(key)})
        return None if result is None else str(result)

    def multi_get(self, keys: Iterable[str]) -> list[str | None]:
        """The latest committed values of ``keys``, in order, all at one log index."""
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise TypeError(f"keys must be an iterable of str, got {type(keys).__name__}")
        ks = [_key(k, f"keys[{i}]") for i, k in enumerate(keys)]
        return list(self._call("multi_get", {"keys": ks}))

    def scan(self, start: str | None = None, end: str | None = None, *,
             prefix: str | None = None, reverse: bool = False,
             limit: int | None = None) -> list[tuple[str, str]]:
        """Pairs with ``start <= key < end`` (or starting with ``prefix``), at one log index."""
        return [(k, v) for k, v in self._call("scan", _scan_args(start, end, prefix, reverse,
                                                                  limit))]

    def transaction(self, *, read_only: bool = False) -> RemoteTransaction:
        """Begin a transaction on the leader (a context manager: commit on clean exit)."""
        return RemoteTransaction(self, read_only)

    def run_transaction(self, fn: Callable[[RemoteTransaction], T], *,
                        max_retries: int = DEFAULT_MAX_RETRIES,
                        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
                        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
                        read_only: bool = False) -> T:
        """Run ``fn(tx)`` and commit, retrying serialization failures and leader changes
        (the engine's loop and defaults, as KeyValueStore.run_transaction)."""
        return run_with_retries(lambda: self.transaction(read_only=read_only), fn,
                                max_retries=max_retries, backoff_base_s=backoff_base,
                                backoff_max_s=backoff_max,
                                retryable=(SerializationFailure, NotLeader, Unavailable))

    def outcome(self, ambiguous: AmbiguousCommit, timeout: float | None = None) -> bool:
        """Resolve an AmbiguousCommit of this client: True if the write applied, False if
        it never will. Raises Unavailable if no leader answers in time."""
        if ambiguous.session is None:
            raise engine.InvalidArgument("this AmbiguousCommit names no client session")
        client_id, seq = ambiguous.session
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        result = self._call("outcome", {"session": client_id, "seq": seq}, deadline=deadline)
        return bool(result["applied"])

    def status(self) -> list[dict[str, Any] | None]:
        """Each endpoint's ``status`` (None for one that did not answer)."""
        out: list[dict[str, Any] | None] = []
        for address in list(self.endpoints):
            try:
                with RpcConnection(address, self._cluster_id,
                                   connect_timeout_s=min(1.0, self.timeout)) as rpc:
                    out.append(rpc.call("status", {}, self.timeout))
            except (OSError, engine.EngineError):
                out.append(None)
        return out

    def call_node(self, address: Address, op: str, args: dict[str, Any]) -> Any:
        """Run ``op`` on the node at ``address`` only (for the CLI: status, transfer)."""
        with RpcConnection(address, self._cluster_id,
                           connect_timeout_s=min(1.0, self.timeout)) as rpc:
            return rpc.call(op, {**args, "timeout_ms": int(self.timeout * 1000)},
                            self.timeout + 0.5)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for pool in self._pool.values() for c in pool]
            self._pool = {}
        for c in conns:
            c.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteStore({','.join(format_address(a) for a in self.endpoints)})"


class RemoteTransaction(CommitOnExit):
    """An interactive transaction held by the leader for this connection."""

    def __init__(self, store: RemoteStore, read_only: bool) -> None:
        self._store = store
        self._session = store._session()
        self._request = self._session.next()  # the commit's number, reserved at begin
        self._done = False
        self.sequence: int | None = None
        try:
            begun, self._conn = store._call("begin", {"read_only": read_only, **self._request},
                                            keep=True)
        except BaseException:
            store._release(self._session)
            raise
        self._id: int = begun["txn"]
        self.snapshot_sequence: int = begun["snapshot"]

    def _op(self, op: str, args: dict[str, Any]) -> Any:
        if self._done:
            raise engine.TransactionClosed("transaction already committed, rolled back or "
                                           "failed")
        try:
            return self._conn.call(op, {"txn": self._id, **args},
                                   self._store.attempt_timeout + 0.25)
        except ConnectionLost as exc:
            self._end()
            raise NotLeader(f"connection to the leader lost; the transaction was rolled back "
                            f"there: {exc}") from exc
        except SerializationFailure:
            self._end()
            raise

    def get(self, key: str) -> str | None:
        result = self._op("tx_get", {"key": _key(key)})
        return None if result is None else str(result)

    def put(self, key: str, value: str) -> None:
        self._op("tx_put", {"key": _key(key), "value": _key(value, "value")})

    def delete(self, key: str) -> None:
        self._op("tx_delete", {"key": _key(key)})

    def scan(self, start: str | None = None, end: str | None = None, *,
             prefix: str | None = None, reverse: bool = False,
             limit: int | None = None) -> list[tuple[str, str]]:
        """Pairs in the range (as RemoteStore.scan), merged with this transaction's writes;
        the whole range counts as read."""
        return [(k, v) for k, v in self._op("tx_scan", _scan_args(start, end, prefix, reverse,
                                                                   limit))]

    def commit(self) -> None:
        """Commit; SerializationFailure or NotLeader if it did not, AmbiguousCommit if that
        could not be learned within the store's timeout."""
        if self._done:
            raise engine.TransactionClosed("transaction already committed, rolled back or "
                                           "failed")
        store = self._store
        try:
            result = self._conn.call("tx_commit", {"txn": self._id},
                                     store.attempt_timeout + 0.25)
        except (ConnectionLost, AmbiguousCommit) as exc:
            self._done = True
            self._conn.close()
            self._resolve(exc)
            return
        except BaseException:
            self._end()
            raise
        self.sequence = result["sequence"]
        self._end()

    def _resolve(self, cause: BaseException) -> None:
        """The commit's answer was lost: ask the (new) leader whether it applied."""
        store = self._store
        try:
            result = store._call("outcome", dict(self._request))
        except Unavailable as exc:  # the session is retired, not released: fate unknown
            raise AmbiguousCommit(f"commit's outcome unknown: {cause}; {exc}", index=0, term=0,
                                  session=(self._session.client_id, self._session.seq)) from exc
        store._release(self._session)
        if not result["applied"]:
            raise NotLeader(f"the commit was lost with its leader ({cause})") from cause
        self.sequence = result["index"]

    def rollback(self) -> None:
        """Discard the transaction (a no-op once it ended)."""
        if self._done:
            return
        try:
            self._conn.call("tx_rollback", {"txn": self._id}, self._store.attempt_timeout)
        except (ConnectionLost, engine.EngineError):
            pass  # the leader rolls back a transaction whose connection is gone
        self._end()

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._store._give(self._conn)
            self._store._release(self._session)

