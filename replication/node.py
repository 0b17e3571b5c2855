"""A replica: an engine store fed from the log, and -- while it leads -- the transaction manager.

::

    consensus --committed entries--> Applier --apply_many(index)--> Engine (node-i/engine-<g>)
                                                                    ^ snapshot reads
    client --> LeaderTransactions: begin (read index) -> reads -> certify+submit -> wait -> applied

The applier applies committed entries in log order at sequence = log index,
so every replica holds the same versions; ``Engine.apply_many`` is
idempotent, so after a restart it simply resumes from the engine's last
sequence. If the log no longer holds what the engine needs, the node
installs a checkpoint of a peer's engine (a new engine generation; the
``ENGINE`` pointer file is switched atomically) and continues from there.

An applier failure stops the node rather than let it diverge or lose a
write: an entry that passed the log's checksum but does not decode means an
encoder bug or a version mismatch (a non-deterministic
:class:`engine.CorruptionError`), and skipping it would silently drop an
acknowledged write on this replica only.

On the leader, :class:`LeaderTransactions` is the
:class:`engine.txn.TransactionBackend` of one term: its SSI certifier decides
and hands the write set to the log in one critical section (so log order is
certification order), the client waits outside it, and is acknowledged only
once the entry committed *and* the leader applied it. A new term gets a new
manager; transactions of the old one fail with NotLeader and are retried.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from _thread import LockType, allocate_lock
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import engine
from engine.fs import FileSystem, atomic_write
from engine.ssi import BlindWrite, BlindWrites, Certifier, TxnState
from engine.txn import Transaction
from replication.command import VERSION as COMMAND_VERSION
from replication.command import Command, Session, decode_command, encode_command
from replication.consensus import NodeConsensus, Proposal
from replication.errors import AmbiguousCommit, NodeDamaged, NotLeader, SnapshotNeeded, Unavailable
from replication.sessions import resolve_sessions

__all__ = ["LeaderTransactions", "Node"]

log = logging.getLogger(__name__)

Ops = dict[bytes, bytes | None]
T = TypeVar("T")
_FOLLOWER_APPLY_INTERVAL = 0.002
SnapshotSource = Callable[[int, int, str], int]


class Node:
    """Replica ``node_id`` of a cluster: its engine, applier and leader role."""

    def __init__(self, node_id: int, path: str, consensus: NodeConsensus,
                 engine_options: engine.Options, fs: FileSystem,
                 snapshot_source: SnapshotSource, *, timeout: float) -> None:
        self.id = node_id
        self.path = path
        self.timeout = timeout
        self._consensus = consensus
        self._options = engine_options
        self._fs = fs
        self._snapshot_source = snapshot_source
        # heap of (index, id, lock): a waiter blocks acquiring its own held raw
        # lock, the applier wakes it with one release (cheaper than an Event).
        self._waiters: list[tuple[int, int, LockType]] = []
        self._waiters_lock = threading.Lock()
        self._tm_lock = threading.Lock()
        self._tm: LeaderTransactions | None = None
        self._thread: threading.Thread | None = None
        self._applies_inline = False
        self._stopping = False
        self.engine: engine.Engine | None = None
        self.failed: BaseException | None = None
        self.damaged: NodeDamaged | None = None  # kept down until Cluster.repair
        self.snapshots_installed = 0

    # -- lifecycle -------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def alive(self) -> bool:
        return self.engine is not None and self.failed is None

    def start(self) -> None:
        """Open the engine and start the applier (a thread, if the runtime has threads)."""
        self._fs.mkdirs(self.path)
        self.engine = engine.Engine(self.engine_dir(), self._options, self._fs)
        self.failed = None
        self._stopping = False
        # Simulated, there is no thread: whoever steps the group applies (catch_up),
        # and so does wait_applied.
        self._thread = self._consensus.runtime.spawn(self._apply_loop,
                                                     f"stratakv-applier-{self.id}")
        self._applies_inline = self._thread is None

    def stop(self, *, crash: bool = False) -> None:
        """Stop applying and close the engine -- or with ``crash``, drop it unflushed."""
        self._stopping = True
        self._wake_waiters(all_of_them=True)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        tm, self._tm = self._tm, None
        if tm is not None:
            tm.retire("node stopped")
        if self.engine is not None:
            if crash:
                self.engine.simulate_crash()
            else:
                self.engine.close()
            self.engine = None

    def _generation(self) -> int:
        pointer = self._fs.join(self.path, "ENGINE")
        if not self._fs.exists(pointer):
            return 1
        text = self._fs.read_file(pointer).decode("ascii", "replace").strip()
        if not text.startswith("engine-") or not text[7:].isdigit():
            raise engine.CorruptionError(pointer, 0, f"bad engine pointer {text!r}")
        return int(text[7:])

    def engine_dir(self, generation: int | None = None) -> str:
        """The directory of engine ``generation`` (default: the one ``ENGINE`` names)."""
        g = self._generation() if generation is None else generation
        return self._fs.join(self.path, f"engine-{g:06d}")

    # -- applying ----------------------------------------------------------------------

    @property
    def applied(self) -> int:
        e = self.engine
        return e.last_sequence if e is not None else 0

    def _apply_loop(self) -> None:
        while not self._stopping:
            try:
                if self._consensus.leader_id != self.id:
                    # Nobody waits on a follower's apply: let entries gather for
                    # a couple of milliseconds and apply them in one batch.
                    time.sleep(_FOLLOWER_APPLY_INTERVAL)
                if self.catch_up() == 0:
                    self._consensus.wait_committed(self.applied + 1, 0.05, node=self.id)
            except BaseException as exc:
                if isinstance(exc, engine.ClosedError) and self.stopping:
                    return
                log.error("node %d: applier stopped, the node leaves the group: %r", self.id, exc)
                self.failed = exc
                tm = self._tm
                if tm is not None:
                    tm.retire("the applier failed")
                # A replica that cannot apply must not lead or vote: out of the group
                # until restarted (or repaired), so the others elect a leader that can.
                self._consensus.crash(self.id)
                self._wake_waiters(all_of_them=True)
                return

    def catch_up(self, limit: int = 2000) -> int:
        """Apply committed entries this node holds; return how many were applied."""
        e = self.engine
        if e is None:
            return 0
        try:
            entries = self._consensus.entries_after(e.last_sequence, limit, node=self.id)
        except SnapshotNeeded as need:
            try:
                self._install_snapshot(need.base_index)
            except (NotLeader, Unavailable) as exc:
                log.warning("node %d: needs a snapshot, none available yet: %s", self.id, exc)
                return 0
            return 1
        if not entries:
            return 0
        commands: list[tuple[int, Command]] = []
        for entry in entries:
            if not entry.payload:
                commands.append((entry.index, Command(b"", engine.WriteBatch(), None)))
            elif (isinstance(entry.attachment, engine.WriteBatch)
                    and entry.payload[0] == COMMAND_VERSION):  # the proposer's own batch
                commands.append((entry.index, Command(b"", entry.attachment, None)))
            else:  # a CorruptionError here stops the node (see the module docstring)
                commands.append((entry.index, decode_command(entry.payload, index=entry.index)))
        items = resolve_sessions(commands, e.get)
        e.apply_many(items)
        self._wake_waiters()
        return len(entries)

    def wait_applied(self, index: int, timeout: float) -> bool:
        """Wait until this node's engine has applied ``index``."""
        if self._applies_inline:  # no applier thread (simulated runtime): apply here
            while self.applied < index and self.catch_up():
                pass
            return self.applied >= index
        if self.applied >= index:
            return True
        wake = allocate_lock()
        wake.acquire()
        with self._waiters_lock:
            if self.applied >= index:
                return True
            if self._stopping:  # stop() already woke everyone: nobody would wake us
                return False
            heapq.heappush(self._waiters, (index, id(wake), wake))
        wake.acquire(timeout=max(0.0, timeout))
        return self.applied >= index

    def _wake_waiters(self, *, all_of_them: bool = False) -> None:
        """Wake the wait_applied callers whose index is applied (or all, on stop)."""
        applied = self.applied
        with self._waiters_lock:
            while self._waiters and (all_of_them or self._waiters[0][0] <= applied):
                heapq.heappop(self._waiters)[2].release()

    def _install_snapshot(self, base_index: int) -> None:
        """Replace the engine with a checkpoint of a peer that has applied past ``base_index``."""
        old_generation = self._generation()
        new_dir = self.engine_dir(old_generation + 1)
        if self._fs.exists(new_dir):
            self._fs.remove_tree(new_dir)
        seq = self._snapshot_source(self.id, base_index, new_dir)
        old = self.engine
        if old is not None:
            old.close()
        atomic_write(self._fs, self._fs.join(self.path, "ENGINE"),
                     lambda f: f.append(f"engine-{old_generation + 1:06d}\n".encode()))
        self._fs.remove_tree(self.engine_dir(old_generation))
        self.engine = engine.Engine(new_dir, self._options, self._fs)
        self.snapshots_installed += 1
        log.info("node %d: installed a snapshot at index %d (log starts after %d)",
                 self.id, seq, base_index)

    # -- the leader role ------------------------------------------------------------------

    def serving(self) -> bool:
        """Is this node leading with a transaction manager for the current term?"""
        tm = self._tm
        return tm is not None and tm.current()

    def certifier_state(self) -> dict[str, int] | None:
        """The current term's certifier state sizes while this node leads, else None."""
        tm = self._tm
        return tm.tracked() if tm is not None and tm.current() else None

    def transactions(self, timeout: float | None = None) -> LeaderTransactions:
        """This node's transaction manager for the current term; NotLeader if it does not lead.

        A new leader first applies every entry of earlier terms, waiting at
        most ``timeout`` seconds (default: the cluster's).
        """
        c = self._consensus
        tm = self._tm
        if tm is not None and tm.current():  # the common case, without the lock
            return tm
        if (c.leader_id != self.id or self.engine is None or self.failed is not None
                or self._stopping):
            raise NotLeader(f"node {self.id} is not the leader", leader=c.leader_id)
        if not c.leader_ready(self.id):
            raise NotLeader(f"node {self.id} was just elected and is not ready")
        term = c.term
        # Every entry of earlier terms must be applied first. Wait without the
        # lock: a crash or stop must never queue behind a waiting client.
        if not self.wait_applied(c.commit_index, self.timeout if timeout is None else timeout):
            raise Unavailable(f"node {self.id} could not apply the log in time")
        with self._tm_lock:
            tm = self._tm
            if tm is not None and tm.current():
                return tm
            if c.leader_id != self.id or c.term != term or self.engine is None or self._stopping:
                raise NotLeader(f"node {self.id} lost leadership while catching up")
            if tm is not None:
                tm.retire("a new term began")
            self._tm = LeaderTransactions(self, c, term)
            return self._tm

    def _read_point(self, timeout: float | None) -> engine.Engine:
        """Confirm leadership (read index) and wait until it is applied: a linearizable point.

        Returns the engine to read; whatever it holds now includes every
        write acknowledged before the call.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        index = self._consensus.read_index(self.id, timeout)
        if not self.wait_applied(index, max(0.0, deadline - time.monotonic())):
            raise Unavailable(f"node {self.id} did not apply index {index} in time")
        e = self.engine
        if e is None:
            raise NotLeader(f"node {self.id} went down during the read")
        return e

    def read(self, key: bytes, timeout: float | None = None) -> bytes | None:
        """A linearizable read: confirm leadership, wait for the read index, read."""
        e = self._read_point(timeout)
        try:
            return e.get(key)
        except engine.ClosedError:
            raise NotLeader(f"node {self.id} went down during the read") from None

    def read_snapshot(self, reader: Callable[[engine.Snapshot], T],
                      timeout: float | None = None) -> T:
        """``reader(snapshot)`` of one linearizable point: several keys or a scan at one index."""
        e = self._read_point(timeout)
        try:
            with e.snapshot() as snap:
                return reader(snap)
        except engine.ClosedError:
            raise NotLeader(f"node {self.id} went down during the read") from None


def _down_is_not_leader(items: Iterator[tuple[bytes, bytes]], node: int
                        ) -> Iterator[tuple[bytes, bytes]]:
    """Re-raise a scan's ClosedError (the node crashed) as the retryable NotLeader."""
    try:
        yield from items
    except engine.ClosedError:
        raise NotLeader(f"node {node} went down during the transaction") from None


class _Inflight:
    """A write set handed to the log and not yet settled with the certifier.

    Its commit settles either ``txn``, the transaction's certifier state, or
    ``blind``, a blind write's handle in the :class:`engine.ssi.BlindWrites`
    registry (which records it at submit if the certifier was tracking, else
    at the first ``begin`` whose snapshot cannot see it). All fields: caller
    holds ``LeaderTransactions._lock``.
    """

    __slots__ = ("blind", "index", "proposal", "txn")

    def __init__(self, index: int, *, txn: TxnState | None = None,
                 blind: BlindWrite | None = None) -> None:
        self.index = index
        self.txn = txn
        self.blind = blind
        self.proposal: Proposal | None = None


class LeaderTransactions:
    """The transaction backend of one leader term: an SSI certifier in front of the log.

    Invariants (``_lock`` guards the certifier and every structure below):

    1. Certification and ``submit`` happen in one ``_lock`` section, so log
       order is certification order (ssi.py invariant 1), and the entry must
       land in this manager's term at the index the certifier used.
    2. A blind write the certifier did not record at submit (nothing was
       tracked then) stays pending in ``_blind`` (:class:`engine.ssi.BlindWrites`)
       until it is visible in the leader's engine or lost, and is settled --
       removed -- only under ``_lock``. ``begin`` takes its snapshot and
       records every such write the snapshot cannot see (``on_begin``) in one
       ``_lock`` section -- so no write is in neither the snapshot nor the
       certifier. (The removal once ran without the lock, between a snapshot
       and the copy of this set, and a transaction overwrote a put it never
       saw: a lost update.)
    3. Every certifier state is settled: committed once its entry is applied
       here, aborted once the entry is lost. The client that waits settles
       it; if it stops waiting first (AmbiguousCommit, or committed but not
       yet applied here) the write is an orphan, settled by the next
       ``begin`` or commit. (States recorded by ``begin`` were once dropped;
       they stayed PENDING and the certifier never freed anything behind
       them.)
    """

    def __init__(self, node: Node, consensus: NodeConsensus, term: int) -> None:
        e = node.engine
        if e is None:
            raise NotLeader(f"node {node.id} is down")
        self.options = e.options
        self.term = term
        self._node = node
        self._engine = e
        self._consensus = consensus
        self._certifier = Certifier("ssi", e.options.max_txn_age_s)
        self._blind = BlindWrites(self._certifier)  # writes outside transactions (invariant 2)
        self._lock = threading.Lock()
        self._snapshots: dict[int, engine.Snapshot] = {}
        self._timeouts: dict[int, float] = {}  # txn id -> its store's timeout, for commit
        self._sessions: dict[int, Session] = {}  # txn id -> its client's session request
        self._orphans: list[_Inflight] = []  # writes whose client stopped waiting
        self._unsettled = 0  # certified write sets not yet settled (waited on or orphans)
        self._retired: str | None = None

    def current(self) -> bool:
        c = self._consensus
        node = self._node
        return (self._retired is None and c.leader_id == node.id and c.term == self.term
                and node.engine is self._engine and node.failed is None)

    def retire(self, why: str) -> None:
        if self._retired is None:
            log.info("node %d: transaction manager of term %d retired (%s)", self._node.id,
                     self.term, why)
            self._retired = why

    def _settle(self, rec: _Inflight, committed: bool) -> None:
        """Commit or abort ``rec``'s certifier state and forget it. Holds _lock.

        Committed means applied here: visible to every snapshot taken after.
        """
        self._unsettled -= 1
        if rec.txn is not None:
            if committed:
                self._certifier.committed(rec.txn)
            else:
                self._certifier.abort(rec.txn, "lost")
        if rec.blind is not None:
            self._blind.settle(rec.blind, committed, reason="lost")

    def _settle_orphans(self) -> None:
        """Settle the orphans whose fate is now known (invariant 3). Holds _lock."""
        keep = []
        applied = self._node.applied
        for rec in self._orphans:
            outcome = None if rec.proposal is None else rec.proposal.outcome
            if outcome is False:
                self._settle(rec, False)
            elif outcome and applied >= rec.index:
                self._settle(rec, True)
            else:
                keep.append(rec)
        self._orphans = keep

    def _check(self) -> None:
        if not self.current():
            raise NotLeader(f"node {self._node.id} no longer leads term {self.term}"
                            f"{' (' + self._retired + ')' if self._retired else ''}",
                            leader=self._consensus.leader_id)

    @property
    def stats(self) -> dict[str, Any]:
        return {"commits": self._certifier.commits, "aborts": dict(self._certifier.aborts),
                **self._certifier.tracked()}

    def tracked(self) -> dict[str, int]:
        """The certifier's state sizes after settling what can be settled (for tests, stats)."""
        with self._lock:
            self._settle_orphans()
            self._certifier.expire(self._consensus.runtime.now())
            return {**self._certifier.tracked(), "unsettled_writes": self._unsettled}

    # -- beginning ---------------------------------------------------------------------

    def begin(self, *, read_only: bool = False, timeout: float | None = None,
              commit_timeout: float | None = None, session: Session | None = None
              ) -> Transaction:
        """A transaction reading a snapshot at least as new as the commit index right now.

        Beginning waits at most ``timeout`` seconds, its commit at most
        ``commit_timeout`` (both default to the cluster's timeout). ``session``:
        the network client's request its commit is (:mod:`replication.sessions`).
        """
        node = self._node
        timeout = node.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        index = self._consensus.read_index(node.id, timeout)
        if not node.wait_applied(index, max(0.0, deadline - time.monotonic())):
            raise Unavailable(f"node {node.id} did not apply index {index} in time")
        now = self._consensus.runtime.now()
        with self._lock:
            self._check()
            # Settle orphans *before* the snapshot: one settled as committed after it
            # would leave the pending blind writes although the snapshot cannot see
            # it (invariant 2).
            if self._orphans:
                self._settle_orphans()
            snap = self._engine.snapshot()
            self._certifier.expire(now)
            self._blind.on_begin(snap.sequence, now)  # invariant 2
            state = self._certifier.begin(snap.sequence, now, read_only=read_only)
            self._snapshots[state.txn_id] = snap
            self._timeouts[state.txn_id] = node.timeout if commit_timeout is None \
                else commit_timeout
            if session is not None:
                self._sessions[state.txn_id] = session
        return Transaction(self, state)

    # -- engine.txn.TransactionBackend -------------------------------------------------------

    def read(self, state: TxnState, key: bytes) -> bytes | None:
        with self._lock:
            self._certifier.on_read(state, key, self._consensus.runtime.now())
            snap = self._snapshots[state.txn_id]
        try:
            return snap.get(key)
        except engine.ClosedError:
            raise NotLeader(f"node {self._node.id} went down during the transaction") from None

    def scan(self, state: TxnState, lo: bytes | None, hi: bytes | None, reverse: bool
             ) -> Iterator[tuple[bytes, bytes]]:
        with self._lock:
            self._certifier.on_scan(state, lo, hi, self._consensus.runtime.now())
            snap = self._snapshots[state.txn_id]
        try:
            return _down_is_not_leader(snap.scan(lo, hi, reverse=reverse), self._node.id)
        except engine.ClosedError:
            raise NotLeader(f"node {self._node.id} went down during the transaction") from None

    def rollback(self, state: TxnState) -> None:
        with self._lock:
            self._certifier.abort(state)
            snap = self._snapshots.pop(state.txn_id, None)
            self._timeouts.pop(state.txn_id, None)
            self._sessions.pop(state.txn_id, None)
        if snap is not None:
            snap.release()

    def commit(self, state: TxnState, ops: Ops, nbytes: int) -> int | None:
        with self._lock:
            snap = self._snapshots.pop(state.txn_id, None)
            timeout = self._timeouts.pop(state.txn_id, self._node.timeout)
            session = self._sessions.pop(state.txn_id, None)
        try:
            if not ops:
                with self._lock:
                    self._certifier.commit_empty(state, self._consensus.runtime.now())
                return None

            def certify(seq: int) -> _Inflight:
                self._certifier.certify(state, ops, seq, self._consensus.runtime.now())
                return _Inflight(seq, txn=state)

            return self._propose(ops, certify, timeout, session)
        finally:
            if snap is not None:
                snap.release()

    # -- writes outside transactions -----------------------------------------------------------

    def write(self, ops: Ops, timeout: float | None = None,
              session: Session | None = None) -> int:
        """A blind write (put/delete): never conflicts, but is recorded for running transactions.

        ``ops`` must already be checked (keys, values, sizes): the caller
        builds it through an ``engine.WriteBatch``. ``session``: the network
        client's request this is; a retried request applies only once.
        """
        def record(seq: int) -> _Inflight:
            return _Inflight(seq, blind=self._blind.submit(seq, ops, self._consensus.runtime.now()))

        return self._propose(ops, record, self._node.timeout if timeout is None else timeout,
                             session)

    def _propose(self, ops: Ops, certify: Callable[[int], _Inflight], timeout: float,
                 session: Session | None = None) -> int:
        """Certify and submit in one critical section; wait outside; settle the certifier."""
        txn_id = self._consensus.runtime.random_id()
        payload = encode_command(txn_id, ops, session)
        batch = engine.WriteBatch(self.options)
        batch.ops.update(ops)  # already checked by the transaction or the store
        c = self._consensus
        with self._lock:
            self._check()
            if self._orphans:
                self._settle_orphans()
            index = c.next_index(self._node.id)
            rec = certify(index)  # may raise SerializationFailure
            self._unsettled += 1
            try:
                rec.proposal = c.submit(payload, node=self._node.id, expect_index=index,
                                        expect_term=self.term, attachment=batch)
            except BaseException:
                self._settle(rec, False)
                raise
        # One wait, for the leader to apply the index: by then the entry's fate
        # is decided (an index is applied only once committed). Only if that
        # does not happen in time ask the proposal itself, in the time left.
        proposal = rec.proposal
        deadline = time.monotonic() + timeout
        try:
            applied = self._node.wait_applied(index, timeout)
            committed = proposal.outcome if applied else None
            if committed is None:
                committed = proposal.wait(max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            # The entry may still commit: its states stay PENDING in the
            # certifier (they keep conflicting with later ones) until settled.
            with self._lock:
                self._orphans.append(rec)
            if isinstance(exc, AmbiguousCommit):
                raise AmbiguousCommit(str(exc), index=exc.index, term=exc.term,
                                      txn_id=txn_id) from None
            raise
        with self._lock:
            if not committed:
                self._settle(rec, False)
            elif applied:
                self._settle(rec, True)
            else:
                # Committed, not yet applied here: stay PENDING until it is. (Never
                # start a new certifier in the same term: it would not know the
                # entries still in flight -- that broke serializability once.)
                self._orphans.append(rec)
        if not committed:
            raise NotLeader(f"entry {index} was not committed: leadership changed",
                            leader=c.leader_id)
        return index
