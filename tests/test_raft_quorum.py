"""Quorum arithmetic: the fast functions agree with their naive twins (etcd quick_test)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.raft.quorum import (
    VoteResult,
    committed_index,
    committed_index_naive,
    vote_result,
    vote_result_naive,
)

voter_sets = st.integers(min_value=1, max_value=7).map(lambda n: tuple(range(1, n + 1)))


@st.composite
def match_maps(draw: st.DrawFn) -> tuple[tuple[int, ...], dict[int, int]]:
    voters = draw(voter_sets)
    # Some voters missing (never heard from) and some non-voters present.
    keys = st.sampled_from((*voters, 99, 100))
    match = draw(st.dictionaries(keys, st.integers(min_value=0, max_value=20)))
    return voters, match


@st.composite
def vote_maps(draw: st.DrawFn) -> tuple[tuple[int, ...], dict[int, bool]]:
    voters = draw(voter_sets)
    keys = st.sampled_from((*voters, 99))
    return voters, draw(st.dictionaries(keys, st.booleans()))


@given(match_maps())
def test_committed_index_matches_naive(case: tuple[tuple[int, ...], dict[int, int]]) -> None:
    voters, match = case
    assert committed_index(voters, match) == committed_index_naive(voters, match)


@given(vote_maps())
def test_vote_result_matches_naive(case: tuple[tuple[int, ...], dict[int, bool]]) -> None:
    voters, votes = case
    assert vote_result(voters, votes) == vote_result_naive(voters, votes)


def test_examples() -> None:
    assert committed_index((1, 2, 3), {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index((1, 2, 3, 4), {1: 5, 2: 5, 3: 1, 4: 1}) == 1
    assert committed_index((1,), {1: 7}) == 7
    assert committed_index((1, 2, 3), {1: 9}) == 0
    assert vote_result((1, 2, 3), {1: True}) == VoteResult.PENDING
    assert vote_result((1, 2, 3), {1: True, 2: True}) == VoteResult.WON
    assert vote_result((1, 2, 3), {1: True, 2: False, 3: False}) == VoteResult.LOST
    assert vote_result((1, 2, 3, 4), {1: True, 2: True, 3: False}) == VoteResult.PENDING
    assert vote_result((1, 2, 3, 4), {1: False, 2: False}) == VoteResult.LOST


@pytest.mark.parametrize("fn", [committed_index, committed_index_naive])
def test_no_voters_is_an_error(fn: object) -> None:
    with pytest.raises(ValueError, match="at least one voter"):
        fn((), {})  # type: ignore[operator]
