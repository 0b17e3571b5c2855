"""The history checkers, re-exported: they live in :mod:`bench.checkers` so that ``python -m
bench nemesis`` can use them too (tests import them from here, as before)."""

from bench.checkers import (
    SEARCH_LIMIT_EXCEEDED,
    CommittedTxn,
    EdgeKind,
    LinearizabilityResult,
    Op,
    SerializabilityResult,
    check_linearizable,
    check_serializable,
    classify_cycle,
)

__all__ = [
    "SEARCH_LIMIT_EXCEEDED",
    "CommittedTxn",
    "EdgeKind",
    "LinearizabilityResult",
    "Op",
    "SerializabilityResult",
    "check_linearizable",
    "check_serializable",
    "classify_cycle",
]
