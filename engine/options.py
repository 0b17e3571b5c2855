"""Engine options: one frozen dataclass, validated before anything is opened.

Sizes are in bytes and times in seconds; the unit is the last word of the
name. ``validate()`` raises :class:`~engine.errors.InvalidArgument` naming the
offending field, so a bad option never gets as far as the disk.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import InitVar, dataclass
from typing import Literal

from engine.errors import InvalidArgument

__all__ = ["KiB", "MiB", "Options"]

KiB = 1024
MiB = 1024 * KiB
_DEFAULT_MAX_TXN_AGE_S = 60.0


@dataclass(frozen=True, slots=True)
class Options:
    """Tunables of one engine instance (``engine.open(path, **fields)``).

    Durability:

    * ``sync`` (``"always"``) -- what an acknowledged write survives.
      ``"always"``: ``put``/``commit`` return only after the WAL record is on
      stable storage (``fdatasync``); survives ``kill -9`` and power loss.
      ``"none"``: the record is handed to the operating system before the
      call returns but not synced; survives ``kill -9`` of the process, may
      lose the most recent writes on power loss or a kernel crash. Meant for
      bulk loads and for replicas whose durability comes from a consensus log.
      This is only the default: ``put``/``delete``/``batch``/``commit`` take
      ``sync=True|False`` for one write, and ``Engine.sync()`` makes every
      write so far durable. A synced write makes every earlier write durable
      too (the log is synced in order, older segments first).
    * ``wal`` (``True``) -- ``False`` skips the write-ahead log: writes live
      only in the memtable until a flush puts them in a table, so a crash
      loses them. Only for a store whose writes can be replayed from
      elsewhere (a replica applying a durable replication log) and for
      scratch data.

    Memory and limits:

    * ``memtable_bytes`` (16 MiB) -- memtable size at which it is frozen and
      flushed, an estimate of the Python heap it occupies (keys, values,
      index), not just payload.
    * ``max_immutable_memtables`` (2) -- frozen memtables that may wait for
      flushing before writes stall.
    * ``max_key_bytes`` (64 KiB), ``max_value_bytes`` (16 MiB) -- larger keys
      or values are refused with ``InvalidArgument`` before anything is written.
    * ``max_batch_bytes`` (64 MiB) -- the sum of key and value lengths of one
      batch or transaction.

    Tables:

    * ``block_bytes`` (4 KiB) -- data block size before compression.
    * ``compression`` (``"lz4"``) -- ``"lz4"`` or ``"none"``; a block is
      stored compressed only if that saves at least 1/8.
    * ``bloom_bits_per_key`` (10) -- Bloom filter size; 0 writes no filter.
    * ``block_cache_bytes`` (32 MiB) -- the shared cache of decoded blocks.
    * ``target_file_bytes`` (4 MiB) -- size at which compaction output is cut.

    Leveled compaction (RocksDB's defaults: bursts are absorbed while
    compaction catches up; LevelDB's 8/12 made a 2M-key bulk load stall):

    * ``l0_compaction_trigger`` (4) -- L0 files that start a compaction.
    * ``l0_slowdown_trigger`` (20) -- L0 files at which each write group is
      delayed by 1 ms.
    * ``l0_stop_trigger`` (36) -- L0 files at which writes wait for compaction.
    * ``level_base_bytes`` (16 MiB) -- target size of L1.
    * ``level_multiplier`` (10) -- each level's target over the previous one's.
    * ``num_levels`` (7) -- levels L0 .. L(num_levels - 1).

    Transactions:

    * ``isolation`` (``"ssi"``) -- ``"ssi"`` (serializable) or ``"occ"``
      (optimistic concurrency control, the baseline).
    * ``max_txn_age_s`` (60.0) -- an older transaction fails with
      ``SerializationFailure("too_old")``; bounds the certifier's memory.
      ``max_txn_age`` is its old name: still accepted (with a
      ``DeprecationWarning``) and readable, checked like the new one.

    Checks:

    * ``paranoid_checks`` (``False``) -- re-read every table right after it
      is written (flush, recovery, compaction) and check every block's
      checksum, the key order and the entry count, as RocksDB's
      ``paranoid_file_checks`` does; a bad table raises ``CorruptionError``
      and stops writes before the manifest references it. Costs one read
      of each new table.
    """

    sync: Literal["always", "none"] = "always"
    wal: bool = True
    memtable_bytes: int = 16 * MiB
    max_immutable_memtables: int = 2
    max_key_bytes: int = 64 * KiB
    max_value_bytes: int = 16 * MiB
    max_batch_bytes: int = 64 * MiB

    block_bytes: int = 4 * KiB
    compression: Literal["lz4", "none"] = "lz4"
    bloom_bits_per_key: int = 10
    block_cache_bytes: int = 32 * MiB
    target_file_bytes: int = 4 * MiB

    l0_compaction_trigger: int = 4
    l0_slowdown_trigger: int = 20
    l0_stop_trigger: int = 36
    level_base_bytes: int = 16 * MiB
    level_multiplier: int = 10
    num_levels: int = 7

    isolation: Literal["ssi", "occ"] = "ssi"
    max_txn_age_s: float = _DEFAULT_MAX_TXN_AGE_S
    # Deprecated spelling of max_txn_age_s (init only; reading it is the property below).
    max_txn_age: InitVar[float | None] = None

    paranoid_checks: bool = False

    def __post_init__(self, max_txn_age: float | None) -> None:
        """Fold the deprecated ``max_txn_age=`` into ``max_txn_age_s`` (both given: must agree)."""
        if max_txn_age is None:
            return
        warnings.warn("Options.max_txn_age is deprecated: use max_txn_age_s (seconds)",
                      DeprecationWarning, stacklevel=3)
        if self.max_txn_age_s != _DEFAULT_MAX_TXN_AGE_S and self.max_txn_age_s != max_txn_age:
            raise InvalidArgument(f"max_txn_age={max_txn_age!r} (deprecated) contradicts "
                                  f"max_txn_age_s={self.max_txn_age_s!r}: give only max_txn_age_s")
        object.__setattr__(self, "max_txn_age_s", max_txn_age)

    def validate(self) -> Options:
        """Return ``self`` if every field is acceptable, else raise ``InvalidArgument``."""
        if self.sync not in ("always", "none"):
            raise InvalidArgument(f"sync must be 'always' or 'none', got {self.sync!r}")
        if self.compression not in ("lz4", "none"):
            raise InvalidArgument(
                f"compression must be 'lz4' or 'none', got {self.compression!r}"
            )
        for flag in ("wal", "paranoid_checks"):
            if type(getattr(self, flag)) is not bool:
                raise InvalidArgument(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.isolation not in ("ssi", "occ"):
            raise InvalidArgument(f"isolation must be 'ssi' or 'occ', got {self.isolation!r}")
        minimums = {
            "memtable_bytes": 4 * KiB,
            "max_immutable_memtables": 1,
            "max_key_bytes": 1,
            "max_value_bytes": 0,
            "max_batch_bytes": 1,
            "block_bytes": 64,
            "bloom_bits_per_key": 0,
            "block_cache_bytes": 0,
            "target_file_bytes": 1 * KiB,
            "l0_compaction_trigger": 1,
            "level_base_bytes": 1 * KiB,
            "level_multiplier": 2,
            "num_levels": 2,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if type(value) is not int:
                raise InvalidArgument(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise InvalidArgument(f"{name} must be >= {low}, got {value}")
        if self.max_key_bytes > 0xFFFF_FFFF or self.max_value_bytes > 0xFFFF_FFFF:
            raise InvalidArgument("max_key_bytes and max_value_bytes must fit in 32 bits")
        if not self.l0_compaction_trigger <= self.l0_slowdown_trigger <= self.l0_stop_trigger:
            raise InvalidArgument(
                "need l0_compaction_trigger <= l0_slowdown_trigger <= l0_stop_trigger, got "
                f"{self.l0_compaction_trigger}, {self.l0_slowdown_trigger}, "
                f"{self.l0_stop_trigger}"
            )
        age = self.max_txn_age_s
        if not isinstance(age, (int, float)) or not age > 0:
            raise InvalidArgument(f"max_txn_age_s must be a positive number, got {age!r}")
        return self

    def replace(self, **changes: object) -> Options:
        """Return a validated copy with ``changes`` applied."""
        # dataclasses.replace copies init-only fields by reading them: the
        # deprecated alias must not be re-read (and re-warned) that way.
        changes = {"max_txn_age": None, **changes}
        if changes["max_txn_age"] is not None and "max_txn_age_s" not in changes:
            changes["max_txn_age_s"] = _DEFAULT_MAX_TXN_AGE_S  # the old name replaces it
        return dataclasses.replace(self, **changes).validate()  # type: ignore[arg-type]


def _max_txn_age(self: Options) -> float:
    """Deprecated: :attr:`Options.max_txn_age_s` under its old name (seconds)."""
    return self.max_txn_age_s


# The old name stays readable. It is set after the class is built because the
# dataclass needs the same name for the init-only alias above.
setattr(Options, "max_txn_age", property(_max_txn_age))  # noqa: B010
