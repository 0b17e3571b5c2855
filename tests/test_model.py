"""The engine against a dict model: a hypothesis state machine with crashes, metamorphic options.

Every run draws its own Options (tiny memtables, blocks, files and level
targets; lz4 or not; bloom or not; sync or not), so flushes and compactions
run constantly in the background while the rules put, delete, delete_range,
batch, read (get, multi_get), scan (ranges and prefixes), take and read
snapshots, open a read-only view beside the writer, flush, compact, close
and reopen, and crash.

Crashes use MemFS clones while the background threads are running, so a
clone may capture a flush or a compaction half done:

* ``process_crash_clone`` keeps what a killed process leaves (everything
  handed to the OS): every acknowledged write must be there.
* ``crash_clone`` keeps what a power failure leaves (synced bytes and synced
  directory entries). Writes carry a random per-write ``sync=`` (None, True,
  False) and ``db.sync()`` is a rule: the store must come back as exactly
  the state after some acknowledged write no older than the last synced one
  (a synced write, ``sync()``, flush, compaction or close) -- a prefix of
  history, never a mix. With ``sync="always"`` and no ``sync=False`` write
  since, that is every acknowledged write.

Sequence numbers double as history indexes: the n-th acknowledged write gets
sequence n, so ``history[db.last_sequence]`` is what the store must hold.
"""

from __future__ import annotations

import random
import threading
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import engine
from engine.fs import MemFS

PATH = "/db"
KEYS = [b"", b"a", b"a\x00", b"b", *(b"k%02d" % i for i in range(28)), b"\xff\xff"]

key_st = st.sampled_from(KEYS)
small_value_st = st.binary(max_size=24)
value_st = st.one_of(small_value_st, st.binary(min_size=200, max_size=700))
bound_st = st.one_of(st.none(), key_st, st.binary(max_size=3))
prefix_st = st.one_of(st.sampled_from([b"", b"a", b"k", b"k0", b"k1", b"\xff", b"\xff\xff"]),
                      st.binary(max_size=2))

sync_st = st.sampled_from([None, None, True, False])
options_st = st.fixed_dictionaries({
    "memtable_bytes": st.integers(4096, 65536),
    "block_bytes": st.integers(64, 4096),
    "target_file_bytes": st.integers(1024, 16384),
    "l0_compaction_trigger": st.integers(1, 4),
    "level_base_bytes": st.integers(1024, 16384),
    "level_multiplier": st.integers(2, 10),
    "num_levels": st.integers(2, 7),
    "compression": st.sampled_from(["lz4", "none"]),
    "bloom_bits_per_key": st.sampled_from([0, 10]),
    "block_cache_bytes": st.sampled_from([0, 8192, 1 << 20]),
    "max_immutable_memtables": st.integers(1, 3),
    "sync": st.sampled_from(["always", "none"]),
})


def in_range(k: bytes, lo: bytes | None, hi: bytes | None) -> bool:
    return (lo is None or k >= lo) and (hi is None or k < hi)


class EngineMachine(RuleBasedStateMachine):
    """An engine on MemFS next to ``model``, a dict of what every read must return."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = MemFS()
        self.db: engine.Engine | None = None
        self.opts: dict[str, Any] = {}
        self.model: dict[bytes, bytes] = {}
        self.history: list[dict[bytes, bytes]] = [{}]  # history[seq]: state after write seq
        # Every write <= this survives a power cut: synced writes (the default with
        # sync="always", sync=True, db.sync()), flush, compact, close.
        self.durable_seq = 0
        self.snapshots: list[tuple[engine.Snapshot, int]] = []

    # -- helpers -------------------------------------------------------------

    @property
    def seq(self) -> int:
        return len(self.history) - 1

    def _acknowledged(self, ops: dict[bytes, bytes | None], sync: bool | None = None) -> None:
        for k, v in ops.items():
            if v is None:
                self.model.pop(k, None)
            else:
                self.model[k] = v
        self.history.append(dict(self.model))
        if sync or (sync is None and self.opts["sync"] == "always"):
            self.durable_seq = self.seq  # a synced write makes its whole past durable

    def _open(self) -> None:
        self.db = engine.open(PATH, fs=self.fs, **self.opts)

    def _forget_snapshots(self) -> None:
        for snap, _ in self.snapshots:
            with pytest.raises(engine.ClosedError):
                snap.get(b"k00")
        self.snapshots = []

    def _check_contents(self, state: dict[bytes, bytes], db: engine.Engine | None = None
                        ) -> None:
        db = db or self.db
        assert db is not None
        assert list(db.scan()) == sorted(state.items())
        for k in KEYS:
            assert db.get(k) == state.get(k), k

    # -- setup ---------------------------------------------------------------

    @initialize(opts=options_st)
    def open_store(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self._open()

    def teardown(self) -> None:
        if self.db is not None:
            self.db.close()

    # -- writes --------------------------------------------------------------

    @rule(k=key_st, v=value_st, sync=sync_st)
    def put(self, k: bytes, v: bytes, sync: bool | None) -> None:
        assert self.db is not None
        self.db.put(k, v, sync=sync)
        self._acknowledged({k: v}, sync)

    @rule(k=key_st, sync=sync_st)
    def delete(self, k: bytes, sync: bool | None) -> None:
        assert self.db is not None
        self.db.delete(k, sync=sync)
        self._acknowledged({k: None}, sync)

    @rule(ops=st.lists(st.tuples(key_st, st.one_of(st.none(), small_value_st)),
                       min_size=1, max_size=8), sync=sync_st)
    def batch(self, ops: list[tuple[bytes, bytes | None]], sync: bool | None) -> None:
        assert self.db is not None
        with self.db.batch(sync=sync) as b:
            for k, v in ops:
                if v is None:
                    b.delete(k)
                else:
                    b.put(k, v)
        self._acknowledged(dict(ops), sync)  # the last operation on a key wins

    @rule(a=key_st, b=key_st, sync=sync_st)
    def delete_range(self, a: bytes, b: bytes, sync: bool | None) -> None:
        assert self.db is not None
        lo, hi = min(a, b), max(a, b)
        if lo == hi:
            hi = lo + b"\x00"
        self.db.delete_range(lo, hi, sync=sync)
        self._acknowledged({k: None for k in self.model if lo <= k < hi}, sync)

    @rule()
    def sync(self) -> None:
        """db.sync(): everything acknowledged so far survives a power cut."""
        assert self.db is not None
        self.db.sync()
        self.durable_seq = self.seq

    @rule(seed=st.integers(0, 2**32), n=st.integers(10, 80))
    def put_many(self, seed: int, n: int) -> None:
        """Enough writes to fill memtables and keep flushes and compactions busy."""
        assert self.db is not None
        rng = random.Random(seed)
        for _ in range(n):
            k = rng.choice(KEYS)
            if rng.random() < 0.2:
                self.db.delete(k)
                self._acknowledged({k: None})
            else:
                v = rng.randbytes(rng.randrange(300))
                self.db.put(k, v)
                self._acknowledged({k: v})

    # -- reads ---------------------------------------------------------------

    @rule(k=st.one_of(key_st, st.binary(max_size=3)))
    def get(self, k: bytes) -> None:
        assert self.db is not None
        assert self.db.get(k) == self.model.get(k)

    @rule(keys=st.lists(st.one_of(key_st, st.binary(max_size=3)), max_size=12))
    def multi_get(self, keys: list[bytes]) -> None:
        assert self.db is not None
        assert self.db.multi_get(keys) == [self.model.get(k) for k in keys]

    @rule(lo=bound_st, hi=bound_st, reverse=st.booleans())
    def scan(self, lo: bytes | None, hi: bytes | None, reverse: bool) -> None:
        assert self.db is not None
        want = sorted((k, v) for k, v in self.model.items() if in_range(k, lo, hi))
        if reverse:
            want.reverse()
        assert list(self.db.scan(lo, hi, reverse=reverse)) == want

    @rule(prefix=prefix_st, reverse=st.booleans())
    def scan_prefix(self, prefix: bytes, reverse: bool) -> None:
        assert self.db is not None
        want = sorted((k, v) for k, v in self.model.items() if k.startswith(prefix))
        if reverse:
            want.reverse()
        assert list(self.db.scan(prefix=prefix, reverse=reverse)) == want

    # -- snapshots -----------------------------------------------------------

    @rule()
    def take_snapshot(self) -> None:
        assert self.db is not None
        snap = self.db.snapshot()
        assert snap.sequence == self.seq
        self.snapshots.append((snap, self.seq))

    @precondition(lambda self: self.snapshots)
    @rule(i=st.integers(0, 100), lo=bound_st, hi=bound_st, reverse=st.booleans(),
          prefix=prefix_st)
    def read_snapshot(self, i: int, lo: bytes | None, hi: bytes | None, reverse: bool,
                      prefix: bytes) -> None:
        snap, seq = self.snapshots[i % len(self.snapshots)]
        old = self.history[seq]
        for k in KEYS:
            assert snap.get(k) == old.get(k), (k, seq)
        assert snap.multi_get(KEYS[::-1]) == [old.get(k) for k in KEYS[::-1]]
        assert list(snap.scan(prefix=prefix)) == sorted(
            (k, v) for k, v in old.items() if k.startswith(prefix))
        want = sorted((k, v) for k, v in old.items() if in_range(k, lo, hi))
        if reverse:
            want.reverse()
        assert list(snap.scan(lo, hi, reverse=reverse)) == want

    @precondition(lambda self: self.snapshots)
    @rule(i=st.integers(0, 100))
    def release_snapshot(self, i: int) -> None:
        snap, _ = self.snapshots.pop(i % len(self.snapshots))
        snap.release()

    # -- maintenance ---------------------------------------------------------

    @rule()
    def flush(self) -> None:
        assert self.db is not None
        self.db.flush()
        self.durable_seq = self.seq

    @rule()
    def compact(self) -> None:
        assert self.db is not None
        self.db.compact()
        self.durable_seq = self.seq
        # Each key now lives in one table: L0 is empty and no two files' ranges meet
        # (background work may still move files down, which keeps this true).
        version = self.db._sv.version
        assert not version.levels[0]
        files = sorted((f for _, f in version.files()), key=lambda f: f.smallest)
        for a, b in pairwise(files):
            assert a.largest < b.smallest

    @rule()
    def read_only_view(self) -> None:
        """A read-only engine opened beside the writer (flushing, compacting) sees the model."""
        assert self.db is not None
        ro = engine.open(PATH, fs=self.fs, read_only=True, **self.opts)
        try:
            self._check_contents(self.model, ro)
            assert ro.last_sequence == self.seq
        finally:
            ro.close()

    @rule()
    def verify(self) -> None:
        assert self.db is not None
        report = self.db.verify()
        assert report.ok, str(report)

    @rule()
    def close_and_reopen(self) -> None:
        assert self.db is not None
        self.db.close()
        self._forget_snapshots()
        self._open()
        self.durable_seq = self.seq
        assert self.db.last_sequence == self.seq
        self._check_contents(self.model)

    @rule()
    def process_crash(self) -> None:
        """kill -9: the clone keeps every byte handed to the OS; nothing acknowledged is lost."""
        assert self.db is not None
        crashed = self.fs.process_crash_clone()
        self.db.close()
        self._forget_snapshots()
        self.fs = crashed
        self._open()
        self.durable_seq = self.seq
        assert self.db.last_sequence == self.seq
        self._check_contents(self.model)

    @rule(seed=st.integers(0, 2**32))
    def power_crash(self, seed: int) -> None:
        """Power failure: only synced data survives; after unsynced writes, a prefix of history.

        Every write up to ``durable_seq`` (the last synced one) must be
        there. Torn tails (``rng``) only when every write was synced: unsynced
        records torn out of order across WAL segments may read as corruption
        (FORMAT.md, "Torn tail or corruption?").
        """
        assert self.db is not None
        all_synced = self.durable_seq == self.seq
        crashed = self.fs.crash_clone(random.Random(seed) if all_synced else None)
        self.db.close()
        self._forget_snapshots()
        self.fs = crashed
        self._open()
        recovered = self.db.last_sequence
        assert self.durable_seq <= recovered <= self.seq, "a synced write was lost"
        del self.history[recovered + 1:]
        self.model = dict(self.history[recovered])
        self.durable_seq = self.seq
        self._check_contents(self.model)

    # -- invariants ----------------------------------------------------------

    @invariant()
    def shape_and_sequence(self) -> None:
        if self.db is None:
            return
        assert self.db.last_sequence == self.seq
        version = self.db._sv.version
        version.check()
        l0 = version.levels[0]
        assert [f.max_seq for f in l0] == sorted((f.max_seq for f in l0), reverse=True)
        for level, files in enumerate(version.levels):
            for f in files:
                assert f.max_seq <= self.seq and f.min_seq <= f.max_seq
            if level:
                for a, b in pairwise(files):
                    assert a.largest < b.smallest
        assert self.db.stats()["background_error"] is None


EngineMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=80, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestEngineModel = EngineMachine.TestCase


# ---------------------------------------------------------------------- targeted crash cases


def test_crash_during_recovery_loses_nothing() -> None:
    """A power failure while recovery is installing its manifest loses no acknowledged write.

    Recovery replays WAL segments newer than the manifest's ``next_file``
    (created by memtable switches the manifest never heard of). If it then
    hands out file numbers from the manifest's ``next_file``, its new WAL can
    reuse -- and truncate -- one of those segments before the new manifest is
    live; a crash at that moment loses the segment's acknowledged writes.
    """
    fs = MemFS()
    db = engine.open(PATH, fs=fs, memtable_bytes=4096, max_immutable_memtables=2)
    gate = threading.Event()

    def hold_flushes(op: str, path: str) -> None:
        if op == "create" and path.endswith(".sst"):
            gate.wait(timeout=30)

    fs.set_fault(hold_flushes)
    model = {}
    i = 0
    while db.stats()["immutable_memtables"] < 2:  # two memtable switches, no flush done
        k, v = b"key%04d" % i, b"value%04d" % i + bytes(40)
        db.put(k, v)
        model[k] = v
        i += 1
    crashed = fs.crash_clone()  # sync="always": every acknowledged write is in it
    gate.set()
    fs.set_fault(None)
    db.close()

    def fail_current_rename(op: str, path: str) -> None:
        if op == "rename" and path.endswith("CURRENT"):
            raise OSError("power failure during recovery")

    # Reopen with a memtable big enough to replay everything into one table,
    # and lose power just before the new manifest becomes current.
    crashed.set_fault(fail_current_rename)
    with pytest.raises(OSError):
        engine.open(PATH, fs=crashed, memtable_bytes=1 << 20)
    again = crashed.crash_clone()
    with engine.open(PATH, fs=again) as db2:
        missing = [k for k in model if db2.get(k) != model[k]]
        assert not missing, f"{len(missing)} of {len(model)} acknowledged writes lost"
