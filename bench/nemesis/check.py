"""Checking recorded histories against the committed log: the verdict of a nemesis run.

Pure functions over values (attempts, ops, the decoded log); no processes
or sockets. Shared by ``python -m bench nemesis`` and the history
tests (tests/test_cluster_histories.py), so both judge by the same rules:

1. Transactions: every acknowledged commit is in the log at the index it
   was acknowledged with; every attempt reported as certainly not committed
   is not; an ambiguous one counts as committed iff it is there; the
   committed ones form an acyclic serialization graph
   (:func:`bench.checkers.check_serializable`), and each one's snapshot
   holds every commit acknowledged before it began (strict order).
2. List-append (:func:`check_list_append`): the log's successive values of
   each list key extend one another by exactly one writer, and every list a
   committed transaction read is a prefix of the key's final list.
3. Registers: linearizable (:func:`bench.checkers.check_linearizable`);
   every acknowledged put is in the log and no put reported as failed is.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.checkers import CommittedTxn, check_serializable
from engine.errors import SerializationFailure
from replication.errors import AmbiguousCommit, NotLeader, Unavailable

__all__ = ["NOT_COMMITTED", "SEQ_SCALE", "Attempt", "TxnVerdict", "check_list_append",
           "check_transactions", "last_element"]

SEQ_SCALE = 1_000_000  # writer commit_seq = log index * SEQ_SCALE; readers fill the gaps
Log = list[tuple[int, dict[bytes, bytes | None]]]
NOT_COMMITTED = (Unavailable, NotLeader, SerializationFailure)  # documented: nothing committed


@dataclass
class Attempt:
    """One transaction attempt as a client saw it. ``reads`` maps each key read to the value
    read; ``outcome`` is committed | failed (certainly not) | ambiguous | error."""

    txn_id: str
    read_only: bool
    invoke: float
    reads: dict[bytes, str | None] = field(default_factory=dict)
    writes: list[bytes] = field(default_factory=list)
    outcome: str = "pending"
    sequence: int | None = None
    snapshot: int | None = None
    complete: float | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"txn_id": self.txn_id, "read_only": self.read_only, "invoke": self.invoke,
                "reads": {k.decode(): v for k, v in self.reads.items()},
                "writes": [k.decode() for k in self.writes], "outcome": self.outcome,
                "sequence": self.sequence, "snapshot": self.snapshot,
                "complete": self.complete, "error": self.error}

    def record(self, run: Callable[[], None]) -> None:
        """Run the attempt (``run`` commits it) and record its outcome and completion time:
        what the store's errors say about whether it committed."""
        try:
            run()
        except AmbiguousCommit:
            self.outcome = "ambiguous"
        except NOT_COMMITTED as exc:
            self.outcome, self.error = "failed", type(exc).__name__
        except Exception as exc:
            self.outcome, self.error = "error", f"{type(exc).__name__}: {exc}"
        else:
            self.outcome = "committed"
        self.complete = time.monotonic()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attempt:
        return cls(d["txn_id"], d["read_only"], d["invoke"],
                   {k.encode(): v for k, v in d["reads"].items()},
                   [k.encode() for k in d["writes"]], d["outcome"], d["sequence"],
                   d["snapshot"], d["complete"], d["error"])


@dataclass
class TxnVerdict:
    """What :func:`check_transactions` found: ``problems`` empty means the history holds."""

    committed: list[CommittedTxn]
    outcomes: Counter[str]
    problems: list[str]


def last_element(value: str) -> str:
    """The writer of a list-append value: its last element."""
    return value.rsplit(" ", 1)[-1]


def check_transactions(attempts: Sequence[Attempt], log: Log, keys: Collection[bytes],
                       writer_of: Callable[[str], str] = str) -> TxnVerdict:
    """Rule 1 of the module docstring. ``keys``: the transaction workload's keys (other log
    entries are another workload's); ``writer_of(value)``: the attempt that wrote ``value``,
    which is also what a read of ``value`` observed."""
    outcomes = Counter(a.outcome for a in attempts)
    problems: list[str] = []
    key_set = set(keys)
    landed: dict[str, int] = {}  # writer -> log index
    for index, ops in log:
        if not ops or not set(ops) <= key_set:  # a barrier, or another workload's write
            continue
        writers = {writer_of(v.decode()) for v in ops.values() if v is not None}
        if len(writers) != 1:
            problems.append(f"log entry {index} mixes writers {sorted(writers)}")
            continue
        writer = writers.pop()
        if writer in landed:
            problems.append(f"{writer} committed twice: {landed[writer]} and {index}")
        landed[writer] = index

    committed: list[CommittedTxn] = []
    aborted: list[str] = []
    reader_offsets: dict[int, int] = {}
    for a in attempts:
        in_log = landed.get(a.txn_id)
        if a.read_only:
            if a.outcome != "committed" or a.snapshot is None:
                aborted.append(a.txn_id)
                continue
            offset = reader_offsets[a.snapshot] = reader_offsets.get(a.snapshot, 0) + 1
            seq = a.snapshot * SEQ_SCALE + offset
        elif a.outcome == "committed":
            if in_log != a.sequence:
                problems.append(f"acknowledged write lost or moved: {a.txn_id} acknowledged "
                                f"at {a.sequence} but found at {in_log} in the log")
            if in_log is None:
                continue
            seq = in_log * SEQ_SCALE
        elif a.outcome == "failed":
            if in_log is not None:
                problems.append(f"{a.txn_id} failed with {a.error} yet committed at {in_log}")
            aborted.append(a.txn_id)
            continue
        elif in_log is None:  # ambiguous or unexpected error, and not in the log
            aborted.append(a.txn_id)
            continue
        else:
            seq = in_log * SEQ_SCALE
        reads = tuple((k, None if v is None else writer_of(v)) for k, v in a.reads.items())
        committed.append(CommittedTxn(a.txn_id, seq, reads, tuple(a.writes)))
    strangers = set(landed) - {a.txn_id for a in attempts}
    if strangers:
        problems.append(f"log entries written by no recorded attempt: {sorted(strangers)[:5]}")

    result = check_serializable(committed, aborted)
    if not result.ok:
        involved = {t for edge in result.cycle or [] for t in edge[:2]}
        detail = [(a.txn_id, a.outcome, a.error, a.read_only, "snapshot", a.snapshot,
                   "seq", a.sequence, "log", landed.get(a.txn_id), "reads", a.reads,
                   "writes", a.writes) for a in attempts if a.txn_id in involved]
        problems.append(f"not serializable: cycle {result.cycle}; anomalies "
                        f"{result.anomalies[:5]}; attempts {detail}")

    # Strict: a transaction's snapshot holds every commit acknowledged before it began.
    acked = sorted((a.complete, a.sequence) for a in attempts
                   if a.outcome == "committed" and a.sequence is not None
                   and a.complete is not None)
    times = [t for t, _ in acked]
    best: list[int] = []
    for _, s in acked:
        best.append(max(s, best[-1]) if best else s)
    for a in attempts:
        if a.outcome != "committed" or a.snapshot is None:
            continue
        i = bisect.bisect_left(times, a.invoke)
        if i and a.snapshot < best[i - 1]:
            problems.append(f"not strict: {a.txn_id} began after commit {best[i - 1]} was "
                            f"acknowledged but read snapshot {a.snapshot}")
    return TxnVerdict(committed, outcomes, problems)


def check_list_append(attempts: Sequence[Attempt], log: Log, keys: Collection[bytes]
                      ) -> list[str]:
    """Rule 2 of the module docstring; the problems found."""
    problems: list[str] = []
    final: dict[bytes, list[str]] = {}
    for index, ops in log:
        for k, v in ops.items():
            if k not in keys:
                continue
            old = final.get(k, [])
            new = [] if v is None else v.decode().split(" ")
            if new[:-1] != old or not new:
                problems.append(f"log entry {index}: {k!r} goes from {old[-3:]}... to "
                                f"{new[-3:]}...: not one append")
            final[k] = new
    for a in attempts:
        if a.outcome != "committed":
            continue
        for k, read in a.reads.items():
            seen = [] if read is None else read.split(" ")
            have = final.get(k, [])
            if have[:len(seen)] != seen:
                problems.append(f"{a.txn_id} read {k!r} = ...{seen[-3:]}, not a prefix of "
                                f"the final list")
    return problems
