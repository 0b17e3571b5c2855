"""Background work: the flush thread, the compaction thread, and the write stalls they drive.

A full memtable becomes immutable (:meth:`Background.switch_memtable`, a new
WAL segment with it); the flush thread writes the oldest immutable memtable
to an L0 table and logs the edit that moves the log number past its WAL
segment; the compaction thread runs whatever :func:`engine.compaction.pick`
scores highest. :meth:`Background.make_room` is the commit pipeline's
admission control: it delays or stops writes while flushing or compaction
falls behind, with a logged reason.

Lock rules (see engine/versions.py for ``manifest_lock``):

* ``compaction_lock`` is held for a whole compaction (background or
  ``compact()``), and by whoever must see no table deleted (``verify``,
  ``checkpoint``, ``close``). Order: ``compaction_lock`` -> ``manifest_lock``
  -> ``_mutex``.
* Both threads wait on ``Versions.changed`` (under ``_mutex``) and stop
  when the lifecycle is closing or writes were stopped by an error.

Invariants:

1. A WAL segment is deleted only after the manifest durably records a table
   holding all of its batches (``log_number`` moved past it).
2. A table file is deleted only after the manifest no longer references it;
   readers holding an old version keep its open file.
3. A flush or compaction output is complete, synced and (with
   ``paranoid_checks``) re-read before the edit referencing it is logged.
4. A failure in either thread stops writes (``Lifecycle.background_failed``);
   the store stays readable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from engine import compaction
from engine.commit import CommitPipeline
from engine.encoding import FileKind
from engine.fs import FileSystem
from engine.lifecycle import Lifecycle
from engine.memtable import MemTable
from engine.options import Options
from engine.sstable import Table, TableBuilder
from engine.tables import TableFiles, meta
from engine.version import VersionEdit
from engine.versions import Versions

__all__ = ["Background"]

log = logging.getLogger(__name__)


class Background:
    """The flush and compaction threads of one writable engine, and the stalls they cause."""

    __slots__ = ("_fs", "_lifecycle", "_mutex", "_pointers", "_stats", "_threads",
                 "compaction_lock", "files", "options", "path", "pipeline", "versions")

    def __init__(self, fs: FileSystem, path: str, options: Options, mutex: threading.Lock,
                 versions: Versions, lifecycle: Lifecycle, stats: Counter[str]) -> None:
        self._fs = fs
        self.path = path
        self.options = options
        self._mutex = mutex
        self.versions = versions
        self.files: TableFiles = versions.files
        self._lifecycle = lifecycle
        self._stats = stats
        self.pipeline: CommitPipeline | None = None  # attached before start()
        self.compaction_lock = threading.Lock()
        self._pointers: dict[int, bytes] = {}  # per level: where the next compaction starts
        self._threads: list[threading.Thread] = []

    def start(self, pipeline: CommitPipeline) -> None:
        """Attach the write path and start both threads."""
        self.pipeline = pipeline
        self._threads = [
            threading.Thread(target=self._flush_loop, daemon=True,
                             name=f"stratakv-flush:{self.path}"),
            threading.Thread(target=self._compaction_loop, daemon=True,
                             name=f"stratakv-compact:{self.path}"),
        ]
        for t in self._threads:
            t.start()

    def join(self, *, wait_compaction: bool) -> None:
        """Wait for both threads to stop (the lifecycle set ``closing`` and woke them).

        ``wait_compaction`` also waits for a ``compact()`` running in another
        thread to finish its current step.
        """
        flush, compact = self._threads
        flush.join()
        if wait_compaction:
            with self.compaction_lock:
                pass
        compact.join()

    def _pipe(self) -> CommitPipeline:
        if self.pipeline is None:  # pragma: no cover - start() attaches it
            raise RuntimeError("background work has no commit pipeline")
        return self.pipeline

    # -- write admission (called by the commit pipeline's leader, holding _mutex) ------------

    def make_room(self) -> MemTable:
        """The memtable a write group may fill, switching or stalling first. Holds _mutex."""
        opts, v, life = self.options, self.versions, self._lifecycle
        delayed = False
        while True:
            if life.error is not None:
                raise life.error
            sv = v.sv
            l0 = len(sv.version.levels[0])
            if not delayed and l0 >= opts.l0_slowdown_trigger:
                self._stats["stall_l0_slowdown"] += 1
                self._mutex.release()
                try:
                    time.sleep(0.001)
                finally:
                    self._mutex.acquire()
                delayed = True
            elif sv.mem.approx_bytes < opts.memtable_bytes:
                return sv.mem
            elif len(sv.imms) >= opts.max_immutable_memtables:
                self._stats["stall_memtable"] += 1
                log.info("%s: write stall: %d memtables waiting to be flushed", self.path,
                         len(sv.imms))
                v.changed.wait()
            elif l0 >= opts.l0_stop_trigger:
                self._stats["stall_l0_stop"] += 1
                log.info("%s: write stall: %d L0 files (stop trigger %d)", self.path, l0,
                         opts.l0_stop_trigger)
                v.changed.wait()
            else:
                self.switch_memtable()
                return v.sv.mem

    def switch_memtable(self) -> None:
        """Freeze the memtable and start a new WAL segment. Holds _mutex, no leader writing."""
        v = self.versions
        number = v.take_file_number()
        self._pipe().rotate_wal(number)
        sv = v.sv
        v.publish(MemTable(number), (sv.mem, *sv.imms), sv.version)

    def flush_locked(self) -> None:
        """Freeze the memtable and wait for every frozen one to reach a table. Holds _mutex."""
        v, life = self.versions, self._lifecycle
        # Wait for the queue to drain: no leader may be writing the memtable we freeze.
        self._pipe().wait_idle()
        if len(v.sv.mem) or v.sv.mem.last_seq > v.manifest_last_seq:
            self.switch_memtable()
        while v.sv.imms and life.error is None:
            v.changed.wait()
        if life.error is not None:
            raise life.error

    # -- the flush thread --------------------------------------------------------------------

    def _idle(self) -> bool:
        """Whether a thread should stop: closing, or writes stopped. Holds _mutex."""
        return self._lifecycle.closing or self._lifecycle.error is not None

    def _flush_loop(self) -> None:
        v = self.versions
        while True:
            with self._mutex:
                while not self._idle() and not v.sv.imms:
                    v.changed.wait()
                if self._idle():
                    return
            try:
                self._flush_oldest()
            except BaseException as exc:
                self._lifecycle.background_failed("flush", exc)
                return

    def _flush_oldest(self) -> None:
        v, files = self.versions, self.files
        with self._mutex:
            imm = v.sv.imms[-1]
            number = v.take_file_number()
            snapshots = v.snapshot_list()
        props = files.build(imm, number, snapshots)
        table: Table | None = None
        if props is not None:
            self._fs.sync_dir(self.path)
            table = files.open_new(number)
        with v.manifest_lock:
            with self._mutex:
                imms = v.sv.imms
                log_number = imms[-2].wal_number if len(imms) > 1 else v.sv.mem.wal_number
                last_seq = max(v.manifest_last_seq, imm.last_seq)
                edit = VersionEdit(log_number=log_number, next_file=v.next_file,
                                   last_sequence=last_seq,
                                   added=((0, meta(props)),) if props is not None else ())
            v.log_edit(edit)
            with self._mutex:
                # Only now, with the edit synced, may persisted_sequence trust it:
                # a replica's log is truncated up to that sequence.
                v.manifest_last_seq = last_seq
                if props is not None and table is not None:
                    v.tables[number] = table
                    self._stats["flushes"] += 1
                    self._stats["bytes_flushed"] += props.file_size
                sv = v.sv
                v.publish(sv.mem, sv.imms[:-1], sv.version.apply(edit))
        with self._mutex:  # segments about to be deleted need no sync any more
            self._pipe().forget_segments_below(log_number)
            live = v.live()
        v.obsolete.remove(live, kinds=(FileKind.WAL,))  # invariant 1

    # -- the compaction thread -----------------------------------------------------------------

    def _compaction_loop(self) -> None:
        v = self.versions
        while True:
            with self._mutex:
                while (not self._idle()
                       and compaction.pick(v.sv.version, self.options, self._pointers) is None):
                    v.changed.wait()
                if self._idle():
                    return
            try:
                with self.compaction_lock:
                    with self._mutex:
                        task = compaction.pick(v.sv.version, self.options, self._pointers)
                    if task is not None:
                        self.run_compaction(task)
            except BaseException as exc:
                self._lifecycle.background_failed("compaction", exc)
                return

    def run_compaction(self, task: compaction.CompactionTask) -> None:
        """Execute ``task`` and install its result. Holds compaction_lock."""
        v, files = self.versions, self.files
        log.debug("%s: compacting %d+%d files L%d->L%d (%s)", self.path, len(task.inputs),
                  len(task.overlaps), task.level, task.output_level, task.reason)
        deleted = tuple((task.level, f.number) for f in task.inputs) + tuple(
            (task.output_level, f.number) for f in task.overlaps)
        if task.trivial_move:
            edit = VersionEdit(deleted=deleted, added=((task.output_level, task.inputs[0]),))
            with v.manifest_lock:
                v.log_edit(edit)
                v.install(edit)
            self._stats["trivial_moves"] += 1
            return
        with self._mutex:
            snapshots = v.snapshot_list()
            tables = dict(v.tables)

        def new_builder() -> TableBuilder:
            with self._mutex:
                number = v.take_file_number()
            return files.builder(number)

        # Range deletions (and what they cover) may be dropped only when the
        # compaction sees every table of the store: the data they hide may be anywhere.
        everything = task.bottommost and {f.number for _, f in v.sv.version.files()} == {
            f.number for f in (*task.inputs, *task.overlaps)}
        outputs = compaction.run(task, tables, snapshots, new_builder,
                                 self.options.target_file_bytes,
                                 apply_range_tombstones=everything)
        for p in outputs:
            files.paranoid_check(p.number)
        if outputs:
            self._fs.sync_dir(self.path)
        new_tables = {p.number: files.open_new(p.number) for p in outputs}
        with v.manifest_lock:
            with self._mutex:
                edit = VersionEdit(next_file=v.next_file, deleted=deleted,
                                   added=tuple((task.output_level, meta(p)) for p in outputs))
            v.log_edit(edit)
            v.install(edit, new_tables)
        if task.level > 0:
            self._pointers[task.level] = max(f.largest for f in task.inputs)
        self._stats["compactions"] += 1
        self._stats["bytes_compacted_in"] += task.input_bytes
        self._stats["bytes_compacted_out"] += sum(p.file_size for p in outputs)
        with self._mutex:
            live = v.live()
        v.obsolete.remove(live, names=v.obsolete.table_names(n for _, n in deleted))

    def compact_all(self) -> None:
        """``Engine.compact`` after its flush: every level down, then the bottom's garbage."""
        v, opts = self.versions, self.options
        with self.compaction_lock:
            with self._mutex:
                total = sum(f.size for _, f in v.sv.version.files())
            # Push everything down to the first level whose target holds it all,
            # so that afterwards background compaction has nothing left to do.
            home = next((lv for lv in range(1, opts.num_levels)
                         if compaction.level_target_bytes(opts, lv) >= total),
                        opts.num_levels - 1)
            for level in range(opts.num_levels - 1):
                with self._mutex:
                    version = v.sv.version
                    deeper = any(version.levels[level + 1:])
                task = (compaction.pick_level(version, level) if deeper or level < home
                        else None)
                if task is not None:
                    self.run_compaction(task)
            with self._mutex:
                version = v.sv.version
                tables = dict(v.tables)
            task = compaction.pick_bottom_rewrite(version,
                                                  lambda f: tables[f.number].props.has_garbage)
            if task is not None:
                self.run_compaction(task)
