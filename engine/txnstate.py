"""The certifier's record of one transaction: :class:`TxnState`, :class:`Status`.

Owns the per-transaction fields the certifier (``engine/ssi.py``) reads and
writes; holds no rules and touches nothing else. Pure data, no I/O.

Lifecycle of a :class:`TxnState`::

    begin --> ACTIVE --certify--> PENDING --committed--> COMMITTED
                 |                   \\---abort (commit failed)--> ABORTED
                 \\--abort / failure--> ABORTED

PENDING ("certified, not yet visible") exists for the replicated leader,
whose commits become visible only after the consensus log accepts them: a
pending transaction's writes are invisible to readers but count for
conflicts, and it is concurrent with every transaction that begins before it
becomes visible.

Invariants:

1. ``commit_stamp`` is 0 until the transaction is certified; after that it
   is its position in certification order and never changes.
2. ``commit_seq`` is None for a transaction that wrote nothing (no key and
   no range): such a transaction can be the T_in or pivot of a dangerous
   structure, never its T_out.

Thread-safety: none of its own. Every field belongs to the certifier that
created the record (caller holds the certifier's lock); transactions and
the leader only hold the reference and pass it back.
"""

from __future__ import annotations

from enum import Enum

from engine.errors import SerializationReason

__all__ = ["SERIALIZATION_REASONS", "Status", "TxnState"]


SERIALIZATION_REASONS = frozenset(
    ("write_write", "dangerous_structure", "too_old", "doomed", "stale_read"))


class Status(Enum):
    ACTIVE = "active"
    PENDING = "pending"
    COMMITTED = "committed"
    ABORTED = "aborted"


class TxnState:
    """The certifier's record of one transaction."""

    __slots__ = (
        "begin_stamp",
        "begin_time",
        "commit_seq",
        "commit_stamp",
        "doomed",
        "in_edges",
        "out_edges",
        "range_writes",
        "ranges",
        "read_only",
        "reads",
        "snapshot",
        "status",
        "txn_id",
        "writes",
    )

    def __init__(self, txn_id: int, snapshot: int, stamp: int, now: float,
                 read_only: bool) -> None:
        self.txn_id = txn_id
        self.snapshot = snapshot
        self.begin_stamp = stamp
        self.begin_time = now
        self.read_only = read_only
        self.status = Status.ACTIVE
        self.doomed: SerializationReason | None = None
        self.commit_stamp = 0  # position in certification order, once certified
        self.commit_seq: int | None = None  # sequence of its writes (None: read-only)
        self.reads: set[bytes] = set()
        self.ranges: list[tuple[bytes | None, bytes | None]] = []
        self.writes: frozenset[bytes] = frozenset()
        self.range_writes: tuple[tuple[bytes, bytes], ...] = ()  # delete_range, blind only
        self.in_edges: set[TxnState] = set()
        self.out_edges: set[TxnState] = set()

    @property
    def certified(self) -> bool:
        return self.status is Status.PENDING or self.status is Status.COMMITTED

    def __repr__(self) -> str:
        return (f"TxnState(id={self.txn_id}, snap={self.snapshot}, {self.status.value}, "
                f"commit_seq={self.commit_seq})")
