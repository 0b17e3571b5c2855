"""RaftNode: the pure Raft state machine of one node (etcd raft's RawNode, in Python).

The node does no I/O: no sockets, files, threads, clock or global random.
Time is :meth:`RaftNode.tick` calls; randomness is the injected seeded
``random.Random``; input is :meth:`step` (a message from a peer) and the
local requests (:meth:`propose`, :meth:`read_index`, :meth:`campaign`,
:meth:`transfer_leadership`); output is a :class:`Ready` that the driver
handles and then hands back with :meth:`advance`.

The driver's loop, and the one rule it must follow::

        tick() / step(msg) / propose(data) / read_index(ctx) ...
                               │
                     has_ready()? ── no ──▶ wait for the next input
                               │ yes
                           rd = ready()
                               │
      1. persist  rd.snapshot (install the checkpoint it names and restart the
                  log after it), then rd.entries, then rd.hard_state (one sync)
      2. send     rd.late_messages           (only after step 1 is durable;
                  rd.early_messages may leave before step 1)
      3. apply    rd.committed_entries, in order (after the snapshot's state);
                  answer rd.read_states once applied >= their index;
                  fail rd.dropped_reads (NotLeader); note rd.soft_state
      4. advance(rd)                  (before the next ready())

**persist → send → apply → advance.** Step 2 after step 1: a message may
promise what the hard state and entries say (a vote, an acknowledged
append); if it left before they were durable, a crash would let this node
break the promise (vote twice, or "lose" an entry a quorum was counted on).
A leader's appends and heartbeats promise nothing (``early_messages``):
the leader counts its own copy of an entry only in :meth:`RaftNode.advance`,
after it is persisted, so they may leave while the leader writes -- the
leader's and the followers' syncs then overlap (Raft dissertation §10.2.1).

Invariants the core keeps (violations raise :class:`RaftInvariantError`):

1. At most one vote per term (``vote`` is persisted with ``term``).
2. A leader never overwrites or deletes its own entries; a follower
   truncates only from the first entry whose term conflicts, never a
   committed one.
3. A leader counts its own entries as matched when it appends them; that
   is safe because no message carrying them leaves before the Ready that
   persists them. It commits by counting only entries of its own term (§5.4.2);
   earlier-term entries commit through them. A new leader appends an
   empty no-op entry at once so this happens without waiting for a client.
4. ``snapshot index <= applied <= committed <= last index``.
5. A read state is emitted only for a read whose heartbeat round a quorum
   acknowledged in the term it was recorded; a leader that steps down
   drops its pending reads (listed in ``Ready.dropped_reads``).

Choices (documented here, tested in ``tests/test_raft_*``):

* ``read_index`` on a follower raises NotLeader with the leader hint (no
  forwarding): the driver routes reads to the leader, like proposals.
  On a leader that has not committed an entry of its term yet it raises
  ProposalDropped (retry after the no-op commits).
* Proposals are appended at once but sent at the next ``ready()``: all
  proposals between two ready cycles leave as one AppendEntries per
  follower (split at ``max_append_bytes``). Commit-index updates are
  coalesced the same way (one append per follower per Ready).
* A follower in snapshot state whose snapshot answer was lost returns to
  probing after ``election_timeout_ticks`` (the driver may also call
  :meth:`report_snapshot`).

Snapshots and compaction: the application compacts its storage itself, up
to an index it has applied (``MemoryStorage.compact(index, data)``; the
durable ``NodeLog.compact`` later), recording a reference to its checkpoint
there. The core notices through ``Storage.first_index``: a follower that
needs an entry below it gets an InstallSnapshot (index, term, peers, data
reference), its progress enters snapshot state, and the InstallSnapshotResponse
(or :meth:`report_snapshot` from the driver streaming the checkpoint) resumes
probing. A follower accepts a snapshot newer than its commit index and
reports it in ``Ready.snapshot``; the driver installs the checkpoint, resets
its log to start after the snapshot, and applies the entries that follow.

Thread-safety: not thread-safe. The driver serialises every call (one
thread, or a lock around each call); a Ready belongs to the caller until
``advance``.

Membership is static (the ``peers`` given at construction); the snapshot
metadata carries it so a future configuration change has a place to live.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from enum import IntEnum

from replication.raft.errors import (
    LogCompacted,
    NotLeader,
    ProposalDropped,
    RaftInvariantError,
)
from replication.raft.log import RaftLog, Storage
from replication.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
    entry_bytes,
)
from replication.raft.progress import Progress, ProgressState
from replication.raft.quorum import VoteResult, committed_index, vote_result

__all__ = ["RaftConfig", "RaftNode", "ReadState", "Ready", "Role", "SoftState", "Status"]

log = logging.getLogger(__name__)


class Role(IntEnum):
    """A node's role. Never renumber."""

    FOLLOWER = 1
    PRE_CANDIDATE = 2
    CANDIDATE = 3
    LEADER = 4


class _Campaign(IntEnum):
    PRE_ELECTION = 1  # pre-vote phase: ask without raising the term
    ELECTION = 2  # a real election: term + 1, vote for self
    TRANSFER = 3  # a real election asked for by the leader (TimeoutNow): ignores leases


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tuning of one node; validated on construction (ValueError naming the field).

    ``election_timeout_ticks``: a follower that hears no leader for a
    randomized [T, 2T) ticks campaigns; a leader with check-quorum steps
    down after T ticks without hearing from a quorum.
    ``heartbeat_ticks``: the leader's heartbeat interval; must be below the
    election timeout or followers would campaign between heartbeats.
    ``pre_vote``: campaign in a pre-vote phase first (§9.6), so a node that
    cannot win does not raise terms and depose a healthy leader.
    ``check_quorum``: leaders step down without a live quorum, and
    followers that heard from a leader within the election timeout ignore
    votes (leader lease / stickiness).
    ``max_append_bytes``: payload bytes per AppendEntries (at least one
    entry is always sent).
    ``max_inflight_msgs``/``max_inflight_bytes``: unacknowledged appends per
    follower in replicate state (bytes: 0 means no byte limit).
    """

    election_timeout_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_append_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("election_timeout_ticks", "heartbeat_ticks", "max_append_bytes",
                     "max_inflight_msgs", "max_inflight_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, not {type(value).__name__}")
            lowest = 0 if name == "max_inflight_bytes" else 1
            if value < lowest:
                raise ValueError(f"{name} must be >= {lowest}, got {value}")
        for name in ("pre_vote", "check_quorum"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        if self.heartbeat_ticks >= self.election_timeout_ticks:
            raise ValueError(f"heartbeat_ticks ({self.heartbeat_ticks}) must be below "
                             f"election_timeout_ticks ({self.election_timeout_ticks})")


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed linearizable read: serve ``context`` once applied >= ``index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the driver about (not persisted)."""

    leader: int | None
    role: Role


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the driver must do, in order: persist, send, apply (see module docstring).

    ``snapshot``: install (checkpoint and log reset, durably) before
    ``entries``; a follower received one from the leader.
    ``entries``: append to stable storage (replacing any suffix they overlap).
    ``hard_state``: persist if not None (it changed since the last Ready).
    ``must_sync``: term, vote, entries or snapshot changed, so the write must be synced
    before ``messages`` leave (a commit-only change need not be).
    ``messages``: send after persisting -- except ``early_messages`` (the
    leader's appends and heartbeats), which may leave before.
    ``committed_entries``: apply in order after persisting (they may
    include some of ``entries``).
    ``read_states``: confirmed reads; ``dropped_reads``: contexts of reads
    that will never be confirmed (this node stopped leading): fail them.
    ``soft_state``: the new leader/role if it changed, else None.
    """

    snapshot: SnapshotMeta | None
    entries: tuple[LogEntry, ...]
    hard_state: HardState | None
    must_sync: bool
    messages: tuple[Message, ...]
    committed_entries: tuple[LogEntry, ...]
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[bytes, ...]
    soft_state: SoftState | None

    @property
    def early_messages(self) -> tuple[Message, ...]:
        """Messages that may leave before this Ready is persisted: appends and heartbeats.

        They promise nothing about this node's storage: a leader counts its own
        entries toward a commit only once :meth:`RaftNode.advance` says they are
        persisted, and only leaders send them.
        """
        return tuple(m for m in self.messages if isinstance(m, AppendEntries | Heartbeat))

    @property
    def late_messages(self) -> tuple[Message, ...]:
        """Messages that must wait for this Ready's write: votes, responses, the rest."""
        return tuple(m for m in self.messages if not isinstance(m, AppendEntries | Heartbeat))


@dataclass(frozen=True, slots=True)
class Status:
    """A point-in-time description of a node, for tests, logs and operators."""

    id: int
    role: Role
    term: int
    vote: int | None
    leader: int | None
    commit: int
    applied: int
    first_index: int
    last_index: int
    lead_transferee: int | None
    progress: dict[int, tuple[ProgressState, int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _PendingRead:
    context: bytes
    index: int
    acks: set[int]


class RaftNode:
    """One Raft node's state machine. See the module docstring for the driver contract."""

    def __init__(self, id: int, peers: tuple[int, ...] | list[int], storage: Storage, *,
                 rng: random.Random, config: RaftConfig | None = None,
                 applied: int = 0) -> None:
        """Start (or restart) node ``id`` of voters ``peers`` from ``storage``.

        ``applied``: the last index the application already applied (its
        state survives restarts); committed entries after it are emitted
        again. A stored snapshot counts as applied: the driver installs a
        snapshot's checkpoint when it persists the snapshot (Ready step 1),
        so after a restart the state machine is at least at the snapshot.
        """
        if id < 1:
            raise ValueError(f"node id must be >= 1, got {id}")
        if id not in peers or any(p < 1 for p in peers) or len(set(peers)) != len(peers):
            raise ValueError(f"peers must be distinct ids >= 1 including {id}, got {peers}")
        self.id = id
        self.config = config if config is not None else RaftConfig()
        self.peers = tuple(sorted(peers))
        self._others = tuple(p for p in self.peers if p != id)
        self._rng = rng
        self._storage = storage
        self._log = RaftLog(storage)
        hs = storage.initial_state()
        if hs.commit > self._log.last_index():
            raise RaftInvariantError(f"node {id}: stored commit {hs.commit} is beyond the "
                                     f"stored last index {self._log.last_index()}")
        self.term = hs.term
        self.vote = hs.vote
        self._log.commit_to(hs.commit)
        if applied > self._log.committed:
            raise ValueError(f"applied {applied} is beyond the commit index {self._log.committed}")
        self._log.applied = max(self._log.applied, applied)
        self.role = Role.FOLLOWER
        self.lead: int | None = None
        self._ticks = 0  # ticks since start: the clock of the check-quorum window
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self.config.election_timeout_ticks
        self._votes: dict[int, bool] = {}
        self._prs: dict[int, Progress] = {}
        self._lead_transferee: int | None = None
        self._pending_reads: list[_PendingRead] = []
        self._broadcast_pending = False
        self._append_wanted: set[int] = set()
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._prev_hard = hs
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._outstanding: Ready | None = None
        self._become_follower(self.term, None)
        log.info("node %d starts at term %d, commit %d, last index %d", id, self.term,
                 self._log.committed, self._log.last_index())

    # -- queries --------------------------------------------------------------------

    @property
    def raft_log(self) -> RaftLog:
        """The node's log (read it; never change it from outside)."""
        return self._log

    def status(self) -> Status:
        progress = {p: (pr.state, pr.match, pr.next) for p, pr in self._prs.items()}
        return Status(self.id, self.role, self.term, self.vote, self.lead, self._log.committed,
                      self._log.applied, self._log.first_index(), self._log.last_index(),
                      self._lead_transferee, progress)

    # -- local inputs -----------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._ticks += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._randomized_timeout:
                self._election_elapsed = 0
                self._hup(_Campaign.PRE_ELECTION if self.config.pre_vote else _Campaign.ELECTION)

    def campaign(self) -> None:
        """Start an election now (through pre-vote if configured); no-op on a leader."""
        self._election_elapsed = 0
        self._hup(_Campaign.PRE_ELECTION if self.config.pre_vote else _Campaign.ELECTION)

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log; return its index (not yet committed).

        Raises NotLeader (with ``leader`` hint) on a non-leader,
        ProposalDropped during a leadership transfer, ValueError for an
        empty payload (reserved for the leader's no-op).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if not data:
            raise ValueError("an empty payload is reserved for the leader's no-op entry")
        if self.role != Role.LEADER:
            raise NotLeader(f"node {self.id} is not the leader", leader=self.lead)
        if self._lead_transferee is not None:
            raise ProposalDropped(f"node {self.id} is transferring leadership to "
                                  f"{self._lead_transferee}")
        return self._append_payloads([bytes(data)])

    def read_index(self, context: bytes) -> None:
        """Start a linearizable read identified by ``context`` (non-empty, unique).

        The outcome arrives in a later Ready: a ReadState in ``read_states``
        (serve the read once applied >= its index) or the context in
        ``dropped_reads`` (leadership was lost). Raises NotLeader on a
        non-leader, ProposalDropped before this leader committed an entry of
        its term.
        """
        if not context:
            raise ValueError("a read needs a non-empty context")
        if self.role != Role.LEADER:
            raise NotLeader(f"node {self.id} is not the leader", leader=self.lead)
        if self._log.term(self._log.committed) != self.term:
            raise ProposalDropped(f"node {self.id} has not committed an entry of term "
                                  f"{self.term} yet")
        if any(r.context == context for r in self._pending_reads):
            raise ValueError(f"read {context!r} is already pending")
        if not self._others:
            self._read_states.append(ReadState(self._log.committed, bytes(context)))
            return
        self._pending_reads.append(_PendingRead(bytes(context), self._log.committed, {self.id}))
        self._bcast_heartbeat(bytes(context))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to ``to``: catch it up, then tell it to campaign (TimeoutNow).

        Proposals are refused until the transfer ends: when ``to`` wins, or
        after an election timeout (aborted). Raises NotLeader on a non-leader.
        """
        if self.role != Role.LEADER:
            raise NotLeader(f"node {self.id} is not the leader", leader=self.lead)
        if to not in self.peers:
            raise ValueError(f"node {to} is not a peer")
        if to == self.id or to == self._lead_transferee:
            return
        log.info("node %d transfers leadership to %d at term %d", self.id, to, self.term)
        self._lead_transferee = to
        self._election_elapsed = 0
        if self._prs[to].match == self._log.last_index():
            self._send(TimeoutNow(self.id, to, self.term))
        else:
            self._send_append(to)

    def report_snapshot(self, to: int, success: bool) -> None:
        """The driver's snapshot stream to ``to`` ended; on failure probe again at once."""
        pr = self._prs.get(to)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not success:
            pr.pending_snapshot = 0
        pr.become_probe()

    def forget_peer(self, to: int) -> None:
        """Stop counting what ``to`` acknowledged: its storage is about to be deleted.

        The repair of a damaged replica re-seeds it from a checkpoint; the
        entries it held no longer exist, so its old ``match`` must not count
        toward any later commit. Its progress restarts as for a new leader
        (probing from the end of the log). A no-op on a non-leader, whose
        progress a future term builds afresh anyway.
        """
        if to not in self.peers or to == self.id:
            raise ValueError(f"node {to} is not another peer of node {self.id}")
        if self.role != Role.LEADER:
            return
        cfg = self.config
        pr = Progress(self._log.last_index() + 1, cfg.max_inflight_msgs, cfg.max_inflight_bytes)
        pr.last_active = self._prs[to].last_active
        self._prs[to] = pr
        log.info("node %d forgets what node %d acknowledged", self.id, to)

    # -- ready / advance ------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self._log.committed)

    def has_ready(self) -> bool:
        """Is there anything to persist, send or apply?"""
        return bool(
            ((self._broadcast_pending or self._append_wanted) and self.role == Role.LEADER)
            or self._msgs or self._read_states or self._dropped_reads
            or self._log.unstable.entries or self._log.unstable.snapshot is not None
            or self._log.has_next_committed()
            or self._hard_state() != self._prev_hard
            or SoftState(self.lead, self.role) != self._prev_soft)

    def ready(self) -> Ready:
        """Collect the work for the driver; call :meth:`advance` with it when done."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        if self.role == Role.LEADER and (self._broadcast_pending or self._append_wanted):
            wanted = self._others if self._broadcast_pending else sorted(self._append_wanted)
            self._broadcast_pending = False
            self._append_wanted.clear()
            for p in wanted:
                self._send_append(p)
        hs = self._hard_state()
        hard: HardState | None = hs if hs != self._prev_hard else None
        soft = SoftState(self.lead, self.role)
        entries = tuple(self._log.unstable.entries)
        voted = (hs.term, hs.vote) != (self._prev_hard.term, self._prev_hard.vote)
        must_sync = bool(entries) or self._log.unstable.snapshot is not None or voted
        rd = Ready(
            snapshot=self._log.unstable.snapshot,
            entries=entries,
            hard_state=hard,
            must_sync=must_sync,
            messages=tuple(self._msgs),
            committed_entries=tuple(self._log.next_committed_entries()),
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
            soft_state=soft if soft != self._prev_soft else None,
        )
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        self._prev_hard = hs
        self._prev_soft = soft
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        if rd.snapshot is not None:
            self._log.stable_snap_to(rd.snapshot.index)
            self._log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
            if self.role == Role.LEADER and self._log.term(last.index) == last.term:
                # Now, and not at append, the leader's own copy counts toward a commit.
                self._prs[self.id].maybe_update(last.index)
                if self._maybe_commit():
                    self._broadcast_pending = True
        if rd.committed_entries:
            self._log.applied_to(rd.committed_entries[-1].index)

    # -- messages ----------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def step(self, m: Message) -> None:
        """Handle a message from a peer."""
        if m.to != self.id:
            raise ValueError(f"message for node {m.to} stepped into node {self.id}")
        if m.frm not in self.peers or m.frm == self.id:
            raise ValueError(f"message from unknown node {m.frm}")
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if not m.transfer and self._in_lease():
                    log.info("node %d (term %d, leader %s) ignores a vote request from %d "
                             "at term %d: leader lease", self.id, self.term, self.lead,
                             m.frm, m.term)
                    return
                if not m.pre_vote:
                    self._become_follower(m.term, None)
            elif isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
                pass  # a pre-vote grant carries the future term we have not adopted
            else:
                lead = m.frm if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else None
                self._become_follower(m.term, lead)
        elif m.term < self.term:
            self._step_stale(m)
            return
        if isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _in_lease(self) -> bool:
        return (self.config.check_quorum and self.lead is not None
                and self._election_elapsed < self.config.election_timeout_ticks)

    def _step_stale(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat) and (
                self.config.check_quorum or self.config.pre_vote):
            # A leader of an old term: tell it our term so it steps down. Without
            # this a node whose term rose alone could never rejoin (the leader
            # ignores it, and with leases everyone ignores its campaigns).
            self._send(AppendEntriesResponse(self.id, m.frm, self.term, index=0))
        elif isinstance(m, RequestVote) and m.pre_vote:
            self._send(RequestVoteResponse(self.id, m.frm, self.term, False, pre_vote=True))

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (self.vote == m.frm or (self.vote is None and self.lead is None)
                    or (m.pre_vote and m.term > self.term))
        if can_vote and self._log.is_up_to_date(m.last_index, m.last_term):
            self._send(RequestVoteResponse(self.id, m.frm, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(RequestVoteResponse(self.id, m.frm, self.term, False, m.pre_vote))

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._election_elapsed = 0
            self.lead = m.frm
            self._handle_from_leader(m)
        elif isinstance(m, TimeoutNow):
            log.info("node %d got TimeoutNow from %d at term %d: campaigning", self.id, m.frm,
                     self.term)
            self._hup(_Campaign.TRANSFER)

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._become_follower(self.term, m.frm)
            self._handle_from_leader(m)
        elif isinstance(m, RequestVoteResponse):
            if m.pre_vote != (self.role == Role.PRE_CANDIDATE):
                return
            self._votes.setdefault(m.frm, m.granted)
            result = vote_result(self.peers, self._votes)
            if result == VoteResult.WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(_Campaign.ELECTION)
                else:
                    self._become_leader()
            elif result == VoteResult.LOST:
                self._become_follower(self.term, None)

    def _handle_from_leader(self, m: AppendEntries | Heartbeat | InstallSnapshot) -> None:
        if isinstance(m, AppendEntries):
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self._log.commit_to(m.commit)
            self._send(HeartbeatResponse(self.id, m.frm, self.term, m.context))
        else:
            self._handle_snapshot(m)

    def _handle_append(self, m: AppendEntries) -> None:
        lg = self._log
        if m.prev_index < lg.committed:
            self._send(AppendEntriesResponse(self.id, m.frm, self.term, index=lg.committed))
            return
        last = lg.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last is not None:
            self._send(AppendEntriesResponse(self.id, m.frm, self.term, index=last))
            return
        hint = lg.find_conflict_by_term(min(m.prev_index, lg.last_index()), m.prev_term)
        log.debug("node %d rejects append at %d/%d from %d; hint %d", self.id, m.prev_index,
                  m.prev_term, m.frm, hint)
        self._send(AppendEntriesResponse(self.id, m.frm, self.term, index=m.prev_index,
                                         reject=True, reject_hint=hint,
                                         log_term=lg.term(hint) or 0))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        s = m.snapshot
        lg = self._log
        if s.index <= lg.committed:
            index = lg.committed  # stale: we already have it all
        elif lg.match_term(s.index, s.term):
            lg.commit_to(s.index)  # we hold the entry: just fast-forward the commit
            index = lg.committed
        else:
            log.info("node %d installs snapshot %d/%d from %d", self.id, s.index, s.term, m.frm)
            lg.restore(s)
            index = lg.last_index()
        self._send(InstallSnapshotResponse(self.id, m.frm, self.term, index))

    # -- leader ----------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        pr.last_active = self._ticks
        if isinstance(m, AppendEntriesResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self._log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._ack_read(m.context, m.frm)
        elif isinstance(m, InstallSnapshotResponse):
            if pr.state == ProgressState.SNAPSHOT:
                if m.index < pr.pending_snapshot:
                    pr.pending_snapshot = 0  # it did not install ours: probe from its match
                pr.maybe_update(m.index)
                pr.become_probe()
                self._send_append(m.frm)
            else:
                pr.maybe_update(m.index)

    def _handle_append_response(self, m: AppendEntriesResponse, pr: Progress) -> None:
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe = self._log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        if m.index > self._log.last_index():
            raise RaftInvariantError(f"node {m.frm} acknowledged {m.index} beyond the leader's "
                                     f"last index {self._log.last_index()}")
        was_paused = pr.is_paused()
        # A probe answered at the known match (e.g. right after a snapshot)
        # also proves where the follower's log ends: start replicating.
        if not pr.maybe_update(m.index) and not (
                pr.state == ProgressState.PROBE and pr.match == m.index):
            return
        if pr.state == ProgressState.PROBE or (
                pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot):
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._broadcast_pending = True
        elif was_paused:
            self._append_wanted.add(m.frm)  # it may not know the commit index: tell it soon
        while self._maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self._lead_transferee and pr.match == self._log.last_index():
            log.info("node %d: transferee %d caught up; sending TimeoutNow", self.id, m.frm)
            self._send(TimeoutNow(self.id, m.frm, self.term))

    def _ack_read(self, context: bytes, frm: int) -> None:
        reads = self._pending_reads
        pos = next((i for i, r in enumerate(reads) if r.context == context), -1)
        if pos < 0:
            return  # already confirmed (a late or duplicate answer) or dropped
        r = reads[pos]
        r.acks.add(frm)
        if vote_result(self.peers, dict.fromkeys(r.acks, True)) != VoteResult.WON:
            return
        # A quorum confirmed leadership after every earlier read was recorded too.
        for done in reads[: pos + 1]:
            self._read_states.append(ReadState(done.index, done.context))
        del reads[: pos + 1]

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        timeout = self.config.election_timeout_ticks
        for p in self._others:
            pr = self._prs[p]
            if pr.state == ProgressState.SNAPSHOT:
                pr.state_ticks += 1
                if pr.state_ticks >= timeout:
                    log.info("node %d: no answer to the snapshot for %d; probing again",
                             self.id, p)
                    pr.become_probe()
        if self.config.check_quorum and not self._quorum_active():
            log.warning("node %d steps down at term %d: no quorum heard from within %d ticks",
                        self.id, self.term, timeout)
            self._become_follower(self.term, None)
            return
        if self._election_elapsed >= timeout:
            self._election_elapsed = 0
            if self._lead_transferee is not None:
                log.info("node %d aborts the transfer to %d", self.id, self._lead_transferee)
                self._lead_transferee = None
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            ctx = self._pending_reads[-1].context if self._pending_reads else b""
            self._bcast_heartbeat(ctx)

    def _quorum_active(self) -> bool:
        """Has a quorum (counting this leader) been heard from within the election timeout?"""
        since = self._ticks - self.config.election_timeout_ticks
        heard = 1 + sum(1 for p in self._others if self._prs[p].last_active > since)
        return heard >= len(self.peers) // 2 + 1

    def _append_payloads(self, payloads: list[bytes]) -> int:
        last = self._log.last_index()
        entries = [LogEntry(last + i + 1, self.term, p) for i, p in enumerate(payloads)]
        last = self._log.append(entries)
        # The leader counts its own copy only once it is persisted (advance), so
        # its appends may leave before its own write (Raft dissertation 10.2.1).
        self._broadcast_pending = True
        return last

    def _stable_last(self) -> int:
        """The last index this node has persisted (its unstable entries are not)."""
        u = self._log.unstable
        return u.offset - 1 if u.entries else self._log.last_index()

    def _maybe_commit(self) -> bool:
        match = {p: pr.match for p, pr in self._prs.items()}
        return self._log.maybe_commit(committed_index(self.peers, match), self.term)

    def _bcast_heartbeat(self, context: bytes) -> None:
        commit = self._log.committed
        for p in self._others:
            c = min(self._prs[p].match, commit)
            self._send(Heartbeat(self.id, p, self.term, c, context))

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: int, *, send_if_empty: bool) -> bool:
        pr = self._prs[to]
        if pr.is_paused():
            return False
        lg = self._log
        prev_index = pr.next - 1
        prev_term = lg.term(prev_index)
        entries: list[LogEntry] | None = None
        if prev_term is not None:
            try:
                entries = lg.entries_from(pr.next, self.config.max_append_bytes)
            except LogCompacted:
                entries = None
        if prev_term is None or entries is None:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(AppendEntries(self.id, to, self.term, prev_index, prev_term, tuple(entries),
                                 lg.committed))
        pr.sent_entries(prev_index + len(entries), len(entries),
                        sum(entry_bytes(e) for e in entries))
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if pr.last_active <= self._ticks - self.config.election_timeout_ticks:
            return False  # do not ship a snapshot to a node that may be down
        snap = self._log.unstable.snapshot or self._storage.snapshot()
        if snap.index < pr.next - 1 or snap.index == 0:
            raise RaftInvariantError(f"node {self.id} needs a snapshot for {to} (next "
                                     f"{pr.next}) but storage has {snap.index}")
        log.info("node %d sends snapshot %d/%d to %d", self.id, snap.index, snap.term, to)
        pr.become_snapshot(snap.index)
        self._send(InstallSnapshot(self.id, to, self.term, snap))
        return True

    # -- transitions -----------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        timeout = self.config.election_timeout_ticks
        self._randomized_timeout = timeout + self._rng.randrange(timeout)
        self._lead_transferee = None
        self._votes = {}
        self._prs = {}
        self._broadcast_pending = False
        self._append_wanted.clear()
        if self._pending_reads:
            log.info("node %d drops %d pending reads", self.id, len(self._pending_reads))
            self._dropped_reads.extend(r.context for r in self._pending_reads)
            self._pending_reads = []

    def _become_follower(self, term: int, lead: int | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _hup(self, kind: _Campaign) -> None:
        if self.role == Role.LEADER:
            log.debug("node %d is already the leader", self.id)
            return
        self._campaign(kind)

    def _campaign(self, kind: _Campaign) -> None:
        if kind == _Campaign.PRE_ELECTION:
            self.role = Role.PRE_CANDIDATE
            self.lead = None
            self._votes = {}
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.vote = self.id
            self.role = Role.CANDIDATE
            term = self.term
        self._votes[self.id] = True
        log.info("node %d starts %s at term %d", self.id, kind.name.lower(), term)
        if vote_result(self.peers, self._votes) == VoteResult.WON:
            if kind == _Campaign.PRE_ELECTION:
                self._campaign(_Campaign.ELECTION)
            else:
                self._become_leader()
            return
        last_index = self._log.last_index()
        last_term = self._log.last_term()
        pre = kind == _Campaign.PRE_ELECTION
        transfer = kind == _Campaign.TRANSFER
        for p in self._others:
            self._send(RequestVote(self.id, p, term, last_index, last_term, pre, transfer))

    def _become_leader(self) -> None:
        if self.role != Role.CANDIDATE:
            raise RaftInvariantError(f"node {self.id} cannot lead from role {self.role.name}")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        last = self._log.last_index()
        cfg = self.config
        for p in self.peers:
            pr = Progress(last + 1, cfg.max_inflight_msgs, cfg.max_inflight_bytes)
            pr.last_active = self._ticks  # a grace period: everyone counts as just heard
            self._prs[p] = pr
        me = self._prs[self.id]
        me.match = self._stable_last()  # only what it persisted counts (see advance)
        me.become_replicate()
        log.info("node %d becomes leader at term %d", self.id, self.term)
        self._append_payloads([b""])  # the no-op that commits earlier terms' entries
