"""The classic isolation anomalies, interleaved by hand at the engine level, one thread.

Each scenario is a small script (one step a line) run against a fresh engine
for every isolation level it names. A step is::

    T1 begin [ro]                 start transaction T1 (read-only with ``ro``)
    T1 get KEY [= VALUE]          read; VALUE is the writer id read (``-``: absent)
    T1 scan LO HI [rev] [= K:V ...]  range read; expected pairs in scan order
    T1 put KEY [TAG]              write the value ``T1`` (or ``T1.TAG``: intermediate)
    T1 commit | T1 rollback
    db put KEY                    a plain, non-transactional put (writer ``B1``, ``B2``...)
    db get KEY [= VALUE]          read the latest committed state

and may end in ``! REASON`` (every isolation fails this step with that
SerializationFailure reason) or ``! ssi:REASON occ:REASON`` (per isolation;
an isolation not named must succeed). Once a transaction failed, each later
step of it must raise TransactionClosed. Values are the writer's id, so every
read tells who wrote what was seen. After the script, every read must be of
a committed transaction's final write (no G1a aborted reads, no G1b
intermediate reads) and the committed transactions must pass
``tests.checkers.check_serializable``.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass, field

import pytest

import engine
from tests.checkers import CommittedTxn, check_serializable

ISOLATIONS = ("ssi", "occ")


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    setup: tuple[str, ...]
    script: str


SCENARIOS = [
    Scenario(
        "lost_update",
        "P4: two read-modify-writes of one key; the second committer fails.",
        ("x",),
        """
        T1 begin
        T2 begin
        T1 get x = T0
        T2 get x = T0
        T1 put x
        T2 put x
        T1 commit
        T2 commit ! write_write
        db get x = T1
        """,
    ),
    Scenario(
        "lost_update_against_plain_put",
        "A plain put between a transaction's read and its write is not lost.",
        ("x",),
        """
        T1 begin
        T1 get x = T0
        db put x
        T1 put x
        T1 commit ! write_write
        db get x = B1
        """,
    ),
    Scenario(
        "dirty_write_cycle",
        "G0: interleaved writes to x and y cannot both commit.",
        ("x", "y"),
        """
        T1 begin
        T2 begin
        T1 put x
        T2 put x
        T2 put y
        T1 put y
        T1 commit
        T2 commit ! write_write
        db get x = T1
        db get y = T1
        """,
    ),
    Scenario(
        "read_skew",
        "G-single: T1 reads x before and y after T2 changed both, and still sees T0's y.",
        ("x", "y"),
        """
        T1 begin
        T2 begin
        T1 get x = T0
        T2 get x = T0
        T2 get y = T0
        T2 put x
        T2 put y
        T2 commit
        T1 get y = T0
        T1 put z
        T1 commit ! occ:stale_read
        """,
    ),
    Scenario(
        "read_skew_read_only",
        "A read-only reader of x and y sees one snapshot; SSI commits it, OCC cannot.",
        ("x", "y"),
        """
        T1 begin ro
        T1 get x = T0
        T2 begin
        T2 put x
        T2 put y
        T2 commit
        T1 get y = T0
        T1 scan a z = x:T0 y:T0
        T1 commit ! occ:stale_read
        T3 begin ro
        T3 scan a z rev = y:T2 x:T2
        T3 commit
        """,
    ),
    Scenario(
        "write_skew_doctors_on_call",
        "G2-item: two doctors each see both on call and each goes off; one must fail.",
        ("alice", "bob"),
        """
        T1 begin
        T2 begin
        T1 get alice = T0
        T1 get bob = T0
        T2 get alice = T0
        T2 get bob = T0
        T1 put alice
        T2 put bob
        T1 commit
        T2 commit ! ssi:dangerous_structure occ:stale_read
        db get bob = T0
        """,
    ),
    Scenario(
        "write_skew_reads_after_first_commit",
        "G2-item with T2's reads after T1 committed (edges found at read time).",
        ("alice", "bob"),
        """
        T1 begin
        T2 begin
        T1 get alice = T0
        T1 get bob = T0
        T1 put alice
        T1 commit
        T2 get alice = T0
        T2 get bob = T0
        T2 put bob
        T2 commit ! ssi:dangerous_structure occ:stale_read
        """,
    ),
    Scenario(
        "phantom_write_skew",
        "G2 with predicates: both count the on-call shift by scan and insert into it.",
        ("on/alice", "on/bob"),
        """
        T1 begin
        T2 begin
        T1 scan on/ on0 = on/alice:T0 on/bob:T0
        T2 scan on/ on0 = on/alice:T0 on/bob:T0
        T1 put on/carol
        T2 put on/dave
        T1 commit
        T2 commit ! ssi:dangerous_structure occ:stale_read
        db get on/dave = -
        """,
    ),
    Scenario(
        "phantom_write_skew_summary",
        "G2 with predicates: each scans the other's range and writes into its own.",
        ("a/1", "b/1"),
        """
        T1 begin
        T2 begin
        T1 scan b/ b0 = b/1:T0
        T2 scan a/ a0 = a/1:T0
        T1 put a/2
        T2 put b/2
        T2 commit
        T1 commit ! ssi:dangerous_structure occ:stale_read
        """,
    ),
    Scenario(
        "phantom_not_visible",
        "An insert into a scanned range never appears in a second scan of the same transaction.",
        ("on/alice",),
        """
        T1 begin
        T1 scan on/ on0 = on/alice:T0
        T2 begin
        T2 put on/bob
        T2 commit
        T1 scan on/ on0 = on/alice:T0
        T1 scan on/ on0 rev = on/alice:T0
        T1 get on/bob = -
        T1 put count
        T1 commit ! occ:stale_read
        """,
    ),
    Scenario(
        "read_only_anomaly_ro_commits_first",
        "Fekete et al. 2004: T3 saw T1 and not T2's future write; T2 must then fail.",
        ("x", "y"),
        """
        T2 begin
        T2 get x = T0
        T2 get y = T0
        T1 begin
        T1 get y = T0
        T1 put y
        T1 commit
        T3 begin ro
        T3 get x = T0
        T3 get y = T1
        T3 commit
        T2 put x
        T2 commit ! ssi:dangerous_structure occ:stale_read
        """,
    ),
    Scenario(
        "read_only_anomaly_pivot_commits_first",
        "Fekete et al. 2004: T2 commits before T3 reads x, so T3 must fail (or, in OCC, T2).",
        ("x", "y"),
        """
        T2 begin
        T2 get x = T0
        T2 get y = T0
        T1 begin
        T1 get y = T0
        T1 put y
        T1 commit
        T3 begin ro
        T3 get y = T1
        T2 put x
        T2 commit ! occ:stale_read
        T3 get x = T0 ! ssi:dangerous_structure
        T3 commit
        """,
    ),
    Scenario(
        "read_only_refinement_no_anomaly",
        "Same writes, but T3's snapshot predates T1: T3 sees T0 only and nobody must fail in SSI.",
        ("x", "y"),
        """
        T2 begin
        T2 get x = T0
        T2 get y = T0
        T3 begin ro
        T1 begin
        T1 get y = T0
        T1 put y
        T1 commit
        T3 get x = T0
        T3 get y = T0
        T3 commit ! occ:stale_read
        T2 put x
        T2 commit ! occ:stale_read
        """,
    ),
    Scenario(
        "circular_information_flow",
        "G1c (Hermitage): each writes, then reads the other's key; neither sees the other.",
        ("x", "y"),
        """
        T1 begin
        T2 begin
        T1 put x
        T2 put y
        T1 get y = T0
        T2 get x = T0
        T1 commit
        T2 commit ! ssi:dangerous_structure occ:stale_read
        db get x = T1
        db get y = T0
        """,
    ),
    Scenario(
        "circular_information_flow_after_commit",
        "G1c: T2 reads x after T1 committed it and still sees T0 (no wr edge into T2).",
        ("x", "y"),
        """
        T1 begin
        T2 begin
        T1 put x
        T2 put y
        T1 commit
        T2 get x = T0
        T2 commit ! occ:stale_read
        T3 begin
        T3 get x = T1
        T3 commit
        """,
    ),
    Scenario(
        "aborted_reads_rollback",
        "G1a: a rolled-back write is seen by nobody, before or after the rollback.",
        ("x",),
        """
        T1 begin
        T2 begin
        T1 put x
        T1 put new
        T2 get x = T0
        T1 rollback
        T2 get x = T0
        T2 get new = -
        T2 commit
        T3 begin
        T3 get x = T0
        T3 scan a z = x:T0
        T3 commit
        db get new = -
        """,
    ),
    Scenario(
        "aborted_reads_failed_commit",
        "G1a: the writes of a transaction that failed certification are never visible.",
        ("x",),
        """
        T1 begin
        T2 begin
        T1 put x
        T1 put new
        T2 put x
        T2 commit
        T1 commit ! write_write
        T3 begin
        T3 get x = T2
        T3 get new = -
        T3 commit
        db get new = -
        """,
    ),
    Scenario(
        "intermediate_reads",
        "G1b: only the final write of a committed transaction is ever visible to others.",
        ("x",),
        """
        T1 begin
        T2 begin
        T1 put x a
        T2 get x = T0
        T1 get x = T1.a
        T1 put x
        T1 get x = T1
        T1 scan a z = x:T1
        T1 commit
        T2 get x = T0
        T2 commit ! occ:stale_read
        T3 begin
        T3 get x = T1
        T3 scan a z = x:T1
        T3 commit
        db get x = T1
        """,
    ),
]


@dataclass
class _Txn:
    """A script transaction as the runner sees it."""

    name: str
    tx: engine.Transaction
    reads: list[tuple[bytes, str | None]] = field(default_factory=list)
    writes: dict[bytes, bytes] = field(default_factory=dict)
    failed: bool = False


def _expected_failure(annotation: str, isolation: str) -> str | None:
    """The reason this step must fail with under ``isolation``, or None if it must succeed."""
    words = annotation.split()
    if len(words) == 1 and ":" not in words[0]:
        return words[0]
    reasons = dict(word.split(":", 1) for word in words)
    return reasons.get(isolation)


def _writer(value: bytes | None) -> str | None:
    """The id of the transaction that wrote ``value`` (``T1.a`` is an intermediate of T1)."""
    return None if value is None else value.decode().split(".")[0]


def _want(expected: list[str]) -> bytes | None:
    return None if expected == ["-"] else expected[0].encode()


class ScriptRunner:
    """Runs one scenario under one isolation level and checks what happened."""

    # The checker orders each key's versions by commit_seq, so writers get sequence * 1000.
    # A transaction that wrote nothing has no sequence and takes part only through its
    # reads; any unique commit_seq serves, e.g. snapshot * 1000 + n.
    SCALE = 1000

    def __init__(self, scenario: Scenario, isolation: str) -> None:
        self.scenario = scenario
        self.isolation = isolation
        self.db = engine.open("/db", fs=engine.MemFS(), isolation=isolation)
        self.keys = sorted({k.encode() for k in scenario.setup} | {
            words[2].encode() for words in map(str.split, scenario.script.splitlines())
            if len(words) > 2 and words[1] in ("get", "put")})
        self.txns: dict[str, _Txn] = {}
        self.committed: list[CommittedTxn] = []
        self.final: dict[str, dict[bytes, bytes]] = {}  # committed writer -> its final writes
        self.aborted: list[str] = []
        self.raw_reads: list[tuple[str, bytes, bytes]] = []  # reader, key, others' value
        self._non_writers = itertools.count(1)
        self._blind = itertools.count(1)
        self.where = scenario.name  # the step being run, for failure messages

    def run(self) -> None:
        try:
            self._setup()
            lines = textwrap.dedent(self.scenario.script).strip().splitlines()
            for lineno, line in enumerate(lines, 1):
                self.where = f"{self.scenario.name}[{self.isolation}] line {lineno}: {line!r}"
                self._step(line)
            self._check_history()
        finally:
            self.db.close()

    def _setup(self) -> None:
        tx = self.db.begin()
        for key in self.scenario.setup:
            tx.put(key.encode(), b"T0")
        tx.commit()
        assert tx.sequence is not None
        keys = tuple(k.encode() for k in self.scenario.setup)
        self.committed.append(CommittedTxn("T0", tx.sequence * self.SCALE, (), keys))
        self.final["T0"] = dict.fromkeys(keys, b"T0")

    def _step(self, line: str) -> None:
        step, _, annotation = line.partition("!")
        op, _, expect = step.partition("=")
        who, verb, *args = op.split()
        expected = expect.split()
        if who == "db":
            self._db_step(verb, args[0].encode(), expected)
            return
        if verb == "begin":
            self.txns[who] = _Txn(who, self.db.begin(read_only=args == ["ro"]))
            return
        t = self.txns[who]
        if t.failed:
            with pytest.raises(engine.TransactionClosed):
                self._apply(t, verb, args, expected)
            return
        must_fail = _expected_failure(annotation, self.isolation)
        try:
            self._apply(t, verb, args, expected)
        except engine.SerializationFailure as exc:
            assert must_fail == exc.reason, f"{self.where}: failed with {exc.reason}"
            t.failed = True
            self.aborted.append(who)
            return
        assert must_fail is None, f"{self.where}: expected {must_fail}, but it succeeded"

    def _db_step(self, verb: str, key: bytes, expected: list[str]) -> None:
        if verb == "put":
            name = f"B{next(self._blind)}"
            self.db.put(key, name.encode())
            self.committed.append(
                CommittedTxn(name, self.db.last_sequence * self.SCALE, (), (key,)))
            self.final[name] = {key: name.encode()}
        else:
            got = self.db.get(key)
            assert got == _want(expected), f"{self.where}: got {got!r}"

    def _apply(self, t: _Txn, verb: str, args: list[str], expected: list[str]) -> None:
        """Perform one transaction step and check and record what it read."""
        tx = t.tx
        if verb == "get":
            key = args[0].encode()
            value = tx.get(key)
            self._record_read(t, key, value)
            if expected:
                assert value == _want(expected), f"{self.where}: got {value!r}"
        elif verb == "scan":
            lo, hi = args[0].encode(), args[1].encode()
            items = list(tx.scan(lo, hi, reverse="rev" in args))
            found = dict(items)
            for key in self.keys:  # a scan reads every key of its range, present or not
                if lo <= key < hi:
                    self._record_read(t, key, found.get(key))
            if expected:
                shown = [f"{k.decode()}:{v.decode()}" for k, v in items]
                assert shown == expected, f"{self.where}: got {shown}"
        elif verb == "put":
            key = args[0].encode()
            value_written = (f"{t.name}.{args[1]}" if len(args) > 1 else t.name).encode()
            tx.put(key, value_written)
            t.writes[key] = value_written
        elif verb == "commit":
            tx.commit()
            if tx.sequence is not None:
                seq = tx.sequence * self.SCALE
            else:
                seq = tx.snapshot_sequence * self.SCALE + next(self._non_writers)
            self.committed.append(CommittedTxn(t.name, seq, tuple(t.reads), tuple(t.writes)))
            self.final[t.name] = dict(t.writes)
        elif verb == "rollback":
            tx.rollback()
            self.aborted.append(t.name)
        else:
            raise ValueError(f"{self.where}: unknown step {verb!r}")

    def _record_read(self, t: _Txn, key: bytes, value: bytes | None) -> None:
        if key in t.writes:  # its own buffered write, which must be the latest one
            assert value == t.writes[key], f"{self.where}: {t.name} lost its own write"
            return
        if value is not None:
            self.raw_reads.append((t.name, key, value))
        t.reads.append((key, _writer(value)))

    def _check_history(self) -> None:
        """No aborted or intermediate reads; serializable; the certifier forgot everything."""
        for reader, key, value in self.raw_reads:
            writer = _writer(value)
            if writer in self.final:
                assert self.final[writer].get(key) == value, (
                    f"G1b: {reader} read {value!r} for {key!r}, not {writer}'s final write")
        result = check_serializable(self.committed, self.aborted)
        assert result.ok, f"{self.scenario.name}[{self.isolation}]: {result}"
        for t in self.txns.values():
            t.tx.rollback()  # a no-op for ended ones
        assert set(self.db.stats()["certifier"].values()) == {0}, "certifier state not freed"


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_anomaly(scenario: Scenario, isolation: str) -> None:
    """Each scripted anomaly is prevented: the marked step fails, the history is serializable."""
    ScriptRunner(scenario, isolation).run()
