"""Leveled compaction: what to compact (pure picker) and how (the merge loop).

Shape of the tree::

    L0   flushed tables, newest first, may overlap        trigger: file count
    L1   sorted, non-overlapping, target level_base_bytes
    Ln   target level_base_bytes * level_multiplier ** (n - 1)

:func:`pick` scores every level (L0 by file count over
``l0_compaction_trigger``, deeper levels by bytes over target) and returns a
:class:`CompactionTask` for the most urgent one above 1.0, choosing the file
of Ln round-robin from a per-level pointer (LevelDB's compact_pointer). A
single input with nothing overlapping below becomes a *trivial move*: a
manifest edit, no I/O.

:func:`keep_versions` is the drop rule, applied to each key's versions,
newest first: a version is kept if it is the newest one some reader can see
-- the current state or a live snapshot -- so with snapshots
``s1 < s2 < ...`` it keeps the newest version in each interval
``(s_{i-1}, s_i]`` and the newest overall. A tombstone that no snapshot
predates is dropped, with everything older, when nothing below the output
level can hold the key (``bottommost``).

:func:`run` drives the merge and cuts output tables of about
``target_file_bytes``, always between two user keys so that a key never spans
two tables of a level. It does I/O only through the builder factory it is
given.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from engine.iterators import Cursor, LevelCursor, merged_chunks
from engine.memtable import Entry
from engine.options import Options
from engine.sstable import Table, TableBuilder, TableProperties
from engine.version import FileMeta, Version

__all__ = ["CompactionTask", "keep_versions", "level_target_bytes", "pick",
           "pick_bottom_rewrite", "pick_level", "run"]


@dataclass(frozen=True, slots=True)
class CompactionTask:
    level: int
    inputs: tuple[FileMeta, ...]
    overlaps: tuple[FileMeta, ...]  # files of output_level
    bottommost: bool
    reason: str
    in_place: bool = False  # rewrite the bottom level into itself (drops tombstones)

    @property
    def output_level(self) -> int:
        return self.level if self.in_place else self.level + 1

    @property
    def trivial_move(self) -> bool:
        return len(self.inputs) == 1 and not self.overlaps and not self.in_place

    @property
    def input_bytes(self) -> int:
        return sum(f.size for f in self.inputs) + sum(f.size for f in self.overlaps)


def level_target_bytes(options: Options, level: int) -> int:
    return int(options.level_base_bytes * options.level_multiplier ** (level - 1))


def _task(version: Version, level: int, inputs: Sequence[FileMeta], reason: str
          ) -> CompactionTask:
    lo = min(f.smallest for f in inputs)
    hi = max(f.largest for f in inputs)
    overlaps = tuple(version.overlapping(level + 1, lo, hi))
    if overlaps:
        lo = min(lo, overlaps[0].smallest)
        hi = max(hi, overlaps[-1].largest)
    deeper = range(level + 2, len(version.levels))
    bottommost = not any(version.overlapping(d, lo, hi) for d in deeper)
    return CompactionTask(level, tuple(inputs), overlaps, bottommost, reason)


def pick(version: Version, options: Options, pointers: dict[int, bytes]
         ) -> CompactionTask | None:
    """The most urgent compaction, or None when every level is within target."""
    last = len(version.levels) - 1
    best_score, best_level = 1.0, -1
    l0 = len(version.levels[0])
    if l0 and l0 / options.l0_compaction_trigger >= best_score:
        best_score, best_level = l0 / options.l0_compaction_trigger, 0
    for level in range(1, last):
        score = version.level_bytes(level) / level_target_bytes(options, level)
        if score > best_score:
            best_score, best_level = score, level
    if best_level < 0:
        return None
    if best_level == 0:
        return _task(version, 0, version.levels[0], f"L0 has {l0} files")
    files = version.levels[best_level]
    pointer = pointers.get(best_level)
    chosen = next((f for f in files if pointer is None or f.smallest > pointer), files[0])
    return _task(version, best_level, [chosen],
                 f"L{best_level} at {best_score:.2f}x its target size")


def pick_level(version: Version, level: int) -> CompactionTask | None:
    """All of ``level`` into ``level + 1`` (manual compaction), or None if it is empty."""
    files = version.levels[level]
    if not files or level + 1 >= len(version.levels):
        return None
    return _task(version, level, files, "manual")


def pick_bottom_rewrite(version: Version, has_garbage: Callable[[FileMeta], bool]
                        ) -> CompactionTask | None:
    """Rewrite the deepest non-empty level (>= 1) into itself if a file there holds garbage.

    Manual compaction only: tombstones and old versions that a since-released
    snapshot pinned when they reached the bottom would otherwise stay forever.
    """
    for level in range(len(version.levels) - 1, 0, -1):
        files = version.levels[level]
        if files:
            if not any(has_garbage(f) for f in files):
                return None
            return CompactionTask(level, tuple(files), (), True, "manual bottom rewrite",
                                  in_place=True)
    return None


def keep_versions(chunk: Iterable[Entry], snapshots: Sequence[int], bottommost: bool
                  ) -> list[Entry]:
    """Apply the drop rule to a merged, key-complete chunk (see the module docstring)."""
    out: list[Entry] = []
    prev_key: bytes | None = None
    last_bucket = -1
    drop_rest = False
    for entry in chunk:
        key, negseq, value = entry
        if key != prev_key:
            prev_key = key
            last_bucket = -1
            drop_rest = False
        elif drop_rest:
            continue
        bucket = bisect_left(snapshots, -negseq) if snapshots else 0
        if bucket == last_bucket:
            continue  # shadowed by a newer version every reader of it sees instead
        last_bucket = bucket
        if value is None and bucket == 0 and bottommost:
            drop_rest = True  # no reader needs the tombstone or anything older
            continue
        out.append(entry)
    return out


def run(
    task: CompactionTask,
    tables: dict[int, Table],
    snapshots: Sequence[int],
    new_builder: Callable[[], TableBuilder],
    target_file_bytes: int,
    apply_range_tombstones: bool = False,
) -> list[TableProperties]:
    """Merge the inputs of ``task`` into new tables; return their properties, in key order.

    Range tombstones of the inputs are carried into the first output (a
    table of only tombstones if nothing else is left). With
    ``apply_range_tombstones`` -- the caller's promise that the inputs are
    every table of the store, at the bottom -- a tombstone no snapshot
    predates is dropped together with the older versions it covers.
    """
    rts = sorted(rt for f in (*task.inputs, *task.overlaps)
                 for rt in tables[f.number].props.range_tombstones)
    oldest = snapshots[0] if snapshots else None
    applied = [rt for rt in rts if apply_range_tombstones and (oldest is None or oldest >= rt[2])]
    carried = [rt for rt in rts if rt not in applied]
    cursors: list[Cursor]
    if task.level == 0:
        cursors = [tables[f.number].cursor(None, None, False) for f in task.inputs]
    else:
        cursors = [LevelCursor([tables[f.number] for f in task.inputs], None, None, False)]
    if task.overlaps:
        cursors.append(LevelCursor([tables[f.number] for f in task.overlaps], None, None, False))
    outputs: list[TableProperties] = []
    builder: TableBuilder | None = None

    def first_builder() -> TableBuilder:
        b = new_builder()
        for start, end, seq in carried:
            b.add_range_tombstone(start, end, seq)
        return b

    for chunk in merged_chunks(cursors, reverse=False):
        if applied:
            chunk = [e for e in chunk
                     if not any(s <= e[0] < end and -e[1] < t for s, end, t in applied)]
        for key, negseq, value in keep_versions(chunk, snapshots, task.bottommost):
            if builder is None:
                builder = first_builder() if not outputs else new_builder()
            elif builder.file_size_estimate >= target_file_bytes and key != builder.last_key:
                outputs.append(builder.finish())
                builder = new_builder()
            builder.add(key, negseq, value)
    if builder is None and carried and not outputs:
        builder = first_builder()
    if builder is not None:
        outputs.append(builder.finish())
    return outputs
