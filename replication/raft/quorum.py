"""Majority quorum arithmetic as pure functions, each with a naive twin for testing.

* :func:`committed_index` -- the largest index that a majority of voters
  has matched (every entry up to it is stored on a quorum).
* :func:`vote_result` -- whether a set of votes has won, lost, or could
  still go either way.

The fast versions are what the node calls; the ``*_naive`` twins compute the
same answers the obvious, slow way (try every candidate index; try every way
the missing votes could fall) and exist only so a property test can check
the fast ones against them (etcd's ``quorum/quick_test.go``).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from enum import IntEnum

__all__ = [
    "VoteResult",
    "committed_index",
    "committed_index_naive",
    "majority",
    "vote_result",
    "vote_result_naive",
]


class VoteResult(IntEnum):
    """Outcome of a vote tally. Never renumber."""

    PENDING = 1  # not decided: the missing votes could still go either way
    LOST = 2  # a majority can no longer be reached
    WON = 3  # a majority granted


def majority(n: int) -> int:
    """Votes needed out of ``n`` voters."""
    return n // 2 + 1


def _check_voters(voters: Collection[int]) -> None:
    if not voters:
        raise ValueError("a quorum needs at least one voter")


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The largest index that a majority of ``voters`` has matched.

    ``match`` maps a voter to the highest index known to be stored on it; a
    voter missing from it counts as 0. Sort the voters' matches from high to
    low: the majority-th one is held by a majority (and by nothing larger).
    """
    _check_voters(voters)
    matched = sorted((match.get(v, 0) for v in voters), reverse=True)
    return matched[majority(len(matched)) - 1]


def committed_index_naive(voters: Collection[int], match: Mapping[int, int]) -> int:
    """Twin of :func:`committed_index`: try each candidate index, count its holders."""
    _check_voters(voters)
    best = 0
    for candidate in {match.get(v, 0) for v in voters}:
        holders = sum(1 for v in voters if match.get(v, 0) >= candidate)
        if holders >= majority(len(voters)) and candidate > best:
            best = candidate
    return best


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Tally ``votes`` (voter -> granted) among ``voters``; others have not answered.

    Votes from non-voters are ignored.
    """
    _check_voters(voters)
    granted = rejected = 0
    for v in voters:
        answer = votes.get(v)
        if answer is True:
            granted += 1
        elif answer is False:
            rejected += 1
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if granted + (len(voters) - granted - rejected) >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def vote_result_naive(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Twin of :func:`vote_result`: try every way the missing votes could fall."""
    _check_voters(voters)
    missing = [v for v in voters if v not in votes]
    outcomes = set()
    for fill in itertools.product((False, True), repeat=len(missing)):
        complete = {v: votes[v] for v in voters if v in votes}
        complete.update(zip(missing, fill, strict=True))
        yes = sum(1 for v in voters if complete[v])
        outcomes.add(yes * 2 > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING
