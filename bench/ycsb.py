"""YCSB-style mixes (Cooper et al., SoCC 2010) over zipfian-distributed keys.

* A: 50% reads, 50% updates      (a session store)
* B: 95% reads, 5% updates       (photo tagging)
* C: 100% reads                  (a user-profile cache)
* F: read-modify-write           (a user database: read a record, write it back)

Keys follow YCSB's *scrambled* zipfian distribution (constant 0.99): a few
records are hot, and hashing scatters the hot ones over the key space so that
they do not sit in the same blocks. Updates are durable (``sync="always"``,
``synchronous=FULL``), as a real deployment would run them. F's read and
write are two operations, as in YCSB's own client, not one transaction.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bench.workloads import Config, MakeSystem, Measurement, Values, _load, _threads, key

__all__ = ["MIXES", "ScrambledZipfian", "ycsb"]

MIXES = {"a": 0.5, "b": 0.95, "c": 1.0, "f": -1.0}  # read fraction; -1: read-modify-write


class ScrambledZipfian:
    """YCSB's ScrambledZipfianGenerator: zipfian ranks, then FNV-hashed over ``n`` items."""

    def __init__(self, n: int, rng: random.Random, theta: float = 0.99) -> None:
        self.n = n
        self.rng = rng
        self.theta = theta
        self.zetan = sum(1 / (i ** theta) for i in range(1, n + 1))
        zeta2 = 1 + 1 / 2 ** theta
        self.alpha = 1 / (1 - theta)
        self.eta = (1 - (2 / n) ** (1 - theta)) / (1 - zeta2 / self.zetan)

    def next_rank(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1:
            return 0
        if uz < 1 + 0.5 ** self.theta:
            return 1
        return int(self.n * (self.eta * u - self.eta + 1) ** self.alpha)

    def next(self) -> int:
        return _fnv64(self.next_rank()) % self.n

    def with_rng(self, rng: random.Random) -> ScrambledZipfian:
        """The same distribution drawing from ``rng`` (zeta is O(n) to compute: share it)."""
        twin = object.__new__(ScrambledZipfian)
        twin.__dict__.update(self.__dict__)
        twin.rng = rng
        return twin


def _fnv64(v: int) -> int:
    h = 0xCBF29CE484222325
    for _ in range(8):
        h ^= v & 0xFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        v >>= 8
    return h


def ycsb(mix: str, quick_ops: int = 40_000) -> Callable[[MakeSystem, Config], Measurement]:
    read_fraction = MIXES[mix]

    def run(make: MakeSystem, cfg: Config) -> Measurement:
        sysm = make(durable=True)
        _load(sysm, cfg, cfg.keys, shuffled=False)  # YCSB loads in key order
        values = Values(cfg.values, cfg.seed + 7)
        per = cfg.n(quick_ops) // cfg.threads
        base = ScrambledZipfian(cfg.keys, random.Random(cfg.seed))

        def body(t: int, lat: list[float]) -> None:
            rng = random.Random(cfg.seed * 31 + t)
            gen = base.with_rng(rng)
            for _ in range(per):
                k = key(gen.next())
                t0 = time.perf_counter()
                if read_fraction < 0:
                    sysm.get(k)
                    sysm.put(k, values.next())
                elif rng.random() < read_fraction:
                    sysm.get(k)
                else:
                    sysm.put(k, values.next())
                lat.append((time.perf_counter() - t0) * 1e6)

        m = _threads(cfg.threads, body)
        sysm.close()
        return m
    return run
