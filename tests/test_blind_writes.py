"""The certifier protocol both transaction backends share (engine/ssi.py).

``BlindWrites`` (writes outside transactions: recorded at submit while the
certifier tracks, else by the first begin whose snapshot cannot see them,
always settled) and ``Certifier.commit_empty``. A state machine drives any
interleaving of submits, begins, reads, visibility, losses and settles and
checks, at every begin, that no unsettled write is in neither the snapshot
nor the certifier (and after every step, that each running transaction
knows every unsettled write it cannot see), and at the end that nothing is
left tracked.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.errors import SerializationFailure
from engine.ssi import BlindWrite, BlindWrites, Certifier, Status, TxnState

NOW = 0.0
ZEROS = {"active": 0, "committed_tracked": 0, "siread_keys": 0, "siread_ranges": 0,
         "written_keys": 0}
KEYS = st.sampled_from([b"a", b"b", b"c", b"d"])


# -- unit cases ------------------------------------------------------------------------------


def test_a_put_while_nothing_is_tracked_stays_pending_and_costs_the_certifier_nothing() -> None:
    c = Certifier()
    bw = BlindWrites(c)
    w = bw.submit(1, {b"k": b"v"}, NOW)
    assert w.state is None and bw.pending == 1 and not c.tracking
    bw.settle(w, True)
    assert bw.pending == 0 and c.tracked() == ZEROS


def test_a_begin_records_the_pending_writes_its_snapshot_cannot_see() -> None:
    """Only writes after the snapshot are recorded; a reader of their key gets the rw-edge."""
    c = Certifier()
    bw = BlindWrites(c)
    seen = bw.submit(1, [b"x"], NOW)
    unseen = bw.submit(2, [b"y"], NOW)
    bw.on_begin(1, NOW)
    t = c.begin(1, NOW)
    assert seen.state is None and bw.pending == 0
    assert unseen.state is not None and unseen.state.status is Status.PENDING
    c.on_read(t, b"y", NOW)
    assert unseen.state in t.out_edges
    with pytest.raises(SerializationFailure) as exc:  # first committer wins against it
        c.certify(t, [b"y"], 3, NOW)
    assert exc.value.reason == "write_write"
    bw.settle(seen, True)
    bw.settle(unseen, True)
    assert c.tracked() == ZEROS


def test_a_put_while_tracking_is_recorded_at_submit_and_a_lost_one_is_aborted() -> None:
    c = Certifier()
    bw = BlindWrites(c)
    t = c.begin(0, NOW)
    w = bw.submit(1, [b"k"], NOW)
    assert w.state is not None and bw.pending == 0
    bw.settle(w, False, reason="storage_error")
    bw.settle(w, True)  # a second settle is a no-op
    assert c.rollbacks["storage_error"] == 1 and w.state.status is Status.ABORTED
    c.commit_empty(t, NOW)
    assert c.tracked() == ZEROS and t.status is Status.COMMITTED


def test_a_pending_range_deletion_is_recorded_as_a_range() -> None:
    c = Certifier()
    bw = BlindWrites(c)
    w = bw.submit(1, (), NOW, ranges=((b"a", b"m"),))
    bw.on_begin(0, NOW)
    t = c.begin(0, NOW)
    c.on_read(t, b"f", NOW)
    assert w.state is not None and w.state in t.out_edges
    c.abort(t)
    bw.settle(w, True)
    assert c.tracked() == ZEROS


def test_commit_empty_commits_a_transaction_without_writes_or_fails_it() -> None:
    c = Certifier(max_txn_age_s=1.0)
    t = c.begin(0, NOW, read_only=True)
    c.on_read(t, b"k", NOW)
    c.commit_empty(t, NOW)
    assert t.status is Status.COMMITTED and c.commits == 1 and c.tracked() == ZEROS
    old = c.begin(0, NOW)
    with pytest.raises(SerializationFailure) as exc:
        c.commit_empty(old, NOW + 2.0)
    assert exc.value.reason == "too_old" and old.status is Status.ABORTED
    assert c.tracked() == ZEROS


# -- any interleaving ------------------------------------------------------------------------


class BlindWriteProtocol(RuleBasedStateMachine):
    """A backend's view: writes get sequences in order, become visible in order or are lost.

    Snapshots are the visible sequence (they never decrease). A write is
    settled committed only once visible, aborted only once lost -- the
    caller's side of the protocol -- and the machine checks the registry's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.certifier = Certifier()
        self.blind = BlindWrites(self.certifier)
        self.next_seq = 0
        self.visible = 0
        self.inflight: list[tuple[BlindWrite, frozenset[bytes]]] = []  # fate unknown
        self.decided: list[tuple[BlindWrite, bool]] = []  # visible (True) or lost, unsettled
        self.unsettled: list[tuple[BlindWrite, frozenset[bytes]]] = []
        self.active: list[TxnState] = []

    @rule(keys=st.frozensets(KEYS, min_size=1, max_size=3))
    def submit(self, keys: frozenset[bytes]) -> None:
        self.next_seq += 1
        w = self.blind.submit(self.next_seq, set(keys), NOW)
        self.inflight.append((w, keys))
        self.unsettled.append((w, keys))

    @precondition(lambda self: self.inflight)
    @rule(lost=st.booleans())
    def decide_oldest(self, lost: bool) -> None:
        """The oldest in-flight write becomes visible (snapshots move past it) or is lost."""
        w, _ = self.inflight.pop(0)
        if not lost:
            self.visible = max(self.visible, w.seq)
        self.decided.append((w, not lost))

    @precondition(lambda self: self.decided)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        w, committed = self.decided.pop(data.draw(st.integers(0, len(self.decided) - 1)))
        self.blind.settle(w, committed, reason="lost")
        self.unsettled = [(u, k) for u, k in self.unsettled if u is not w]

    @rule(read_only=st.booleans())
    def begin(self, read_only: bool) -> None:
        snapshot = self.visible
        self.blind.on_begin(snapshot, NOW)
        t = self.certifier.begin(snapshot, NOW, read_only=read_only)
        self.active.append(t)
        # Invariant 1: every unsettled write it cannot see is known to the certifier --
        # a read of any of its keys finds it.
        for w, keys in self.unsettled:
            if w.seq > snapshot:
                assert w.state is not None and w.state.status is Status.PENDING, w
                for key in keys:
                    self.certifier.on_read(t, key, NOW)
                assert w.state in t.out_edges, (w, t)

    @precondition(lambda self: self.active)
    @rule(data=st.data(), key=KEYS)
    def read(self, data: st.DataObject, key: bytes) -> None:
        t = self.active[data.draw(st.integers(0, len(self.active) - 1))]
        self.certifier.on_read(t, key, NOW)

    @precondition(lambda self: self.active)
    @rule(data=st.data(), commit=st.booleans())
    def finish(self, data: st.DataObject, commit: bool) -> None:
        t = self.active.pop(data.draw(st.integers(0, len(self.active) - 1)))
        if commit:
            self.certifier.commit_empty(t, NOW)
        else:
            self.certifier.abort(t)

    @invariant()
    def every_running_transaction_knows_the_writes_it_cannot_see(self) -> None:
        """Also those submitted after it began: they must be recorded at submit."""
        for t in self.active:
            for w, _ in self.unsettled:
                if w.seq > t.snapshot:
                    assert w.state is not None and w.state.status is Status.PENDING, (w, t)
        assert self.blind.pending <= len(self.unsettled)

    def teardown(self) -> None:
        """Invariant 2: once everything is finished and settled, nothing is tracked."""
        for t in self.active:
            self.certifier.commit_empty(t, NOW)
        for w, _ in self.inflight:
            self.blind.settle(w, True)
        for w, committed in self.decided:
            self.blind.settle(w, committed)
        assert self.blind.pending == 0
        assert self.certifier.tracked() == ZEROS and not self.certifier.tracking


TestBlindWriteProtocol = BlindWriteProtocol.TestCase
TestBlindWriteProtocol.settings = settings(max_examples=300, stateful_step_count=40,
                                           deadline=None)
