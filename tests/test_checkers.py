"""Tests for the history checkers in :mod:`tests.checkers`.

The checkers are what our concurrency tests rely on to *prove* serializability and
linearizability, so they are tested both on the textbook anomalies (each must be rejected,
with the right kind of witness) and against brute-force oracles on small random histories.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.checkers import (
    SEARCH_LIMIT_EXCEEDED,
    CommittedTxn,
    LinearizabilityResult,
    Op,
    check_linearizable,
    check_serializable,
    classify_cycle,
)

X, Y, Z = b"x", b"y", b"z"
KEYS = (X, Y, Z)


def txn(
    txn_id: str,
    seq: int,
    reads: Sequence[tuple[bytes, str | None]] = (),
    writes: Sequence[bytes] = (),
) -> CommittedTxn:
    return CommittedTxn(txn_id, seq, tuple(reads), tuple(writes))


# ---------------------------------------------------------------------------------------------
# Independent validation of reported cycles
# ---------------------------------------------------------------------------------------------


def assert_cycle_is_genuine(
    txns: Sequence[CommittedTxn], cycle: list[tuple[str, str, str]]
) -> None:
    """Re-derive every edge of a reported cycle from the history, independently of the checker."""
    assert cycle, "empty cycle"
    by_id = {t.txn_id: t for t in txns}
    for (_, b, _), (c, _, _) in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        assert b == c, f"edges do not chain: {cycle}"
    assert len({a for a, _, _ in cycle}) == len(cycle), f"cycle repeats a node: {cycle}"

    def writers(key: bytes) -> list[str]:
        return [t.txn_id for t in sorted(txns, key=lambda t: t.commit_seq) if key in t.writes]

    for a, b, kind in cycle:
        ta, tb = by_id[a], by_id[b]
        assert a != b
        if kind == "ww":
            assert any(
                key in tb.writes and (w := writers(key)).index(b) == w.index(a) + 1
                for key in ta.writes
            ), f"no ww edge {a}->{b}"
        elif kind == "wr":
            assert any(w == a and key in ta.writes for key, w in tb.reads), f"no wr {a}->{b}"
        elif kind == "rw":

            def overwrites(key: bytes, seen: str | None, b: str = b) -> bool:
                w = writers(key)
                nxt = 0 if seen is None else w.index(seen) + 1
                return nxt < len(w) and w[nxt] == b

            assert any(overwrites(key, seen) for key, seen in ta.reads), f"no rw edge {a}->{b}"
        else:
            pytest.fail(f"unknown edge kind {kind!r}")


def rejected_with_cycle(txns: Sequence[CommittedTxn]) -> list[tuple[str, str, str]]:
    result = check_serializable(txns)
    assert not result.ok
    assert result.anomalies == []
    assert result.cycle is not None
    assert_cycle_is_genuine(txns, result.cycle)
    return result.cycle


def accepted(txns: Sequence[CommittedTxn], aborted: Sequence[str] = ()) -> None:
    result = check_serializable(txns, aborted)
    assert result.ok, result
    assert result.cycle is None
    assert result.anomalies == []


# ---------------------------------------------------------------------------------------------
# Serializability: accepted histories
# ---------------------------------------------------------------------------------------------


def test_empty_history_is_serializable() -> None:
    accepted([])


def test_serial_history_is_serializable() -> None:
    accepted(
        [
            txn("T1", 1, reads=[(X, None)], writes=[X]),
            txn("T2", 2, reads=[(X, "T1"), (Y, None)], writes=[X, Y]),
            txn("T3", 3, reads=[(X, "T2"), (Y, "T2")], writes=[Y]),
            txn("T4", 4, reads=[(X, "T2"), (Y, "T3")]),
        ]
    )


def test_concurrent_transactions_on_disjoint_keys_are_serializable() -> None:
    # Both read the initial state of their own key: they overlapped in time, but touch
    # nothing in common, so any order works.
    accepted(
        [
            txn("T1", 2, reads=[(X, None)], writes=[X]),
            txn("T2", 1, reads=[(Y, None)], writes=[Y]),
        ]
    )


def test_read_only_transactions_reading_consistent_snapshots_are_serializable() -> None:
    accepted(
        [
            txn("W1", 1, writes=[X, Y]),
            txn("R_before", 2, reads=[(X, None), (Y, None)]),  # snapshot before W1
            txn("W2", 3, reads=[(X, "W1")], writes=[X, Y]),
            txn("R_mid", 4, reads=[(X, "W1"), (Y, "W1")]),  # snapshot between W1 and W2
            txn("R_after", 5, reads=[(X, "W2"), (Y, "W2")]),
        ]
    )


def test_reading_own_writes_is_fine() -> None:
    accepted(
        [
            txn("T1", 1, reads=[(X, None), (X, "T1")], writes=[X]),
            txn("T2", 2, reads=[(X, "T1"), (X, "T2"), (Y, None)], writes=[X]),
        ]
    )


def test_input_order_is_irrelevant_only_commit_seq_matters() -> None:
    history = [
        txn("T1", 10, writes=[X]),
        txn("T2", 20, reads=[(X, "T1")], writes=[X]),
        txn("T3", 30, reads=[(X, "T2")]),
    ]
    accepted(list(reversed(history)))


# ---------------------------------------------------------------------------------------------
# Serializability: textbook anomalies must be rejected with the right cycle
# ---------------------------------------------------------------------------------------------


def test_lost_update_is_rejected_with_ww_and_rw_cycle() -> None:
    history = [
        txn("T1", 1, reads=[(X, None)], writes=[X]),
        txn("T2", 2, reads=[(X, None)], writes=[X]),
    ]
    cycle = rejected_with_cycle(history)
    assert sorted(cycle) == [("T1", "T2", "ww"), ("T2", "T1", "rw")]
    assert classify_cycle(cycle) == "G-single"


def test_write_skew_is_rejected_with_two_rw_edges() -> None:
    history = [
        txn("T1", 1, reads=[(X, None), (Y, None)], writes=[X]),
        txn("T2", 2, reads=[(X, None), (Y, None)], writes=[Y]),
    ]
    cycle = rejected_with_cycle(history)
    assert sorted(cycle) == [("T1", "T2", "rw"), ("T2", "T1", "rw")]
    assert classify_cycle(cycle) == "G2-item"


def test_read_skew_is_rejected() -> None:
    # T1 reads x before T2 commits, then y after: it saw half of T2.
    history = [
        txn("T2", 1, writes=[X, Y]),
        txn("T1", 2, reads=[(X, None), (Y, "T2")]),
    ]
    cycle = rejected_with_cycle(history)
    assert sorted(cycle) == [("T1", "T2", "rw"), ("T2", "T1", "wr")]
    assert classify_cycle(cycle) == "G-single"


def test_fekete_oneil_read_only_anomaly_is_rejected() -> None:
    # Fekete, O'Neil & O'Neil 2004.  X = checking, Y = savings.  T2 withdraws from checking
    # after reading both balances; T1 deposits into savings and commits first; the read-only
    # T3 then sees T1's deposit but not T2's withdrawal.  Without T3 the history is
    # serializable (T2 before T1); T3 alone makes it not.
    t1 = txn("T1", 1, reads=[(Y, None)], writes=[Y])
    t3 = txn("T3", 2, reads=[(X, None), (Y, "T1")])
    t2 = txn("T2", 3, reads=[(X, None), (Y, None)], writes=[X])
    accepted([t1, t2])
    cycle = rejected_with_cycle([t1, t2, t3])
    assert sorted(cycle) == [("T1", "T3", "wr"), ("T2", "T1", "rw"), ("T3", "T2", "rw")]
    assert classify_cycle(cycle) == "G2-item"


def test_circular_information_flow_is_g1c() -> None:
    history = [
        txn("T1", 1, reads=[(Y, "T2")], writes=[X]),
        txn("T2", 2, reads=[(X, "T1")], writes=[Y]),
    ]
    cycle = rejected_with_cycle(history)
    assert sorted(cycle) == [("T1", "T2", "wr"), ("T2", "T1", "wr")]
    assert classify_cycle(cycle) == "G1c"


def test_reading_a_future_version_of_a_key_one_also_wrote_is_rejected() -> None:
    # T1 writes x, then reads x from T2, which comes later in the version order.
    history = [
        txn("T1", 1, reads=[(X, "T2")], writes=[X]),
        txn("T2", 2, writes=[X]),
    ]
    cycle = rejected_with_cycle(history)
    assert sorted(cycle) == [("T1", "T2", "ww"), ("T2", "T1", "wr")]


def test_reported_cycle_is_short_even_in_a_long_history() -> None:
    history = [
        txn(f"S{i}", i, reads=[(Z, f"S{i - 1}" if i else None)], writes=[Z]) for i in range(50)
    ]
    history += [
        txn("T1", 100, reads=[(X, None)], writes=[X]),
        txn("T2", 101, reads=[(X, None)], writes=[X]),
    ]
    assert len(rejected_with_cycle(history)) == 2


def test_classify_cycle() -> None:
    assert classify_cycle([("a", "b", "ww"), ("b", "a", "ww")]) == "G0"
    assert classify_cycle([("a", "b", "ww"), ("b", "a", "wr")]) == "G1c"
    assert classify_cycle([("a", "b", "rw"), ("b", "a", "wr")]) == "G-single"
    assert classify_cycle([("a", "b", "rw"), ("b", "a", "rw")]) == "G2-item"
    with pytest.raises(ValueError):
        classify_cycle([])


# ---------------------------------------------------------------------------------------------
# Serializability: reads that no committed write explains
# ---------------------------------------------------------------------------------------------


def test_read_of_aborted_write_is_g1a() -> None:
    history = [txn("T1", 1, writes=[X]), txn("T5", 2, reads=[(X, "T3")])]
    result = check_serializable(history, aborted={"T3"})
    assert not result.ok
    assert result.cycle is None
    assert result.anomalies == ["G1a: T5 read key b'x' written by aborted T3"]


def test_read_from_unknown_writer_is_an_anomaly() -> None:
    history = [txn("T1", 1, writes=[X]), txn("T2", 2, reads=[(X, "T9")])]
    result = check_serializable(history, aborted=["T3"])
    assert not result.ok
    assert len(result.anomalies) == 1
    assert result.anomalies[0].startswith("unknown writer: T2 read key b'x' from T9")


def test_read_of_a_key_the_named_writer_never_wrote_is_an_anomaly() -> None:
    history = [txn("T1", 1, writes=[X]), txn("T2", 2, reads=[(Y, "T1")])]
    result = check_serializable(history)
    assert not result.ok
    assert len(result.anomalies) == 1
    assert result.anomalies[0].startswith("unknown version: T2 read key b'y' from committed T1")


def test_anomalies_and_cycles_are_both_reported() -> None:
    history = [
        txn("T1", 1, reads=[(X, None)], writes=[X]),
        txn("T2", 2, reads=[(X, None), (Y, "A")], writes=[X]),
    ]
    result = check_serializable(history, aborted=["A"])
    assert not result.ok
    assert result.cycle is not None
    assert [a.split(":")[0] for a in result.anomalies] == ["G1a"]


@pytest.mark.parametrize(
    ("history", "aborted"),
    [
        ([txn("T1", 1), txn("T1", 2)], ()),
        ([txn("T1", 1), txn("T2", 1)], ()),
        ([txn("T1", 1)], ("T1",)),
    ],
)
def test_malformed_histories_raise(history: list[CommittedTxn], aborted: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        check_serializable(history, aborted)


# ---------------------------------------------------------------------------------------------
# Serializability: properties over generated histories
# ---------------------------------------------------------------------------------------------

# A program is a list of transactions; a transaction is a list of (is_write, key) steps.
Program = list[list[tuple[bool, bytes]]]

programs = st.lists(
    st.lists(st.tuples(st.booleans(), st.sampled_from(KEYS)), max_size=6),
    min_size=1,
    max_size=10,
)


def run_serially(program: Program, seq_step: int = 1) -> list[CommittedTxn]:
    """Execute transactions one after another against a dict, recording what each read."""
    latest: dict[bytes, str] = {}
    history: list[CommittedTxn] = []
    for n, steps in enumerate(program):
        tid = f"T{n}"
        own: set[bytes] = set()
        reads: list[tuple[bytes, str | None]] = []
        for is_write, key in steps:
            if is_write:
                own.add(key)
            else:
                reads.append((key, tid if key in own else latest.get(key)))
        writes = tuple(key for key in KEYS if key in own)
        latest.update(dict.fromkeys(writes, tid))
        history.append(CommittedTxn(tid, n * seq_step, tuple(reads), writes))
    return history


@settings(max_examples=150, deadline=None)
@given(program=programs, seq_step=st.integers(1, 5), shuffler=st.randoms(use_true_random=False))
def test_serial_executions_are_accepted(
    program: Program, seq_step: int, shuffler: random.Random
) -> None:
    history = run_serially(program, seq_step)
    shuffler.shuffle(history)
    accepted(history)


@settings(max_examples=150, deadline=None)
@given(
    program=programs,
    key=st.sampled_from(KEYS),
    first=st.integers(0, 10),
    gap=st.integers(0, 10),
)
def test_injected_lost_update_is_rejected(
    program: Program, key: bytes, first: int, gap: int
) -> None:
    # Insert U1 and later U2, both "read key, then write key", into a serial execution.  U2
    # really reads from W, the last writer of key before it (U1 or someone after U1).  Make
    # U2 read the version before W's instead, the classic lost update.  Then U2 -rw-> W
    # (W wrote the next version) and W precedes U2 in key's version order (ww edges W..U2),
    # so there must be a cycle; and since the unmutated history is serial, every cycle must
    # use the one backward edge U2 -> W.
    program = [list(steps) for steps in program]
    i = min(first, len(program))
    j = min(i + 1 + gap, len(program) + 1)
    program.insert(i, [(False, key), (True, key)])
    program.insert(j, [(False, key), (True, key)])
    history = run_serially(program)
    u2 = history[j]
    (_, w), *_ = u2.reads
    assert w is not None and w != u2.txn_id
    key_writers = [t.txn_id for t in history if key in t.writes]
    older = key_writers.index(w) - 1
    stale = key_writers[older] if older >= 0 else None
    history[j] = CommittedTxn(u2.txn_id, u2.commit_seq, ((key, stale),), u2.writes)
    cycle = rejected_with_cycle(history)
    assert (u2.txn_id, w, "rw") in cycle


def serializable_by_brute_force(history: Sequence[CommittedTxn]) -> bool:
    """Is there a serial order, consistent with each key's version order, explaining all reads?

    In the order, each key's writers must appear by commit_seq, and a read of key from X
    (X other than the reader) must see X as the last writer of key before the reader (None:
    no writer before it).  Reading one's own write is always allowed.
    """
    for order in itertools.permutations(history):
        last: dict[bytes, CommittedTxn] = {}
        good = True
        for t in order:
            for key, seen in t.reads:
                before = last.get(key)
                if seen != t.txn_id and seen != (before.txn_id if before else None):
                    good = False
            for key in t.writes:
                before = last.get(key)
                if before is not None and before.commit_seq > t.commit_seq:
                    good = False
                last[key] = t
            if not good:
                break
        if good:
            return True
    return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    program=st.lists(
        st.lists(st.tuples(st.booleans(), st.sampled_from(KEYS)), max_size=4),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_checker_agrees_with_brute_force_on_mutated_histories(
    program: Program, data: st.DataObject
) -> None:
    # Start from a serial execution and redirect some reads to arbitrary committed versions
    # of the same key (never to unknown data), then compare with exhaustive search.
    history = run_serially(program)
    mutated = []
    for t in history:
        reads = []
        for key, seen in t.reads:
            if data.draw(st.booleans()):
                versions = [None, *(u.txn_id for u in history if key in u.writes)]
                seen = data.draw(st.sampled_from(versions))
            reads.append((key, seen))
        mutated.append(CommittedTxn(t.txn_id, t.commit_seq, tuple(reads), t.writes))
    result = check_serializable(mutated)
    assert result.anomalies == []
    assert result.ok == serializable_by_brute_force(mutated)
    if result.cycle is not None:
        assert_cycle_is_genuine(mutated, result.cycle)


def test_twenty_thousand_serial_transactions() -> None:
    rng = random.Random(2024)
    keys = [f"k{n}".encode() for n in range(2_000)]
    program = [[(rng.random() < 0.4, rng.choice(keys)) for _ in range(10)] for _ in range(20_000)]
    latest: dict[bytes, str] = {}
    history = []
    for n, steps in enumerate(program):
        tid = f"T{n}"
        own: dict[bytes, None] = {}
        reads: list[tuple[bytes, str | None]] = []
        for is_write, key in steps:
            if is_write:
                own[key] = None
            else:
                reads.append((key, tid if key in own else latest.get(key)))
        latest.update(dict.fromkeys(own, tid))
        history.append(CommittedTxn(tid, n, tuple(reads), tuple(own)))
    result = check_serializable(history)
    assert result.ok, result


def test_hundred_thousand_transaction_cycle_needs_no_recursion() -> None:
    # A chain T0 -> T1 -> ... -> T99999 closed into one huge cycle by T0 reading from the last.
    n = 100_000
    history = [
        txn(f"T{i}", i, reads=[(X, f"T{i - 1}" if i else f"T{n - 1}")], writes=[X])
        for i in range(n)
    ]
    result = check_serializable(history)
    assert not result.ok
    assert result.cycle is not None
    assert len(result.cycle) == n


# ---------------------------------------------------------------------------------------------
# Linearizability
# ---------------------------------------------------------------------------------------------


def put(value: str, invoke: float, complete: float | None, client: int = 0, key: str = "k") -> Op:
    return Op(client, "put", key, value, invoke, complete)


def get(
    value: str | None, invoke: float, complete: float | None, client: int = 1, key: str = "k"
) -> Op:
    return Op(client, "get", key, value, invoke, complete)


def delete(invoke: float, complete: float | None, client: int = 2, key: str = "k") -> Op:
    return Op(client, "delete", key, None, invoke, complete)


def assert_linearizable(ops: Sequence[Op], initial: dict[str, str | None] | None = None) -> None:
    result = check_linearizable(ops, initial)
    assert result.ok, result
    assert result.bad_key is None
    assert not result.limit_exceeded


def assert_not_linearizable(ops: Sequence[Op], key: str = "k") -> LinearizabilityResult:
    result = check_linearizable(ops)
    assert not result.ok
    assert result.bad_key == key
    assert not result.limit_exceeded
    return result


def test_empty_history_is_linearizable() -> None:
    assert_linearizable([])


def test_sequential_history_is_linearizable() -> None:
    assert_linearizable(
        [
            get(None, 0, 1),
            put("a", 2, 3),
            get("a", 4, 5),
            put("b", 6, 7),
            get("b", 8, 9),
            delete(10, 11),
            get(None, 12, 13),
        ]
    )


@pytest.mark.parametrize("observed", ["old", "new"])
def test_get_overlapping_a_put_may_return_old_or_new(observed: str) -> None:
    assert_linearizable([put("old", 0, 1), put("new", 2, 6), get(observed, 3, 4)])


def test_touching_intervals_count_as_concurrent() -> None:
    # The get is invoked at the very instant the put completes: either order is allowed.
    assert_linearizable([put("a", 0, 1), put("b", 1, 2), get("a", 2, 3)])


def test_stale_read_is_rejected() -> None:
    result = assert_not_linearizable([put("old", 0, 1), put("new", 2, 3), get("old", 4, 5)])
    assert "stale" in result.explanation


def test_stale_read_of_initial_value_is_rejected() -> None:
    assert_not_linearizable([put("a", 0, 1), get(None, 2, 3)])


def test_value_from_the_future_is_rejected() -> None:
    result = assert_not_linearizable([get("v", 0, 1), put("v", 2, 3)])
    assert "no write had produced" in result.explanation


def test_value_never_written_is_rejected() -> None:
    assert_not_linearizable([put("a", 0, 1), get("zzz", 2, 3)])


def test_new_then_old_reads_are_rejected() -> None:
    # The put is still running, but once one get saw "new", a later get cannot see "old".
    assert_not_linearizable(
        [put("old", 0, 1), put("new", 2, 10), get("new", 3, 4), get("old", 5, 6)]
    )


def test_old_then_new_reads_during_a_slow_put_are_accepted() -> None:
    assert_linearizable([put("old", 0, 1), put("new", 2, 10), get("old", 3, 4), get("new", 5, 6)])


def test_violation_that_needs_the_search_is_rejected() -> None:
    # Every get can individually read from a concurrent put, but the sequence a, b, a needs
    # two writes of "a" and there is only one.
    result = assert_not_linearizable(
        [
            put("a", 0, 10, client=0),
            put("b", 0, 10, client=1),
            get("a", 1, 2, client=2),
            get("b", 3, 4, client=2),
            get("a", 5, 6, client=2),
        ]
    )
    assert result.explanation.startswith("key 'k': not linearizable")


def test_unknown_outcome_put_that_is_later_read_is_accepted() -> None:
    assert_linearizable([put("a", 0, 1), put("b", 2, None), get("b", 10, 11), get("b", 12, 13)])


def test_unknown_outcome_put_that_is_never_read_is_accepted() -> None:
    assert_linearizable([put("a", 0, 1), put("b", 2, None), get("a", 10, 11), get("a", 12, 13)])


def test_unknown_outcome_put_takes_effect_at_most_once() -> None:
    assert_not_linearizable(
        [put("a", 0, 1), put("b", 2, None), get("b", 3, 4), get("a", 5, 6), get("b", 7, 8)]
    )


def test_unknown_outcome_put_cannot_take_effect_before_it_is_invoked() -> None:
    assert_not_linearizable([get("b", 0, 1), put("b", 2, None)])


def test_unknown_outcome_delete() -> None:
    assert_linearizable([put("a", 0, 1), delete(2, None), get(None, 5, 6)])
    assert_linearizable([put("a", 0, 1), delete(2, None), get("a", 5, 6)])
    assert_not_linearizable([put("a", 0, 1), delete(2, None), get(None, 5, 6), get("a", 7, 8)])


def test_unknown_outcome_get_is_ignored() -> None:
    assert_linearizable([put("a", 0, 1), get("nonsense", 2, None)])


def test_keys_are_checked_independently_and_bad_key_is_reported() -> None:
    ops = [
        put("a", 0, 1, key="k1"),
        put("a", 0, 1, key="k2"),
        get("a", 2, 3, key="k1"),
        get(None, 2, 3, key="k2"),
    ]
    result = check_linearizable(ops)
    assert not result.ok
    assert result.bad_key == "k2"
    assert "'k2'" in result.explanation


def test_initial_values() -> None:
    ops = [get("seed", 0, 1, key="k1"), get(None, 0, 1, key="k2")]
    assert_linearizable(ops, {"k1": "seed"})
    assert not check_linearizable(ops).ok
    assert not check_linearizable(ops, {"k1": "seed", "k2": "x"}).ok


def test_search_limit_exceeded_is_a_failure() -> None:
    ops = [put(f"v{n}", 0, 100, client=n) for n in range(12)]
    ops += [get(f"v{n}", 1 + 2 * n, 2 + 2 * n, client=20) for n in range(12)]
    assert_linearizable(ops)
    result = check_linearizable(ops, max_steps=5)
    assert result == LinearizabilityResult(
        ok=False, bad_key="k", explanation=SEARCH_LIMIT_EXCEEDED, limit_exceeded=True
    )
    assert result.explanation == "search limit exceeded"


def test_definite_violation_is_preferred_over_search_limit() -> None:
    ops = [put(f"v{n}", 0, 100, client=n, key="slow") for n in range(12)]
    ops += [get(f"v{n}", 1 + 2 * n, 2 + 2 * n, client=20, key="slow") for n in range(12)]
    ops += [put("a", 0, 1, key="bad"), get(None, 2, 3, key="bad")]
    result = check_linearizable(ops, max_steps=5)
    assert not result.ok
    assert result.bad_key == "bad"
    assert not result.limit_exceeded


@pytest.mark.parametrize(
    "make",
    [
        lambda: Op(0, "put", "k", None, 0, 1),
        lambda: Op(0, "delete", "k", "x", 0, 1),
        lambda: Op(0, "get", "k", None, 2, 1),
        lambda: Op(0, "frob", "k", None, 0, 1),  # type: ignore[arg-type]
    ],
)
def test_impossible_ops_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_negative_step_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        check_linearizable([], max_steps=-1)


# ---------------------------------------------------------------------------------------------
# Linearizability: generated histories
# ---------------------------------------------------------------------------------------------


def linearizable_history(
    rng: random.Random,
    n_ops: int,
    clients: int,
    values: int | None,
    unknown: float,
    max_duration: float,
) -> list[Op]:
    """Simulate clients against an atomic register that acts at a random instant of each call.

    Each client issues calls one after another; every call takes effect at a random point
    of its interval (unknown-outcome writes take effect or not, at random), so the recorded
    history is linearizable by construction.
    """
    cursor = [0.0] * clients
    calls = []
    for n in range(n_ops):
        client = rng.randrange(clients)
        invoke = cursor[client] + rng.random()
        complete = invoke + rng.random() * max_duration
        cursor[client] = complete
        kind = rng.choice(["put", "put", "get", "get", "delete"])
        value = f"v{n}" if values is None else f"v{rng.randrange(values)}"
        lost = kind != "get" and rng.random() < unknown
        effective = not lost or rng.random() < 0.5
        point = rng.uniform(invoke, complete)
        calls.append((point, client, kind, value, invoke, None if lost else complete, effective))
    calls.sort()
    state: str | None = None
    ops = []
    for _, client, kind, value, invoke, returned, effective in calls:
        if kind == "put":
            state = value if effective else state
            ops.append(Op(client, "put", "k", value, invoke, returned))
        elif kind == "delete":
            state = None if effective else state
            ops.append(Op(client, "delete", "k", None, invoke, returned))
        else:
            ops.append(Op(client, "get", "k", state, invoke, returned))
    rng.shuffle(ops)
    return ops


@settings(max_examples=100, deadline=None)
@given(
    rng_seed=st.integers(0, 2**32),
    n_ops=st.integers(1, 60),
    clients=st.integers(1, 8),
    values=st.sampled_from([None, 1, 2, 5]),
    unknown=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_generated_linearizable_histories_are_accepted(
    rng_seed: int, n_ops: int, clients: int, values: int | None, unknown: float
) -> None:
    ops = linearizable_history(random.Random(rng_seed), n_ops, clients, values, unknown, 3.0)
    assert_linearizable(ops)


def linearizable_by_brute_force(ops: Sequence[Op], initial: str | None) -> bool:
    """Try every subset of unknown-outcome writes and every order of the chosen ops."""
    ops = [op for op in ops if op.kind != "get" or op.complete is not None]
    known = [op for op in ops if op.complete is not None]
    unknown = [op for op in ops if op.complete is None]
    for size in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, size):
            for order in itertools.permutations([*known, *extra]):
                if all(
                    not (a.complete is not None and a.complete < b.invoke)
                    for n, b in enumerate(order)
                    for a in order[n + 1 :]
                ):
                    state = initial
                    for op in order:
                        if op.kind == "get" and op.value != state:
                            break
                        if op.kind != "get":
                            state = op.value
                    else:
                        return True
    return False


small_ops = st.builds(
    lambda kind, value, invoke, duration, lost: Op(
        0,
        kind,
        "k",
        None if kind == "delete" else value if kind == "get" else value or "a",
        invoke,
        None if lost else invoke + duration,
    ),
    kind=st.sampled_from(["put", "get", "delete"]),
    value=st.sampled_from(["a", "b", None]),
    invoke=st.integers(0, 8).map(float),
    duration=st.integers(0, 4).map(float),
    lost=st.sampled_from([False, False, False, True]),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(small_ops, max_size=6), initial=st.sampled_from([None, "a"]))
def test_linearizability_agrees_with_brute_force(ops: list[Op], initial: str | None) -> None:
    result = check_linearizable(ops, {"k": initial})
    assert not result.limit_exceeded
    assert result.ok == linearizable_by_brute_force(ops, initial), result


def test_two_thousand_ops_sixteen_clients() -> None:
    rng = random.Random(7)
    for values, unknown, max_duration in [(None, 0.0, 6.0), (20, 0.02, 10.0), (3, 0.05, 3.0)]:
        ops = linearizable_history(rng, 2_000, 16, values, unknown, max_duration)
        assert_linearizable(ops)
    # A single stale read in the middle of a long history is found without blowing up.
    ops = sorted(linearizable_history(rng, 2_000, 16, None, 0.0, 6.0), key=lambda op: op.invoke)
    first_put = next(op for op in ops if op.kind == "put")
    assert first_put.complete is not None
    n, late_get = next(
        (n, op)
        for n, op in enumerate(ops)
        if op.kind == "get" and op.invoke > first_put.complete + 500
    )
    ops[n] = get(first_put.value, late_get.invoke, late_get.complete, client=late_get.client)
    result = check_linearizable(ops)
    assert not result.ok
    assert not result.limit_exceeded
