"""``Engine.stats()``: every counter and size, each key always present.

The keys and what they count are documented once, on ``Engine.stats`` (what
``help(db.stats)`` shows); a test checks every key appears there.

Pure: :func:`collect` reads the values it is given; the caller holds the
engine's ``_mutex`` so that they are one consistent picture.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine.block import Block
from engine.cache import LRUCache
from engine.errors import EngineError
from engine.reads import SuperVersion
from engine.ssi import SERIALIZATION_REASONS, Certifier
from engine.sstable import Table

__all__ = ["STATS_COUNTERS", "collect"]

# The counters of stats() (Engine.stats documents them); all start at zero.
STATS_COUNTERS = (
    "writes", "write_groups", "user_bytes_written", "wal_syncs", "wal_batches_replayed",
    "stall_l0_slowdown", "stall_l0_stop", "stall_memtable", "flushes", "bytes_flushed",
    "compactions", "trivial_moves", "bytes_compacted_in", "bytes_compacted_out",
)
_ROLLBACK_REASONS = ("rollback", "refused", "storage_error")


def collect(counters: Counter[str], *, last_sequence: int, sv: SuperVersion,
            snapshots: Counter[int], tables: dict[int, Table], cache: LRUCache[Block],
            certifier: Certifier, error: EngineError | None, read_only: bool
            ) -> dict[str, Any]:
    """The ``stats()`` dictionary of these parts (module docstring). Caller holds _mutex."""
    levels = [{"files": len(files), "bytes": sum(f.size for f in files)}
              for files in sv.version.levels]
    out: dict[str, Any] = dict.fromkeys(STATS_COUNTERS, 0)
    out.update(counters)
    out.update(
        last_sequence=last_sequence,
        memtable_bytes=sv.mem.approx_bytes,
        immutable_memtables=len(sv.imms),
        levels=levels,
        table_bytes=sum(lv["bytes"] for lv in levels),
        snapshots=sum(snapshots.values()),
        block_cache_bytes=cache.used_bytes,
        block_cache_hits=cache.hits,
        block_cache_misses=cache.misses,
        block_cache_rejected=cache.rejected,
        table_index_filter_bytes=sum(t.memory_bytes for t in tables.values()),
        txn_commits=certifier.commits,
        txn_aborts={**dict.fromkeys(sorted(SERIALIZATION_REASONS), 0), **certifier.aborts},
        txn_rollbacks={**dict.fromkeys(_ROLLBACK_REASONS, 0), **certifier.rollbacks},
        certifier=certifier.tracked(),
        background_error=str(error) if error else None,
        read_only=read_only,
    )
    return out
