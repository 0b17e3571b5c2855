"""An engine's life: open, closing, closed; the error that stopped writes; start-up and teardown.

:meth:`Lifecycle.start_up` brings a store up once its parts are wired: it
refuses a cluster directory, then either takes ``LOCK``, recovers
(``engine/recovery.py``), resets the pipeline's sequences, installs the
recovered version and starts the background threads -- releasing the lock
and closing the tables again if any step fails -- or, read-only, loads the
writer's current view (:meth:`Lifecycle.load_view`, which ``refresh()``
also uses).

``close()`` and ``simulate_crash()`` are the same teardown (:meth:`Lifecycle.shut_down`)
with one switch, ``crash``:

====================  ==================================  =============================
step                  close()                             simulate_crash()
====================  ==================================  =============================
refuse new writes     yes                                 yes, and fail queued ones
queued writes         finished (threads still run)        fail with ClosedError
``wal=False``         memtable flushed first              memtable lost
background threads    stopped after their current step    same
WAL                   synced (older segments first)       closed as the OS has it
files, LOCK           closed, released                    same
====================  ==================================  =============================

Lock rules: every flag is read and written under ``_mutex`` (``closed`` is
also read without it by ``get``'s fast path: a stale False only lets one
read race with close, as it always could). ``changed`` is
``Versions.changed``: waking it makes stalled writers and the background
threads look at the flags again.
``refresh_lock`` (read-only engines) serialises loading a view and closing:
it is taken before ``_mutex``, never after.

Invariants:

1. ``rejecting_writes`` is set before ``closing``, and ``closing`` before
   ``closed``: no write is admitted once teardown began, the threads stop
   before the files close, and reads fail only once nothing is left to read.
2. ``error`` is set once writes must stop for good (a failed WAL write,
   a failed background step, a simulated crash); every later write raises it.
3. Teardown runs once: a second ``close`` (or a ``close`` after a crash) is a
   no-op.
4. A read-only view is published sequence first, then superversion: a
   lock-free reader between the two reads the newer sequence in the older
   view -- the older state, consistently -- never an old sequence in tables
   compacted since.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING

from engine.encoding import CLUSTER_DESCRIPTOR
from engine.errors import ClosedError, EngineError, InvalidArgument, ReadOnlyError, StorageError
from engine.fs import FileLock, FileSystem
from engine.options import Options
from engine.recovery import load_read_only, recover
from engine.tables import TableFiles

if TYPE_CHECKING:  # the parts started and torn down import this module
    from engine.background import Background
    from engine.commit import CommitPipeline
    from engine.versions import Versions

__all__ = ["Lifecycle"]

log = logging.getLogger(__name__)


class Lifecycle:
    """The state flags of one engine and its teardown (module docstring)."""

    __slots__ = ("_mutex", "changed", "closed", "closing", "error", "lock", "path", "read_only",
                 "refresh_lock", "rejecting_writes")

    def __init__(self, path: str, mutex: threading.Lock, changed: threading.Condition, *,
                 read_only: bool) -> None:
        self.path = path
        self._mutex = mutex
        self.changed = changed
        self.read_only = read_only
        self.closed = False
        self.rejecting_writes = False  # close() started: no new writes
        self.closing = False  # background threads must stop
        self.error: EngineError | None = None  # what stopped writes (invariant 2)
        self.lock: FileLock | None = None  # the directory's LOCK, held while open (writable)
        self.refresh_lock = threading.Lock()  # read-only engines: one view load at a time

    def start_up(self, fs: FileSystem, options: Options, files: TableFiles,
                 pipeline: CommitPipeline, versions: Versions, background: Background,
                 stats: Counter[str]) -> None:
        """Open the store at ``path`` with its wired parts (module docstring)."""
        path = self.path
        if fs.exists(fs.join(path, CLUSTER_DESCRIPTOR)):
            raise InvalidArgument(f"{path} holds a replicated cluster, not an engine store: "
                                  f"open it with replication.open")
        if self.read_only:
            self.load_view(fs, options, files, pipeline, versions)
            return
        fs.mkdirs(path)
        self.lock = lock = fs.lock(fs.join(path, "LOCK"))
        try:
            rec = recover(fs, path, options, files)
            stats["wal_batches_replayed"] += rec.batches_replayed
            pipeline.reset(rec.last_seq)  # every write up to here is on stable storage
            versions.start(rec, pipeline.open_wal if options.wal else None)
        except BaseException:
            lock.release()
            for t in versions.tables.values():
                t.close()
            raise
        background.start(pipeline)

    def load_view(self, fs: FileSystem, options: Options, files: TableFiles,
                  pipeline: CommitPipeline, versions: Versions,
                  stats: Counter[str] | None = None) -> None:
        """Read-only: load what the writer has handed to the OS and switch to it.

        Opening and ``refresh()`` (which passes ``stats`` to count it in
        ``refreshes``). Takes ``refresh_lock``, then ``_mutex`` to publish
        (invariant 4); raises ClosedError if the engine closed meanwhile.
        """
        with self.refresh_lock:
            sv, last_seq, tables = load_read_only(fs, self.path, options, files, versions.tables)
            with self._mutex:
                self.check_open()
                pipeline.reset(last_seq)  # sequence first, then tables (invariant 4)
                versions.refresh(sv, last_seq, tables)
                if stats is not None:
                    stats["refreshes"] += 1

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"engine at {self.path} is closed")

    def refuse_read_only(self, what: str) -> None:
        """Raise ReadOnlyError for ``what`` on a read-only engine (before any other check)."""
        if self.read_only:
            raise ReadOnlyError(f"{what}: the engine at {self.path} was opened read_only=True")

    def check_writable(self, what: str = "write") -> None:
        """Raise unless a write may start now; ``what`` names it in the error."""
        self.refuse_read_only(what)
        if self.closed or self.rejecting_writes:
            raise ClosedError(f"engine at {self.path} is closed")
        if self.error is not None:
            raise self.error

    def stop_writes(self, error: EngineError) -> None:
        """Stop every later write with ``error`` (a failed WAL write). Holds _mutex."""
        self.error = error

    def background_failed(self, what: str, exc: BaseException) -> None:
        """A flush or compaction failed: stop writes, keep the first error (takes _mutex)."""
        log.error("%s: background %s failed: %r; writes are stopped", self.path, what, exc)
        with self._mutex:
            if self.error is None:
                if isinstance(exc, EngineError):
                    self.error = exc
                else:
                    self.error = StorageError(f"background {what} failed: {exc!r}")
            self.changed.notify_all()

    def shut_down(self, *, crash: bool, pipeline: CommitPipeline, background: Background,
                  versions: Versions) -> None:
        """The teardown of a writable engine: ``close()`` or, with ``crash``, a simulated kill."""
        lock = self.lock
        if lock is None:  # pragma: no cover - start_up() took it, or the engine never opened
            raise RuntimeError(f"engine at {self.path} holds no directory lock")
        with self._mutex:
            if self.closed or (self.closing if crash else self.rejecting_writes):
                return  # invariant 3
            self.rejecting_writes = True
            if crash:
                self.error = ClosedError(f"engine at {self.path} crashed (simulated)")
                pipeline.visible.notify_all()  # a begin() waiting for a commit gives up
            else:
                # Background threads keep running: a stalled leader needs them.
                pipeline.wait_idle()
                if pipeline.wal is None:  # nothing else keeps the memtable: flush it
                    try:
                        background.flush_locked()
                    except EngineError as exc:
                        log.error("%s: flushing on close failed: %s", self.path, exc)
            self.closing = True
            self.changed.notify_all()
        background.join(wait_compaction=not crash)
        with self._mutex:
            pipeline.wait_idle()  # crash: a leader mid-write finishes; the rest see the error
            self.closed = True
        pipeline.close_wal(sync=not crash)
        versions.close()
        lock.release()

    def close_read_only(self, versions: Versions) -> None:
        """The teardown of a read-only engine (no threads, log or lock): close its tables."""
        with self._mutex:
            if self.closed:
                return
            self.closed = True
        with self.refresh_lock:
            for t in versions.tables.values():
                t.close()
