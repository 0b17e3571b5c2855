"""Named workloads, in the spirit of LevelDB's db_bench.

Each workload is a function ``(make_system, cfg) -> Measurement`` run once per
system in a fresh child process (so peak RSS is per system and no cache
carries over). Keys are 16 bytes (``%016d`` of a random number, as in
db_bench); values are 100 bytes that lz4 compresses about 2:1 (a random
half repeated), or incompressible with ``--values random``.

Every measurement keeps per-operation latencies (a sample of up to 200,000),
so the report can give p50 and p99 beside the throughput.
"""

from __future__ import annotations

import math
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench.systems import NETWORK_PEERS, System

__all__ = ["WORKLOADS", "Config", "Measurement", "Workload"]

MakeSystem = Callable[..., System]


@dataclass
class Config:
    keys: int = 100_000
    threads: int = 16
    seed: int = 42
    values: str = "compressible"
    suite: str = "quick"
    op_delay_ms: float = 0.2
    scale: float = 1.0
    # Durable (fsync-bound) workloads: each measurement lasts at least
    # min_seconds (the op count is scaled up to reach it) and is repeated
    # `repeats` times, systems interleaved; the report gives the median and
    # the spread. Disk latency wanders from second to second, and a 0.7 s
    # run of fillsync1 swung its ratio to sqlite3 from 0.85x to 1.52x.
    min_seconds: float = 2.0
    repeats: int = 3
    path: str = ""  # the workload's scratch directory (set by the runner)
    system: str = "stratakv"  # the system under test (set by the runner)

    def n(self, quick: int) -> int:
        """Operation count for a workload whose quick-suite size is ``quick``."""
        return max(1, int(quick * self.scale))


@dataclass
class Measurement:
    ops: int = 0
    seconds: float = 0.0
    latencies_us: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    run: Callable[[MakeSystem, Config], Measurement]
    unit: str = "ops/s"
    peers: bool = True  # also run on sqlite3/lmdb/rocksdb
    durable: bool = False  # fsync-bound: time floor and repeats (Config.min_seconds, repeats)
    network: bool = False  # on server processes: also run on the NETWORK_PEERS (etcd)

    def runs_on(self, system: str) -> bool:
        """Whether this workload is measured on ``system`` (stratakv: always)."""
        if system == "stratakv":
            return True
        return self.network if system in NETWORK_PEERS else self.peers


class Values:
    """db_bench-style value source: slices of a pre-generated pool."""

    def __init__(self, kind: str, seed: int, size: int = 100) -> None:
        rng = random.Random(seed)
        pool = bytearray()
        while len(pool) < 1 << 20:
            if kind == "random":
                pool += rng.randbytes(size)
            else:
                half = rng.randbytes(size // 2)
                pool += (half * 2)[:size]
        self._pool = bytes(pool)
        self._size = size
        self._pos = 0
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            if self._pos + self._size > len(self._pool):
                self._pos = 0
            v = self._pool[self._pos : self._pos + self._size]
            self._pos += self._size
            return v


def key(i: int) -> bytes:
    return b"%016d" % i


def _timed(fn: Callable[[], object], lat: list[float]) -> None:
    t = time.perf_counter()
    fn()
    lat.append((time.perf_counter() - t) * 1e6)


def _threads(n: int, body: Callable[[int, list[float]], None]) -> Measurement:
    """Run ``body(thread_index, latencies)`` on ``n`` threads; time the whole."""
    lats: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            body(i, lats[i])
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    all_lat = [x for lat in lats for x in lat]
    return Measurement(ops=len(all_lat), seconds=seconds, latencies_us=all_lat)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- write workloads -----------------------------------------------------------


def fillsync(threads: int, quick_ops: int) -> Callable[[MakeSystem, Config], Measurement]:
    def run(make: MakeSystem, cfg: Config) -> Measurement:
        sysm = make(durable=True)
        values = Values(cfg.values, cfg.seed)
        per = cfg.n(quick_ops) // threads

        def body(t: int, lat: list[float]) -> None:
            rng = random.Random(cfg.seed + t)
            for _ in range(per):
                k, v = key(rng.randrange(cfg.keys)), values.next()
                _timed(partial(sysm.put, k, v), lat)

        m = _threads(threads, body)
        sysm.close()
        return m
    return run


def putrandom(make: MakeSystem, cfg: Config) -> Measurement:
    """Single-key puts in random order, not synced (sync="none", synchronous=OFF)."""
    sysm = make(durable=False)
    values = Values(cfg.values, cfg.seed)
    rng = random.Random(cfg.seed)
    keys = [key(rng.randrange(cfg.keys)) for _ in range(cfg.n(50_000))]
    lat: list[float] = []
    put = sysm.put
    start = time.perf_counter()
    for k in keys:
        t = time.perf_counter()
        put(k, values.next())
        lat.append((time.perf_counter() - t) * 1e6)
    seconds = time.perf_counter() - start
    sysm.close()
    return Measurement(len(keys), seconds, lat)


def fillbatch(make: MakeSystem, cfg: Config) -> Measurement:
    sysm = make(durable=True)
    values = Values(cfg.values, cfg.seed)
    rng = random.Random(cfg.seed)
    lat: list[float] = []
    start = time.perf_counter()
    batches = cfg.n(300)
    for _ in range(batches):
        items = [(key(rng.randrange(cfg.keys)), values.next()) for _ in range(100)]
        _timed(partial(sysm.put_many, items), lat)
    seconds = time.perf_counter() - start
    sysm.close()
    return Measurement(ops=batches * 100, seconds=seconds, latencies_us=lat,
                       extra={"batches": batches})


def _load(sysm: System, cfg: Config, n: int, *, shuffled: bool = True) -> Measurement:
    """Bulk load keys 0..n-1 in batches of 1,000 (sqlite3: executemany per transaction).

    With ``shuffled`` the keys come in a pseudo-random order generated on the
    fly -- holding millions of shuffled ints in a list would add ~36 bytes a
    key to the process's peak RSS and spoil the memory figures.
    """
    values = Values(cfg.values, cfg.seed)
    order = _permutation(n, cfg.seed) if shuffled else iter(range(n))
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(0, n, 1000):
        items = [(key(next(order)), values.next()) for _ in range(min(1000, n - i))]
        _timed(partial(sysm.put_many, items), lat)
    return Measurement(ops=n, seconds=time.perf_counter() - start, latencies_us=lat)


def _permutation(n: int, seed: int) -> Iterator[int]:
    """Every int in [0, n) once, scattered: ``(a * j + b) mod n`` with a coprime to n."""
    rng = random.Random(seed)
    a = rng.randrange(n // 3 + 1, n) | 1 if n > 3 else 1
    while math.gcd(a, n) != 1:
        a += 2
    b = rng.randrange(n)
    return ((a * j + b) % n for j in range(n))


def fillrandom(make: MakeSystem, cfg: Config) -> Measurement:
    sysm = make(durable=False)
    m = _load(sysm, cfg, cfg.keys)
    write_amp = getattr(sysm, "write_amplification", None)
    if write_amp:  # LSM engines: what background compaction had written by the end of the load
        m.extra["write_amp_load"] = round(write_amp(), 2)
    settle = time.perf_counter()
    sysm.settle()  # type: ignore[attr-defined]
    m.extra["settle_seconds"] = time.perf_counter() - settle
    if write_amp:  # ... and after settle's full compaction into the bottom level
        m.extra["write_amp_settled"] = round(write_amp(), 2)
    m.extra["bytes_on_disk"] = sysm.bytes_on_disk()
    m.extra["bytes_per_key"] = m.extra["bytes_on_disk"] / cfg.keys
    sysm.close()
    m.extra["peak_rss_mb"] = peak_rss_mb()
    return m


# -- read workloads --------------------------------------------------------------


def _loaded(make: MakeSystem, cfg: Config, **options: Any) -> System:
    sysm = make(durable=False, **options)
    _load(sysm, cfg, cfg.keys)
    sysm.settle()  # type: ignore[attr-defined]
    sysm.reopen()
    return sysm


def _reads(sysm: System, keys: list[bytes]) -> Measurement:
    lat: list[float] = []
    get = sysm.get
    start = time.perf_counter()
    for k in keys:
        t = time.perf_counter()
        get(k)
        lat.append((time.perf_counter() - t) * 1e6)
    return Measurement(ops=len(keys), seconds=time.perf_counter() - start, latencies_us=lat)


def readrandom(make: MakeSystem, cfg: Config) -> Measurement:
    sysm = _loaded(make, cfg)
    rng = random.Random(cfg.seed + 1)
    keys = [key(rng.randrange(cfg.keys)) for _ in range(cfg.n(100_000))]
    _reads(sysm, keys[: len(keys) // 10])  # warm the caches a little, as db_bench's reads do
    m = _reads(sysm, keys)
    found = sum(sysm.get(k) is not None for k in keys[:1000])
    sysm.close()
    if found != 1000:
        raise RuntimeError(f"readrandom: only {found} of 1000 present keys found")
    m.extra["peak_rss_mb"] = peak_rss_mb()
    return m


def readmissing(make: MakeSystem, cfg: Config) -> Measurement:
    sysm = _loaded(make, cfg)
    rng = random.Random(cfg.seed + 2)
    keys = [b"%015d." % rng.randrange(cfg.keys) for _ in range(cfg.n(100_000))]
    m = _reads(sysm, keys)
    if any(sysm.get(k) is not None for k in keys[:1000]):
        raise RuntimeError("readmissing: found a key that was never written")
    sysm.close()
    return m


def readmem(make: MakeSystem, cfg: Config) -> Measurement:
    """Point reads of 100,000 keys that all sit in stratakv's memtable (no reopen)."""
    n = 100_000
    sysm = make(durable=False, memtable_bytes=512 << 20)
    _load(sysm, cfg, n)
    rng = random.Random(cfg.seed + 3)
    keys = [key(rng.randrange(n)) for _ in range(cfg.n(200_000))]
    m = _reads(sysm, keys)
    sysm.close()
    return m


def scan100(make: MakeSystem, cfg: Config) -> Measurement:
    sysm = _loaded(make, cfg)
    rng = random.Random(cfg.seed + 4)
    starts = [key(rng.randrange(cfg.keys)) for _ in range(cfg.n(5_000))]
    lat: list[float] = []
    total = 0
    start = time.perf_counter()
    for s in starts:
        t = time.perf_counter()
        total += len(sysm.scan(s, 100))
        lat.append((time.perf_counter() - t) * 1e6)
    seconds = time.perf_counter() - start
    sysm.close()
    return Measurement(ops=total, seconds=seconds, latencies_us=lat,
                       extra={"scans": len(starts), "scans_per_s": len(starts) / seconds})


def multiget100(make: MakeSystem, cfg: Config) -> Measurement:
    """Batched reads of 100 random present keys a call, after reopen; beside a loop of get.

    Each system uses its best batched read (``System.get_many``): stratakv's
    ``multi_get``, sqlite3's ``SELECT ... WHERE k IN (100 keys)``, RocksDB's
    MultiGet through rocksdict's ``get(list)``, lmdb's gets in one read
    transaction. ``extra["loop_keys_per_s"]`` is a loop of ``get`` over other
    batches of the same shape, timed call by call interleaved with the
    batched reads, so both see the same cache state.
    """
    sysm = _loaded(make, cfg)
    rng = random.Random(cfg.seed + 5)
    calls = cfg.n(1_000)

    def batches() -> list[list[bytes]]:
        return [[key(rng.randrange(cfg.keys)) for _ in range(100)] for _ in range(calls)]

    warm, timed, looped = batches()[: calls // 10], batches(), batches()
    get_many, get = sysm.get_many, sysm.get
    for b in warm:
        get_many(b)
    lat: list[float] = []
    seconds = loop_seconds = 0.0
    for b, other in zip(timed, looped, strict=True):  # interleaved: the same cache state
        t = time.perf_counter()
        get_many(b)
        t2 = time.perf_counter()
        for k in other:
            get(k)
        loop_seconds += time.perf_counter() - t2
        seconds += t2 - t
        lat.append((t2 - t) * 1e6)
    check = timed[0]
    found = get_many(check)
    if found != [get(k) for k in check] or None in found:
        raise RuntimeError("multiget100: get_many disagrees with get, or missed a present key")
    sysm.close()
    keys_read = 100 * calls
    return Measurement(ops=keys_read, seconds=seconds, latencies_us=lat,
                       extra={"calls": calls, "calls_per_s": calls / seconds,
                              "loop_keys_per_s": keys_read / loop_seconds,
                              "vs_loop_of_get": loop_seconds / seconds})


def deleterange(make: MakeSystem, cfg: Config) -> Measurement:
    """Delete a 10,000-key range in one call, then scan across it, beside an empty range.

    The range tombstone is timed as one op. Scans across the deleted range
    are timed against scans of a range of the same width that never held a
    key, first with the tombstone in the memtable over keys in tables, then
    after a full compaction has dropped the deleted keys. Within noise the
    two should cost the same (``extra["deleted_vs_empty"]``).
    """
    sysm = _loaded(make, cfg)
    db = sysm.db  # type: ignore[attr-defined]  # stratakv only (peers=False)
    width = min(10_000, cfg.keys // 2)
    lo_i = cfg.keys // 4
    lo, hi = key(lo_i), key(lo_i + width)
    empty_lo, empty_hi = key(cfg.keys + 1_000), key(cfg.keys + 1_000 + width)
    t = time.perf_counter()
    db.delete_range(lo, hi)
    delete_us = (time.perf_counter() - t) * 1e6
    rounds = cfg.n(200)

    def timed(a: bytes, b: bytes) -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            if list(db.scan(a, b)):
                raise RuntimeError("deleterange: a scan of a deleted or empty range found keys")
        return (time.perf_counter() - t0) / rounds * 1e6

    deleted_mem, empty_mem = timed(lo, hi), timed(empty_lo, empty_hi)
    db.compact()
    deleted_compacted, empty_compacted = timed(lo, hi), timed(empty_lo, empty_hi)
    if db.get(key(lo_i - 1)) is None or db.get(key(lo_i + width)) is None:
        raise RuntimeError("deleterange: a key next to the range was deleted")
    sysm.close()
    return Measurement(ops=1, seconds=delete_us / 1e6, latencies_us=[delete_us], extra={
        "range_keys": width, "scan_deleted_us": round(deleted_mem, 1),
        "scan_empty_us": round(empty_mem, 1),
        "deleted_vs_empty": round(deleted_mem / max(empty_mem, 1e-9), 2),
        "compacted_scan_deleted_us": round(deleted_compacted, 1),
        "compacted_scan_empty_us": round(empty_compacted, 1),
        "after_compaction_deleted_vs_empty": round(
            deleted_compacted / max(empty_compacted, 1e-9), 2)})


def _extra_workloads() -> list[Workload]:
    """Workloads defined in modules that import this one (YCSB, cluster, transactions)."""
    from bench.cluster_bench import cluster_failover, cluster_get, cluster_put
    from bench.process_bench import proc_failover, proc_workload
    from bench.txn import txn_workload
    from bench.ycsb import ycsb

    return [
        Workload("ycsb_a", "YCSB A: 50% reads / 50% durable updates, zipfian, --threads",
                 ycsb("a"), durable=True),
        Workload("ycsb_b", "YCSB B: 95% reads / 5% durable updates, zipfian", ycsb("b")),
        Workload("ycsb_c", "YCSB C: reads only, zipfian", ycsb("c")),
        Workload("ycsb_f", "YCSB F: read-modify-write (read, then durable update), zipfian",
                 ycsb("f"), durable=True),
        *[Workload(f"txn_{name.replace('-', '_')}_{iso}",
                   f"{name} transactions, {iso.upper()}, 16 threads, 0.2 ms think time, durable",
                   txn_workload(name, iso), unit="commits/s", peers=False)
          for name in ("bank", "read-mostly", "write-skew", "hot-spot") for iso in ("ssi", "occ")],
        Workload("cluster_put1", "3-node cluster: durable puts, 1 thread", cluster_put(1, 1_000),
                 peers=False, durable=True),
        Workload("cluster_put16", "3-node cluster: durable puts, 16 threads",
                 cluster_put(16, 6_400), peers=False, durable=True),
        Workload("cluster_get", "3-node cluster: linearizable gets (read index), 1 thread",
                 cluster_get, peers=False),
        Workload("cluster_failover", "3-node cluster: leader crash -> first successful put "
                                     "(latency = failover time)", cluster_failover,
                 unit="failovers/s", peers=False),
        *[Workload(f"proc_put{n}", f"3 node processes over TCP: durable puts, {n} client"
                                   f"{'s' if n > 1 else ''} in other processes",
                   proc_workload("put", n, ops), peers=False, durable=True, network=True)
          for n, ops in ((1, 1_000), (16, 6_400), (64, 12_800))],
        Workload("proc_get16", "3 node processes: linearizable gets (ReadIndex), 16 clients",
                 proc_workload("get", 16, 6_400), peers=False, network=True),
        Workload("proc_rmw16", "3 node processes: read-modify-write transactions on 1,000 "
                               "keys, 16 clients", proc_workload("rmw", 16, 3_200),
                 unit="commits/s", peers=False, durable=True, network=True),
        Workload("proc_failover", "3 node processes: SIGKILL the leader -> first successful "
                                  "put (latency = failover time)", proc_failover,
                 unit="failovers/s", peers=False, network=True),
    ]


WORKLOADS: dict[str, Workload] = {
    w.name: w for w in [
        Workload("fillsync1", "durable single-key puts, 1 thread", fillsync(1, 2_000),
                 durable=True),
        Workload("fillsync16", "durable single-key puts, 16 threads (group commit)",
                 fillsync(16, 6_400), durable=True),
        Workload("fillbatch100", "durable batches of 100 puts", fillbatch, unit="keys/s",
                 durable=True),
        Workload("putrandom", "single-key puts in random order, not synced", putrandom),
        Workload("fillrandom", "bulk load of --keys keys in random order, batches of 1,000, "
                               "not synced", fillrandom, unit="keys/s"),
        Workload("readmem", "random gets, 100,000 keys resident in the memtable", readmem),
        Workload("readrandom", "random gets of present keys after load and reopen", readrandom),
        Workload("readmissing", "random gets of absent keys after load and reopen", readmissing),
        Workload("scan100", "100-key range scans from random keys, after reopen", scan100,
                 unit="keys/s"),
        Workload("multiget100", "batched gets of 100 random present keys a call, after "
                                "reopen (multi_get; sqlite3 IN (...); RocksDB MultiGet)",
                 multiget100, unit="keys/s"),
        Workload("deleterange", "delete_range of 10,000 keys (one call), then scans across "
                                "it vs an empty range (extra: deleted_vs_empty)", deleterange,
                 unit="deletes/s", peers=False),
        *_extra_workloads(),
    ]
}
