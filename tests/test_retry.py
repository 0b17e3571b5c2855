"""The one retry loop (engine/retry.py): retries, backoff bounds, giving up, rollbacks."""

from __future__ import annotations

import inspect
import random

import pytest

import engine
from engine.errors import SerializationFailure
from engine.retry import DEFAULT_MAX_RETRIES, backoff_bound_s, run_with_retries
from replication import KeyValueStore


class FakeTx:
    """A transaction that records what the loop did to it."""

    def __init__(self, n: int, commit_error: BaseException | None = None) -> None:
        self.n = n
        self.commit_error = commit_error
        self.committed = False
        self.rolled_back = False

    def commit(self) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.committed = True

    def rollback(self) -> None:
        self.rolled_back = True


class Harness:
    """begin() hands out numbered FakeTxs; sleep() records its argument."""

    def __init__(self, commit_errors: dict[int, BaseException] | None = None) -> None:
        self.txs: list[FakeTx] = []
        self.sleeps: list[float] = []
        self.commit_errors = commit_errors or {}

    def begin(self) -> FakeTx:
        tx = FakeTx(len(self.txs), self.commit_errors.get(len(self.txs)))
        self.txs.append(tx)
        return tx

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


class TopRng(random.Random):
    """uniform(a, b) returns b, so every sleep shows its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def conflict(n: int) -> SerializationFailure:
    return SerializationFailure("write_write", f"attempt {n}")


def test_retries_until_an_attempt_commits() -> None:
    """Failures in fn and in commit are both retried; the committed attempt's result returns."""
    h = Harness(commit_errors={1: conflict(1)})

    def fn(tx: FakeTx) -> int:
        if tx.n == 0:
            raise conflict(0)
        return tx.n * 10

    assert run_with_retries(h.begin, fn, sleep=h.sleep, rng=random.Random(1)) == 20
    assert [t.rolled_back for t in h.txs] == [True, True, False]
    assert [t.committed for t in h.txs] == [False, False, True]
    assert len(h.sleeps) == 2


def test_backoff_is_exponential_and_capped() -> None:
    """The bound doubles from backoff_base_s per retry and stops at backoff_max_s."""
    h = Harness()

    def fn(tx: FakeTx) -> None:
        raise conflict(tx.n)

    with pytest.raises(SerializationFailure):
        run_with_retries(h.begin, fn, max_retries=8, backoff_base_s=0.001, backoff_max_s=0.02,
                         sleep=h.sleep, rng=TopRng())
    assert h.sleeps == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02, 0.02])
    assert backoff_bound_s(100_000, 0.001, 0.1) == 0.1  # no overflow for huge retry counts


def test_jitter_stays_within_the_bound(seed: int) -> None:
    """With a real rng every wait is in [0, bound] and they are not all the bound."""
    h = Harness()

    def fn(tx: FakeTx) -> None:
        raise conflict(tx.n)

    with pytest.raises(SerializationFailure):
        run_with_retries(h.begin, fn, max_retries=40, backoff_base_s=0.001, backoff_max_s=0.05,
                         sleep=h.sleep, rng=random.Random(seed))
    assert len(h.sleeps) == 40
    for n, s in enumerate(h.sleeps):
        assert 0 <= s <= backoff_bound_s(n, 0.001, 0.05)
    assert len(set(h.sleeps)) > 1


def test_gives_up_after_max_retries_with_the_last_error() -> None:
    """fn runs max_retries + 1 times; the error raised is the last attempt's, all rolled back."""
    h = Harness()
    errors: list[SerializationFailure] = []

    def fn(tx: FakeTx) -> None:
        errors.append(conflict(tx.n))
        raise errors[-1]

    with pytest.raises(SerializationFailure) as exc:
        run_with_retries(h.begin, fn, max_retries=3, sleep=h.sleep, rng=random.Random(2))
    assert exc.value is errors[-1] and len(errors) == 4
    assert len(h.sleeps) == 3
    assert all(t.rolled_back and not t.committed for t in h.txs)


def test_zero_retries_runs_once() -> None:
    h = Harness()

    def fn(tx: FakeTx) -> None:
        raise conflict(tx.n)

    with pytest.raises(SerializationFailure):
        run_with_retries(h.begin, fn, max_retries=0, sleep=h.sleep)
    assert len(h.txs) == 1 and h.sleeps == []
    with pytest.raises(ValueError):
        run_with_retries(h.begin, lambda tx: None, max_retries=-1)


def test_other_exceptions_are_never_retried() -> None:
    """A non-retryable error (or a retryable one of another loop) rolls back and propagates."""
    h = Harness()

    def fn(tx: FakeTx) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        run_with_retries(h.begin, fn, sleep=h.sleep)
    assert len(h.txs) == 1 and h.txs[0].rolled_back and h.sleeps == []

    h = Harness()

    def conflicting(tx: FakeTx) -> None:
        raise conflict(tx.n)

    with pytest.raises(SerializationFailure):
        run_with_retries(h.begin, conflicting, retryable=(LookupError,), sleep=h.sleep)
    assert len(h.txs) == 1 and h.txs[0].rolled_back and h.sleeps == []


def test_extra_retryable_errors_are_retried() -> None:
    """The replicated store's loop retries its own errors too (NotLeader, Unavailable)."""
    h = Harness()

    def fn(tx: FakeTx) -> str:
        if tx.n < 2:
            raise LookupError("leader changed") if tx.n else conflict(0)
        return "ok"

    assert run_with_retries(h.begin, fn, retryable=(SerializationFailure, LookupError),
                            sleep=h.sleep, rng=random.Random(3)) == "ok"
    assert len(h.txs) == 3 and h.txs[0].rolled_back and h.txs[1].rolled_back


def test_begin_errors_are_not_retried() -> None:
    h = Harness()

    def begin() -> FakeTx:
        raise conflict(0)

    with pytest.raises(SerializationFailure):
        run_with_retries(begin, lambda tx: None, sleep=h.sleep)
    assert h.sleeps == []


def test_one_default_for_both_run_transactions() -> None:
    """The engine's and the replicated store's run_transaction share the loop's default."""
    for method in (engine.Engine.run_transaction, KeyValueStore.run_transaction):
        default = inspect.signature(method).parameters["max_retries"].default
        assert default == DEFAULT_MAX_RETRIES
