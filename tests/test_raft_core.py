"""Focused unit tests of the Raft core: what the golden scripts do not pin down."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.errors import NotLeader as BaseNotLeader
from replication.raft import (
    AppendEntries,
    AppendEntriesResponse,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    LogCompacted,
    LogEntry,
    LogUnavailable,
    MemoryStorage,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftInvariantError,
    RaftLog,
    RaftNode,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
)
from replication.raft.progress import Inflights, Progress, ProgressState


def E(index: int, term: int, payload: bytes = b"x") -> LogEntry:
    return LogEntry(index, term, payload)


# -- a tiny network ---------------------------------------------------------------


class Net:
    """Nodes 1..n over MemoryStorage; ``run`` persists and delivers until quiet."""

    def __init__(self, n: int, config: RaftConfig | None = None) -> None:
        self.config = config or RaftConfig()
        self.peers = tuple(range(1, n + 1))
        self.storage = {i: MemoryStorage(self.peers) for i in self.peers}
        self.nodes = {i: RaftNode(i, self.peers, self.storage[i], rng=random.Random(i),
                                  config=self.config) for i in self.peers}
        self.sent: list[Message] = []

    def flush(self, i: int) -> list[Message]:
        """Handle node i's Ready (persist, apply); return its messages undelivered."""
        r = self.nodes[i]
        if not r.has_ready():
            return []
        rd = r.ready()
        st = self.storage[i]
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        r.advance(rd)
        self.sent += rd.messages
        return list(rd.messages)

    def run(self, keep: Callable[[Message], bool] = lambda m: True, rounds: int = 50) -> None:
        for _ in range(rounds):
            msgs = [m for i in self.peers for m in self.flush(i)]
            if not msgs:
                return
            for m in msgs:
                if keep(m):
                    self.nodes[m.to].step(m)
        raise AssertionError("no quiescence")

    def elect(self, i: int) -> RaftNode:
        self.nodes[i].campaign()
        self.run()
        assert self.nodes[i].role == Role.LEADER
        return self.nodes[i]


# -- config ------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("election_timeout_ticks", 0, "election_timeout_ticks must be >= 1"),
    ("heartbeat_ticks", 0, "heartbeat_ticks must be >= 1"),
    ("heartbeat_ticks", 10, "heartbeat_ticks .* must be below election_timeout_ticks"),
    ("max_append_bytes", 0, "max_append_bytes must be >= 1"),
    ("max_inflight_msgs", 0, "max_inflight_msgs must be >= 1"),
    ("max_inflight_bytes", -1, "max_inflight_bytes must be >= 0"),
    ("election_timeout_ticks", 2.5, "election_timeout_ticks must be an int"),
    ("pre_vote", 1, "pre_vote must be a bool"),
    ("check_quorum", "yes", "check_quorum must be a bool"),
])
def test_config_validation_names_the_field(field: str, value: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        RaftConfig(**{field: value})  # type: ignore[arg-type]


def test_config_defaults() -> None:
    c = RaftConfig()
    assert (c.election_timeout_ticks, c.heartbeat_ticks, c.pre_vote, c.check_quorum) == (
        10, 1, True, True)
    assert c.max_append_bytes == 1 << 20 and c.max_inflight_msgs == 256


def test_node_rejects_bad_ids() -> None:
    st = MemoryStorage((1, 2))
    with pytest.raises(ValueError, match="including 3"):
        RaftNode(3, (1, 2), st, rng=random.Random(0))
    with pytest.raises(ValueError, match="node id"):
        RaftNode(0, (0, 1), st, rng=random.Random(0))


# -- elections -----------------------------------------------------------------------


def _ticks_to_campaign(seed: int, timeout: int) -> int:
    cfg = RaftConfig(election_timeout_ticks=timeout, pre_vote=False)
    node = RaftNode(1, (1, 2, 3), MemoryStorage((1, 2, 3)), rng=random.Random(seed), config=cfg)
    for t in range(1, 3 * timeout):
        node.tick()
        if node.role == Role.CANDIDATE:
            return t
    raise AssertionError("never campaigned")


def test_randomized_election_timeout_range_and_seeding() -> None:
    seen = {_ticks_to_campaign(seed, 10) for seed in range(60)}
    assert seen <= set(range(10, 20))
    assert len(seen) >= 5  # really randomized
    assert _ticks_to_campaign(42, 10) == _ticks_to_campaign(42, 10)  # and replayable


def test_single_node_elects_commits_and_reads_at_once() -> None:
    net = Net(1)
    leader = net.elect(1)
    index = leader.propose(b"a")
    leader.read_index(b"ctx")
    rd = leader.ready()
    # The leader's own copy counts only once persisted: ``a`` does not commit before
    # advance; the read is served at what was committed when it came (elect's no-op).
    assert [e.index for e in rd.entries] == [index]
    assert [e.index for e in rd.committed_entries] == [index - 1]
    assert [(r.context, r.index) for r in rd.read_states] == [(b"ctx", index - 1)]
    net.storage[1].append(rd.entries)
    leader.advance(rd)
    rd = leader.ready()
    assert [e.index for e in rd.committed_entries] == [index]
    leader.advance(rd)


def test_voter_in_lease_ignores_higher_term_vote_but_not_without_check_quorum() -> None:
    for check_quorum, expect_term in ((True, 1), (False, 5)):
        net = Net(3, RaftConfig(check_quorum=check_quorum))
        net.elect(1)
        f = net.nodes[2]
        f.step(RequestVote(3, 2, 5, last_index=9, last_term=9))
        assert f.term == expect_term


def test_vote_is_refused_to_a_less_up_to_date_candidate_and_given_once() -> None:
    st = MemoryStorage((1, 2, 3))
    st.append([E(1, 1), E(2, 2)])
    st.set_hard_state(HardState(term=2))
    node = RaftNode(2, (1, 2, 3), st, rng=random.Random(0),
                    config=RaftConfig(check_quorum=False, pre_vote=False))
    node.step(RequestVote(1, 2, 3, last_index=5, last_term=1))  # older last term
    node.step(RequestVote(3, 2, 3, last_index=2, last_term=2))  # as up to date: granted
    node.step(RequestVote(1, 2, 3, last_index=9, last_term=3))  # already voted in term 3
    rd = node.ready()
    answers = [(m.to, m.granted) for m in rd.messages if isinstance(m, RequestVoteResponse)]
    assert answers == [(1, False), (3, True), (1, False)]
    assert rd.hard_state == HardState(term=3, vote=3, commit=0)
    assert rd.must_sync


def test_leader_commits_only_entries_of_its_own_term_by_counting() -> None:
    """§5.4.2: a quorum holding an earlier-term entry does not commit it; the no-op does."""
    peers = (1, 2, 3)
    st = MemoryStorage(peers)
    st.append([E(1, 1), E(2, 2)])
    st.set_hard_state(HardState(term=2))
    cfg = RaftConfig(pre_vote=False)
    leader = RaftNode(1, peers, st, rng=random.Random(0), config=cfg)
    leader.campaign()
    leader.step(RequestVoteResponse(2, 1, 3, granted=True))
    assert leader.role == Role.LEADER and leader.raft_log.last_index() == 3
    rd = leader.ready()
    st.append(rd.entries)  # the leader persists its no-op (its own copy counts from advance)
    leader.advance(rd)
    leader.step(AppendEntriesResponse(2, 1, 3, index=2))  # 1 and 2 hold index 2 (term 2)
    assert leader.raft_log.committed == 0
    leader.step(AppendEntriesResponse(2, 1, 3, index=3))  # now the term-3 no-op
    assert leader.raft_log.committed == 3


# -- proposals and errors ---------------------------------------------------------------


def test_proposal_on_follower_raises_not_leader_with_hint() -> None:
    net = Net(3)
    net.elect(2)
    with pytest.raises(NotLeader) as info:
        net.nodes[3].propose(b"a")
    assert info.value.leader == 2
    assert isinstance(info.value, BaseNotLeader) and info.value.retryable
    with pytest.raises(NotLeader) as info:
        net.nodes[1].read_index(b"r")
    assert info.value.leader == 2


def test_not_leader_stays_backward_compatible() -> None:
    exc = BaseNotLeader("node 1 is not the leader")
    assert str(exc) == "node 1 is not the leader" and exc.leader is None


def test_proposal_argument_checks() -> None:
    leader = Net(3).elect(1)
    with pytest.raises(ValueError, match="reserved"):
        leader.propose(b"")
    with pytest.raises(TypeError, match="bytes"):
        leader.propose("text")  # type: ignore[arg-type]
    assert leader.propose(bytearray(b"ok")) == 2


def test_proposals_are_refused_during_transfer() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.transfer_leadership(2)
    with pytest.raises(ProposalDropped, match="transferring"):
        leader.propose(b"a")
    net.run()
    assert net.nodes[2].role == Role.LEADER and leader.role == Role.FOLLOWER


def test_read_index_refused_until_the_leader_commits_in_its_term() -> None:
    net = Net(3)
    node = net.nodes[1]
    node.campaign()
    # Run until 1 leads, but hold back every answer to its no-op append.
    net.run(keep=lambda m: not isinstance(m, AppendEntriesResponse))
    assert node.role == Role.LEADER and node.raft_log.committed == 0
    with pytest.raises(ProposalDropped, match="not committed an entry of term"):
        node.read_index(b"r")
    with pytest.raises(ValueError, match="non-empty"):
        node.read_index(b"")


def test_read_state_needs_a_quorum_of_acks_in_the_same_term() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.read_index(b"r")
    with pytest.raises(ValueError, match="already pending"):
        leader.read_index(b"r")
    net.flush(1)
    leader.step(HeartbeatResponse(2, 1, leader.term, b"other"))
    rd = leader.ready()
    assert not rd.read_states
    leader.advance(rd)
    leader.step(HeartbeatResponse(2, 1, leader.term, b"r"))
    rd = leader.ready()
    assert [(r.context, r.index) for r in rd.read_states] == [(b"r", 1)]


def test_ready_protocol_misuse_is_an_error() -> None:
    leader = Net(3).elect(1)
    leader.propose(b"a")
    rd = leader.ready()
    with pytest.raises(RuntimeError, match="before advance"):
        leader.ready()
    leader.advance(rd)
    with pytest.raises(RuntimeError, match="not the outstanding"):
        leader.advance(rd)


def test_step_rejects_misaddressed_messages() -> None:
    node = Net(3).nodes[1]
    with pytest.raises(ValueError, match="for node 2"):
        node.step(HeartbeatResponse(3, 2, 0))
    with pytest.raises(ValueError, match="unknown node"):
        node.step(HeartbeatResponse(9, 1, 0))


# -- batching and flow control -----------------------------------------------------------


def _appends_to(msgs: list[Message], to: int) -> list[AppendEntries]:
    return [m for m in msgs if isinstance(m, AppendEntries) and m.to == to]


def test_proposals_between_readies_leave_as_one_append_per_follower() -> None:
    net = Net(3)
    leader = net.elect(1)
    for i in range(5):
        leader.propose(b"p%d" % i)
    msgs = net.flush(1)
    for to in (2, 3):
        apps = _appends_to(msgs, to)
        assert len(apps) == 1
        assert [e.payload for e in apps[0].entries] == [b"p%d" % i for i in range(5)]


def test_max_append_bytes_splits_but_always_sends_one_entry() -> None:
    net = Net(3, RaftConfig(max_append_bytes=25))
    leader = net.elect(1)
    for _ in range(4):
        leader.propose(b"x" * 10)
    leader.propose(b"y" * 100)  # bigger than the limit on its own
    net.run()
    sizes = [sum(len(e.payload) for e in m.entries) for m in net.sent
             if isinstance(m, AppendEntries) and m.entries and m.to == 2 and m.term == 1]
    assert 100 in sizes  # alone in its message
    assert all(s <= 25 for s in sizes if s != 100) and sum(sizes) == 140
    assert net.nodes[2].raft_log.committed == leader.raft_log.last_index()


def test_inflight_window_bounds_unacknowledged_appends() -> None:
    net = Net(2, RaftConfig(max_append_bytes=1, max_inflight_msgs=2))
    leader = net.elect(1)
    for i in range(6):
        leader.propose(b"e%d" % i)  # indexes 2..7, one entry per message
    first = _appends_to(net.flush(1), 2)
    assert [m.entries[0].index for m in first] == [2]  # the broadcast sends one
    net.nodes[2].step(first[0])
    ack = [m for m in net.flush(2) if isinstance(m, AppendEntriesResponse)]
    leader.step(ack[0])
    burst = _appends_to(net.flush(1), 2)
    # The window (2 messages) is refilled, no more: 3 and 4 go, 5..7 wait.
    assert [m.entries[0].index for m in burst if m.entries] == [3, 4]
    pr = leader._prs[2]
    assert pr.state == ProgressState.REPLICATE and pr.is_paused()
    # A heartbeat answer while the window is full frees one slot (in case an
    # ack was lost), which the next append uses at once.
    leader.step(HeartbeatResponse(2, 1, leader.term))
    more = _appends_to(net.flush(1), 2)
    assert [m.entries[0].index for m in more if m.entries] == [5]
    assert pr.is_paused() and pr.next == 6


def test_inflights_count_and_bytes() -> None:
    inf = Inflights(max_count=3, max_bytes=100)
    inf.add(5, 60)
    assert not inf.full()
    inf.add(7, 50)
    assert inf.full()  # bytes
    inf.free_le(5)
    assert not inf.full() and inf.bytes == 50
    inf.add(8, 0)
    inf.add(9, 0)
    assert inf.full()  # count
    with pytest.raises(ValueError, match="not after"):
        inf.add(9, 1)
    inf.free_first_one()
    assert len(inf) == 2


def test_progress_probe_pauses_and_ignores_stale_rejections() -> None:
    pr = Progress(next_index=10, max_inflight_msgs=4, max_inflight_bytes=0)
    pr.sent_entries(9, 0, 0)
    assert pr.is_paused()
    assert not pr.maybe_decr_to(rejected=5, match_hint=3)  # not our last probe: stale
    assert pr.maybe_decr_to(rejected=9, match_hint=3)
    assert pr.next == 4 and not pr.is_paused()
    pr.maybe_update(6)
    pr.become_replicate()
    assert pr.next == 7
    assert not pr.maybe_decr_to(rejected=6, match_hint=0)  # at or below match: stale
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


# -- the log -------------------------------------------------------------------------


def _log(*terms: int, committed: int = 0) -> RaftLog:
    st = MemoryStorage((1,))
    st.append([E(i, t) for i, t in enumerate(terms, start=1)])
    lg = RaftLog(st)
    lg.commit_to(committed)
    return lg


def _terms(lg: RaftLog) -> list[int]:
    return [e.term for e in lg.slice(lg.first_index(), lg.last_index() + 1)]


def test_maybe_append_never_truncates_matching_entries() -> None:
    lg = _log(1, 1, 2)
    # A delayed, shorter append whose entries all match must not cut the log.
    assert lg.maybe_append(0, 0, 0, [E(1, 1)]) == 1
    assert _terms(lg) == [1, 1, 2]
    assert lg.maybe_append(1, 1, 0, [E(2, 1)]) == 2
    assert _terms(lg) == [1, 1, 2]
    assert lg.unstable_entries() == []


def test_maybe_append_truncates_from_the_first_term_conflict() -> None:
    lg = _log(1, 1, 1, 1)
    assert lg.maybe_append(1, 1, 0, [E(2, 1), E(3, 3)]) == 3
    assert _terms(lg) == [1, 1, 3]  # 2 matched and was kept; 3 conflicted; 4 went with it


def test_maybe_append_extends_after_matching_entries() -> None:
    lg = _log(1, 1)
    assert lg.maybe_append(1, 1, 0, [E(2, 1), E(3, 1), E(4, 2)]) == 4
    assert _terms(lg) == [1, 1, 1, 2]
    assert [e.index for e in lg.unstable_entries()] == [3, 4]


def test_maybe_append_rejects_a_missing_or_mismatched_prev() -> None:
    lg = _log(1, 2)
    assert lg.maybe_append(2, 1, 0, [E(3, 2)]) is None  # term mismatch at prev
    assert lg.maybe_append(5, 2, 0, [E(6, 2)]) is None  # prev beyond the log
    assert _terms(lg) == [1, 2]


def test_maybe_append_commits_only_what_the_message_proved() -> None:
    lg = _log(1, 1, 9)  # entry 3 is from some other leader's term
    assert lg.maybe_append(1, 1, 5, [E(2, 1)]) == 2
    assert lg.committed == 2  # not 3: entry 3 was not covered by this message


def test_maybe_append_refuses_to_overwrite_committed_entries() -> None:
    lg = _log(1, 1, 1, committed=3)
    with pytest.raises(RaftInvariantError, match="committed"):
        lg.maybe_append(1, 1, 3, [E(2, 2)])


def test_is_up_to_date() -> None:
    lg = _log(1, 2, 2)
    assert lg.is_up_to_date(3, 2) and lg.is_up_to_date(9, 2) and lg.is_up_to_date(1, 3)
    assert not lg.is_up_to_date(2, 2) and not lg.is_up_to_date(9, 1)


def test_find_conflict_by_term() -> None:
    lg = _log(1, 1, 2, 2, 4)
    assert lg.find_conflict_by_term(5, 3) == 4
    assert lg.find_conflict_by_term(5, 1) == 2
    assert lg.find_conflict_by_term(9, 9) == 5  # clamped to the last index
    assert lg.find_conflict_by_term(3, 0) == 0


def test_committed_entries_stable_and_applied() -> None:
    lg = _log(1, 1)
    lg.append([E(3, 2), E(4, 2)])
    lg.commit_to(3)
    assert [e.index for e in lg.next_committed_entries()] == [1, 2, 3]
    lg.applied_to(3)
    assert not lg.has_next_committed()
    lg.stable_to(4, 1)  # wrong term: the entry was replaced, keep it unstable
    assert len(lg.unstable_entries()) == 2
    lg.stable_to(4, 2)
    assert lg.unstable_entries() == []
    with pytest.raises(RaftInvariantError):
        lg.applied_to(4)  # beyond commit
    with pytest.raises(RaftInvariantError):
        lg.commit_to(9)  # beyond the log


def test_restore_and_snapshot_positions() -> None:
    lg = _log(1, 1)
    lg.restore(SnapshotMeta(10, 3, (1,), b"ckpt"))
    assert (lg.first_index(), lg.last_index(), lg.committed) == (11, 10, 10)
    assert lg.term(10) == 3 and lg.term(2) is None
    assert lg.next_committed_entries() == []


def test_memory_storage_limits_and_errors() -> None:
    st = MemoryStorage((1,))
    st.append([E(1, 1, b"a" * 10), E(2, 1, b"b" * 10), E(3, 2, b"c" * 10)])
    assert len(st.entries(1, 4, 15)) == 1
    assert len(st.entries(1, 4, 20)) == 2
    assert len(st.entries(1, 4, 1)) == 1  # at least one
    snap = st.compact(2, b"ckpt")
    assert (snap.index, snap.term, snap.data) == (2, 1, b"ckpt")
    assert st.first_index() == 3 and st.term(2) == 1
    with pytest.raises(LogCompacted):
        st.entries(2, 4, 100)
    with pytest.raises(LogCompacted):
        st.term(1)
    with pytest.raises(LogUnavailable):
        st.term(4)
    with pytest.raises(RaftInvariantError, match="gap"):
        st.append([E(5, 2)])
    st.append([E(3, 3)])  # overwrite from 3
    assert st.last_index() == 3 and st.term(3) == 3


# -- snapshots and restarts -----------------------------------------------------------------


def test_follower_ignores_snapshot_not_newer_than_its_commit() -> None:
    net = Net(3)
    leader = net.elect(1)
    leader.propose(b"a")
    net.run()
    f = net.nodes[2]
    f.step(InstallSnapshot(1, 2, leader.term, SnapshotMeta(1, 1, (1, 2, 3))))
    rd = f.ready()
    assert rd.snapshot is None
    assert [m.index for m in rd.messages if isinstance(m, InstallSnapshotResponse)] == [2]
    f.advance(rd)


def test_follower_installs_newer_snapshot_and_reports_it_in_ready() -> None:
    net = Net(3)
    leader = net.elect(1)
    f = net.nodes[3]
    f.step(InstallSnapshot(1, 3, leader.term, SnapshotMeta(50, 1, (1, 2, 3), b"ck")))
    rd = f.ready()
    assert rd.snapshot == SnapshotMeta(50, 1, (1, 2, 3), b"ck")
    assert rd.hard_state is not None and rd.hard_state.commit == 50
    net.storage[3].apply_snapshot(rd.snapshot)
    net.storage[3].set_hard_state(rd.hard_state)
    f.advance(rd)
    assert f.status().applied == 50 and f.raft_log.first_index() == 51


def test_leader_sends_snapshot_when_the_follower_needs_compacted_entries() -> None:
    net = Net(3)
    leader = net.elect(1)
    cut = {3}
    for i in range(3):
        leader.propose(b"v%d" % i)
    net.run(keep=lambda m: m.to not in cut and m.frm not in cut)
    net.storage[1].compact(leader.status().applied)
    leader.step(HeartbeatResponse(3, 1, leader.term))
    msgs = net.flush(1)
    app = _appends_to(msgs, 3)
    assert app  # first a probe at next: rejected by 3
    net.nodes[3].step(app[0])
    leader.step(next(m for m in net.flush(3) if isinstance(m, AppendEntriesResponse)))
    snaps = [m for m in net.flush(1) if isinstance(m, InstallSnapshot)]
    assert [s.snapshot.index for s in snaps] == [4]
    assert leader._prs[3].state == ProgressState.SNAPSHOT
    net.nodes[3].step(snaps[0])
    net.run()
    assert leader._prs[3].state == ProgressState.REPLICATE
    assert net.nodes[3].raft_log.committed == 4


def test_restart_keeps_hard_state_and_reapplies_after_applied() -> None:
    net = Net(3)
    leader = net.elect(1)
    for i in range(3):
        leader.propose(b"v%d" % i)
    net.run()
    st = net.storage[2]
    hs = st.initial_state()
    node = RaftNode(2, (1, 2, 3), st, rng=random.Random(5), applied=2)
    assert (node.term, node.vote, node.raft_log.committed) == (hs.term, hs.vote, hs.commit)
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [3, 4]
    assert rd.hard_state is None  # nothing changed since it was persisted
    with pytest.raises(ValueError, match="beyond the commit"):
        RaftNode(2, (1, 2, 3), st, rng=random.Random(5), applied=9)


def test_stored_commit_beyond_log_is_an_invariant_error() -> None:
    st = MemoryStorage((1, 2, 3))
    st.set_hard_state(HardState(term=1, vote=None, commit=3))
    with pytest.raises(RaftInvariantError, match="beyond the stored last index"):
        RaftNode(1, (1, 2, 3), st, rng=random.Random(0))


def test_stale_leader_learns_the_new_term_from_its_followers() -> None:
    net = Net(3)
    net.elect(1)
    f = net.nodes[2]
    f.step(Heartbeat(3, 2, 7, commit=0))  # a newer leader exists
    assert f.term == 7 and f.lead == 3
    f.step(Heartbeat(1, 2, 1, commit=1))  # the old leader's heartbeat
    rd = f.ready()
    back = [m for m in rd.messages if m.to == 1]
    assert back == [AppendEntriesResponse(2, 1, 7, index=0)]
    f.advance(rd)
    net.nodes[1].step(back[0])
    assert net.nodes[1].role == Role.FOLLOWER and net.nodes[1].term == 7


def test_report_snapshot_failure_probes_again_from_match() -> None:
    net = Net(3)
    leader = net.elect(1)
    pr = leader._prs[3]
    pr.become_snapshot(7)
    assert pr.is_paused()
    leader.report_snapshot(3, success=False)
    assert pr.state == ProgressState.PROBE and pr.next == pr.match + 1
    pr.become_snapshot(7)
    leader.report_snapshot(3, success=True)
    assert pr.state == ProgressState.PROBE and pr.next == 8
    net.nodes[2].report_snapshot(3, success=True)  # not a leader: ignored


def test_unanswered_snapshot_times_out_back_to_probe() -> None:
    cfg = RaftConfig(election_timeout_ticks=5, check_quorum=False)
    net = Net(3, cfg)
    leader = net.elect(1)
    pr = leader._prs[3]
    pr.become_snapshot(7)
    for _ in range(4):
        leader.tick()
    assert pr.state == ProgressState.SNAPSHOT
    leader.tick()
    assert pr.state == ProgressState.PROBE


# -- maybe_append against the paper's rule, on a naive list ----------------------------


def _naive_append(terms: list[int], prev_index: int, prev_term: int,
                  new: list[int]) -> list[int] | None:
    """Figure 2 of the Raft paper, literally: check prev, delete from a conflict, append."""
    if prev_index > len(terms) or (prev_index > 0 and terms[prev_index - 1] != prev_term):
        return None
    out = list(terms)
    for k, t in enumerate(new):
        i = prev_index + k  # 0-based position of the new entry
        if i < len(out) and out[i] != t:
            del out[i:]
        if i >= len(out):
            out.append(t)
    return out


@st.composite
def append_cases(draw: st.DrawFn) -> tuple[list[int], int, int, int, list[int], int]:
    terms = sorted(draw(st.lists(st.integers(1, 4), max_size=8)))
    stable = draw(st.integers(0, len(terms)))  # how many are persisted, the rest unstable
    prev_index = draw(st.integers(0, len(terms) + 1))
    prev_term = (terms[prev_index - 1] if 0 < prev_index <= len(terms) and draw(st.booleans())
                 else draw(st.integers(0, 5)) if prev_index else 0)
    new = sorted(draw(st.lists(st.integers(max(prev_term, 1), 5), max_size=5)))
    committed = draw(st.integers(0, stable))
    return terms, stable, prev_index, prev_term, new, committed


@given(append_cases())
def test_maybe_append_matches_the_papers_rule(
        case: tuple[list[int], int, int, int, list[int], int]) -> None:
    terms, stable, prev_index, prev_term, new, committed = case
    st_ = MemoryStorage((1,))
    st_.append([E(i, t) for i, t in enumerate(terms[:stable], start=1)])
    lg = RaftLog(st_)
    lg.append([E(i, t) for i, t in enumerate(terms, start=1)][stable:])
    lg.commit_to(committed)
    expected = _naive_append(terms, prev_index, prev_term, new)
    entries = [E(prev_index + k + 1, t) for k, t in enumerate(new)]
    if expected is not None and expected[:committed] != terms[:committed]:
        with pytest.raises(RaftInvariantError):
            lg.maybe_append(prev_index, prev_term, committed, entries)
        return
    got = lg.maybe_append(prev_index, prev_term, committed, entries)
    if expected is None:
        assert got is None and _terms(lg) == terms
        return
    assert got == prev_index + len(new)
    assert _terms(lg) == expected
    assert lg.committed == committed  # the leader's commit passed here is ours: unchanged


# -- forgetting a peer's storage ----------------------------------------------------------


def test_a_forgotten_peers_old_acknowledgements_no_longer_count() -> None:
    """After forget_peer, a commit needs a fresh acknowledgement from that peer.

    The repair of a damaged replica deletes its log: entries it acknowledged
    before must not make up a quorum afterwards.
    """
    net = Net(3)
    leader = net.elect(1)
    base = leader.raft_log.committed
    # Node 3 is down; node 2 acknowledges index base+1 and then its disk is wiped.
    leader.propose(b"a")
    rd = leader.ready()
    net.storage[1].append(rd.entries)
    leader.step(AppendEntriesResponse(2, 1, leader.term, index=base + 1))
    leader.forget_peer(2)
    leader.advance(rd)  # the leader's own copy now counts: 1 of 3 is no quorum
    assert leader.raft_log.committed == base
    assert leader.status().progress[2][1] == 0  # match
    leader.step(AppendEntriesResponse(2, 1, leader.term, index=base + 1))  # re-acknowledged
    assert leader.raft_log.committed == base + 1


def test_forget_peer_checks_its_argument_and_is_a_no_op_on_a_follower() -> None:
    net = Net(3)
    net.elect(1)
    with pytest.raises(ValueError, match="not another peer"):
        net.nodes[1].forget_peer(1)
    with pytest.raises(ValueError, match="not another peer"):
        net.nodes[1].forget_peer(9)
    net.nodes[2].forget_peer(3)  # a follower keeps no progress
    assert net.nodes[2].role == Role.FOLLOWER
