"""The one place that deletes store files: whatever the live set no longer needs.

LevelDB's ``RemoveObsoleteFiles``: one rule per file kind decides, against
a :class:`LiveFiles` taken from the current state, whether a file may go;
one routine deletes (and logs) it. Every deletion of the engine goes
through it: leftovers at open, WAL segments a flush made redundant, the
manifest a rotation replaced, the inputs of a compaction.

The rule (:func:`is_obsolete`), for a file numbered ``n``:

* WAL segment: obsolete when ``n < log_number`` -- the manifest durably
  records a table holding all of its batches;
* table: obsolete when it is not in the current version;
* manifest: obsolete unless it is the live one;
* a ``CURRENT.tmp`` (an interrupted CURRENT update): always obsolete;
* any number ``>= next_file``: never obsolete (handed out after the live set
  was taken: a file being written);
* a name the store does not own: never touched.

Invariants:

1. A file is deleted only if the rule says so for a live set taken after
   the state that made it obsolete was made durable (callers take the live
   set after logging the edit).
2. While the engine runs, callers name their candidates (``names``) or the
   kinds to consider: a table another background thread is writing is in
   no version yet, and a whole-directory sweep would take it for garbage
   (LevelDB tracks such tables in ``pending_outputs``). Only open, before
   any thread starts, sweeps everything.
3. A table's cached blocks are dropped with its file; readers holding it
   open keep reading it (POSIX unlink semantics, engine/fs.py contract 3).

Thread-safety: stateless apart from the block cache; callers serialise
deletions of the same kind (flush thread: WAL, compaction lock: tables,
manifest lock: manifests).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from engine.block import Block
from engine.cache import LRUCache
from engine.encoding import FileKind, file_name, parse_file_name
from engine.fs import FileSystem
from engine.manifest import is_current_temp

__all__ = ["LiveFiles", "ObsoleteFiles", "is_obsolete"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveFiles:
    """What the store needs now, by file kind (see the module docstring for the rule)."""

    log_number: int  # WAL segments numbered below it are redundant
    manifest_number: int  # the live manifest
    tables: frozenset[int]  # tables of the current version
    next_file: int  # numbers at or above it were not handed out yet


def is_obsolete(name: str, live: LiveFiles,
                kinds: Collection[FileKind] | None = None) -> bool:
    """Whether the file ``name`` may be deleted given ``live`` (only ``kinds``, if given)."""
    parsed = parse_file_name(name)
    if parsed is None:
        return kinds is None and is_current_temp(name)
    kind, number = parsed
    if kinds is not None and kind not in kinds:
        return False
    if number >= live.next_file:
        return False
    if kind is FileKind.WAL:
        return number < live.log_number
    if kind is FileKind.TABLE:
        return number not in live.tables
    return number != live.manifest_number


class ObsoleteFiles:
    """Deletes the files of directory ``path`` that :func:`is_obsolete` condemns."""

    __slots__ = ("_cache", "_fs", "path")

    def __init__(self, fs: FileSystem, path: str, cache: LRUCache[Block]) -> None:
        self._fs = fs
        self.path = path
        self._cache = cache

    def remove(self, live: LiveFiles, *, kinds: Collection[FileKind] | None = None,
               names: Iterable[str] | None = None) -> list[str]:
        """Delete every obsolete file among ``names`` (default: the directory); their names.

        ``kinds`` limits the sweep to those file kinds (invariant 2).
        """
        candidates = self._fs.listdir(self.path) if names is None else list(names)
        removed = [n for n in candidates if is_obsolete(n, live, kinds)]
        for name in removed:
            log.info("%s: deleting obsolete file %s", self.path, name)
            self._fs.remove(self._fs.join(self.path, name))
            parsed = parse_file_name(name)
            if parsed is not None and parsed[0] is FileKind.TABLE:
                self._cache.erase_file(parsed[1])
        return removed

    @staticmethod
    def table_names(numbers: Iterable[int]) -> list[str]:
        """The file names of tables ``numbers`` (candidates for :meth:`remove`)."""
        return [file_name(FileKind.TABLE, n) for n in numbers]
