"""The one retry loop for transactions: run, commit, and on a retryable failure back off.

Both ``Engine.run_transaction`` and the replicated
``KeyValueStore.run_transaction`` are this loop with their own ``begin``,
their own retryable errors (the replicated store adds ``NotLeader`` and
``Unavailable``) and their own ``sleep`` (a deterministic cluster "sleeps"
by stepping its simulation). Keeping one copy keeps one default and one
backoff rule.

Backoff: before retry ``n`` (0-based) the loop sleeps a uniformly random
time in ``[0, min(backoff_max_s, backoff_base_s * 2**n)]`` -- "full jitter",
which spreads out transactions that conflicted with each other so they do
not collide again in lockstep.

Pure apart from the injected ``sleep`` and ``rng``: no clock, no threads.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, TypeVar

from engine.errors import SerializationFailure

__all__ = ["DEFAULT_MAX_RETRIES", "Attempt", "backoff_bound_s", "run_with_retries"]

# Retries after the first attempt, for every run_transaction. 30 full-jitter
# waits capped at 0.1 s add up to about 1.3 s on average: enough to ride out a
# burst of conflicts or a leader election, short enough to surface a livelock.
DEFAULT_MAX_RETRIES = 30
DEFAULT_BACKOFF_BASE_S = 0.001
DEFAULT_BACKOFF_MAX_S = 0.1

# 2**60 times any sane base is past any sane cap; larger exponents would only
# overflow the float conversion (max_retries can be huge in tests).
_MAX_EXPONENT = 60

T = TypeVar("T")
Tx = TypeVar("Tx", bound="Attempt")


class Attempt(Protocol):
    """What the loop needs of a transaction: commit it, or roll it back (a no-op once ended)."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class CommitOnExit:
    """A transaction's ``with`` block: commit on a clean exit, roll back on an exception.

    Shared by every transaction class (the engine's, the replicated store's, the network
    client's); the subclass provides ``commit()`` and ``rollback()``.
    """

    __slots__ = ()

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def backoff_bound_s(attempt: int, backoff_base_s: float, backoff_max_s: float) -> float:
    """The upper bound of the jittered wait before retry ``attempt`` (0-based), in seconds."""
    return min(backoff_max_s, math.ldexp(backoff_base_s, min(attempt, _MAX_EXPONENT)))


def run_with_retries(begin: Callable[[], Tx], fn: Callable[[Tx], T], *,
                     max_retries: int = DEFAULT_MAX_RETRIES,
                     backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
                     backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
                     retryable: tuple[type[BaseException], ...] = (SerializationFailure,),
                     sleep: Callable[[float], object] = time.sleep,
                     rng: random.Random | None = None) -> T:
    """Run ``fn(begin())`` and commit; retry ``retryable`` failures with jittered backoff.

    Every failed attempt is rolled back before anything else happens. A
    ``retryable`` error (from ``fn`` or from the commit) is retried at most
    ``max_retries`` times, so ``fn`` runs at most ``max_retries + 1`` times;
    then the last error is re-raised. Any other exception propagates at once.
    An error from ``begin`` itself is never retried here (the caller's
    ``begin`` has its own policy: the replicated store's waits for a leader
    until its timeout). Returns what ``fn`` returned in the attempt that
    committed.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    uniform = random.uniform if rng is None else rng.uniform
    attempt = 0
    while True:
        tx = begin()
        try:
            result = fn(tx)
            tx.commit()
            return result
        except retryable:
            tx.rollback()
            if attempt >= max_retries:
                raise
            sleep(uniform(0, backoff_bound_s(attempt, backoff_base_s, backoff_max_s)))
            attempt += 1
        except BaseException:
            tx.rollback()
            raise
