"""Offline inspection of a cluster directory: the logic behind ``python -m replication``.

What it owns: reading a cluster's files as they are on disk -- ``CLUSTER``,
each node's replication log segments (``node-<i>/log/<n>.rlog``), its
``ENGINE`` pointer and engine stores -- and turning them into data and text
lines. Printing and argument parsing belong to ``replication/__main__.py``.

Invariants:

1. Read-only, like :mod:`engine.tools`: files are only listed and read; a
   torn log tail is reported, never cut off (``NodeLog`` would truncate it),
   and engine stores are described by :func:`engine.tools.store_stats`,
   which does not run recovery.
2. The record layout is :mod:`replication.node_log`'s (its constants are
   imported, not copied) and the framing is :func:`engine.record.read_log`,
   so the tool calls damaged exactly what a restarting node would refuse.

Thread-safety: no shared state; every function stands alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import CorruptionError, InvalidArgument
from engine.fs import FileSystem
from engine.record import read_log
from engine.tools import StoreStats, human_bytes, show_bytes, store_stats
from replication.command import decode_command
from replication.node_log import (
    _BASE,
    _ENTRY,
    _HEADER,
    _MAGIC,
    _U64,
    BASE,
    ENTRY,
    FORMAT_VERSION,
    TERM,
    TRUNCATE,
    VOTE,
)

__all__ = ["ClusterInfo", "NodeInfo", "RlogInfo", "cluster_stats", "dump_rlog", "read_rlog"]

CLUSTER_PREFIX = b"stratakv-cluster v1 nodes="


@dataclass(frozen=True, slots=True)
class RlogRecord:
    """One decoded record of a replication log segment."""

    offset: int
    kind: str  # "ENTRY" | "TRUNCATE" | "TERM" | "BASE" | "VOTE"
    index: int = 0  # ENTRY, BASE: the index; TRUNCATE: the first index dropped; VOTE: the id
    term: int = 0  # ENTRY, TERM, BASE
    payload: bytes = b""  # ENTRY only


@dataclass(frozen=True, slots=True)
class RlogInfo:
    """A replication log segment, replayed the way ``NodeLog`` recovery replays it."""

    path: str
    file_bytes: int
    node: int
    format_version: int
    records: tuple[RlogRecord, ...]
    base_index: int
    base_term: int
    term: int
    first_index: int | None  # of the entries held after replay
    last_index: int
    entries: int
    torn: str | None
    valid_end: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.file_bytes, "node": self.node,
                "format_version": self.format_version, "records": len(self.records),
                "base_index": self.base_index, "base_term": self.base_term, "term": self.term,
                "first_index": self.first_index, "last_index": self.last_index,
                "entries": self.entries, "torn": self.torn, "valid_end": self.valid_end}


def read_rlog(fs: FileSystem, path: str) -> RlogInfo:
    """Decode every record of segment ``path``; CorruptionError where a node would refuse it."""
    data = fs.read_file(path)
    scan = read_log(path, data)
    if not scan.records:
        raise CorruptionError(path, 0, "replication log segment has no header")
    offset, head = scan.records[0]
    if len(head) != _HEADER.size or not head.startswith(_MAGIC):
        if head.startswith(b"\x01STRATAKV"):
            raise InvalidArgument(f"{path} is an engine log (WAL or manifest), not a "
                                  "replication log: use 'python -m engine dump-wal'")
        raise CorruptionError(path, offset, "not a replication log header "
                                            f"(expected magic {_MAGIC.decode()})")
    _, version, node = _HEADER.unpack(head)
    if version > FORMAT_VERSION:
        raise CorruptionError(path, offset, f"replication log format version {version} is "
                                            f"newer than supported {FORMAT_VERSION}")
    records: list[RlogRecord] = []
    base_index = base_term = term = 0
    held: list[int] = []  # indexes of the entries held, as replay leaves them
    for offset, rec in scan.records[1:]:
        try:
            tag = rec[0]
            if tag == ENTRY:
                _, index, eterm = _ENTRY.unpack_from(rec)
                expected = base_index + len(held) + 1
                if index != expected:
                    raise CorruptionError(path, offset,
                                          f"entry {index} where {expected} expected")
                held.append(index)
                records.append(RlogRecord(offset, "ENTRY", index, eterm, rec[_ENTRY.size:]))
            elif tag == TRUNCATE:
                _, start = _U64.unpack(rec)
                del held[max(0, start - base_index - 1):]
                records.append(RlogRecord(offset, "TRUNCATE", index=start))
            elif tag == TERM:
                _, term = _U64.unpack(rec)
                records.append(RlogRecord(offset, "TERM", term=term))
            elif tag == VOTE:
                _, vote = _U64.unpack(rec)
                records.append(RlogRecord(offset, "VOTE", index=vote))
            elif tag == BASE:
                _, base_index, base_term = _BASE.unpack(rec)
                held = []
                records.append(RlogRecord(offset, "BASE", base_index, base_term))
            else:
                raise CorruptionError(path, offset, f"unknown record tag {tag}")
        except (struct.error, IndexError):
            raise CorruptionError(path, offset, "truncated replication log record") from None
    return RlogInfo(path, len(data), node, version, tuple(records), base_index, base_term,
                    term, held[0] if held else None, base_index + len(held), len(held),
                    scan.torn, scan.valid_end)


def _entry_lines(rec: RlogRecord, hex_: bool, value_limit: int | None) -> Iterator[str]:
    if not rec.payload:
        yield f"ENTRY {rec.index} term {rec.term} @ offset {rec.offset}: no-op (leader's first)"
        return
    try:
        txn_id, batch, session = decode_command(rec.payload, index=rec.index)
    except CorruptionError as exc:
        yield (f"ENTRY {rec.index} term {rec.term} @ offset {rec.offset}: "
               f"{len(rec.payload)} bytes, undecodable command ({exc.detail})")
        return
    ops = list(batch)
    client = "" if session is None else f", client {session.client_id.hex()} seq {session.seq}"
    yield (f"ENTRY {rec.index} term {rec.term} @ offset {rec.offset}: txn {txn_id.hex()}"
           f"{client}, {len(ops)} op{'' if len(ops) == 1 else 's'}")
    for key, value in ops:
        k = show_bytes(key, hex_=hex_, limit=value_limit)
        if value is None:
            yield f"    DELETE {k}"
        else:
            yield f"    PUT    {k} : {show_bytes(value, hex_=hex_, limit=value_limit)}"


def dump_rlog(fs: FileSystem, path: str, *, limit: int | None = None, hex_: bool = False,
              value_limit: int | None = 100) -> Iterator[str]:
    """Lines for every record of replication log segment ``path`` and a summary.

    ``limit`` caps the entries shown. A torn tail ends the output with a note
    (a restarting node cuts it off); damage followed by valid records raises
    CorruptionError before any line (the segment is parsed whole first).
    """
    info = read_rlog(fs, path)
    yield (f"replication log segment {path}: {human_bytes(info.file_bytes)}, node "
           f"{info.node}, format version {info.format_version}")
    shown = 0
    for rec in info.records:
        if rec.kind == "ENTRY":
            if limit is not None and shown >= limit:
                continue
            shown += 1
            yield from _entry_lines(rec, hex_, value_limit)
        elif rec.kind == "TRUNCATE":
            yield f"TRUNCATE from index {rec.index} @ offset {rec.offset}"
        elif rec.kind == "TERM":
            yield f"TERM {rec.term} @ offset {rec.offset}"
        elif rec.kind == "VOTE":
            yield f"VOTE for {rec.index or 'nobody'} @ offset {rec.offset}"
        else:
            yield f"BASE index {rec.index} term {rec.term} @ offset {rec.offset}"
    entries = sum(r.kind == "ENTRY" for r in info.records)
    if limit is not None and entries > shown:
        yield f"... {entries - shown} more entries not shown (--limit {limit})"
    held = "-" if info.first_index is None else f"{info.first_index}..{info.last_index}"
    yield (f"summary: {len(info.records)} records; after replay: base index "
           f"{info.base_index} (term {info.base_term}), term {info.term}, "
           f"{info.entries} entries held, indexes {held}")
    if info.torn is not None:
        yield (f"note: torn tail at offset {info.valid_end} ({info.torn}): "
               f"{info.file_bytes - info.valid_end} bytes that the node cuts off when it "
               "restarts (normal after a crash)")


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node directory: its log segments, engine pointer and engine stores."""

    node: int
    path: str
    logs: tuple[RlogInfo, ...]
    log_errors: tuple[str, ...]
    pointer: str | None  # the ENGINE file's text; None: no file (generation 1)
    engine_dir: str
    engine: StoreStats | None
    engine_error: str | None
    other_engines: tuple[str, ...]  # engine-<g> directories the pointer does not name

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "path": self.path,
                "logs": [lg.to_json() for lg in self.logs], "log_errors": list(self.log_errors),
                "engine_pointer": self.pointer, "engine_dir": self.engine_dir,
                "engine": self.engine.to_json() if self.engine is not None else None,
                "engine_error": self.engine_error, "other_engines": list(self.other_engines)}


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What ``python -m replication stats`` reports."""

    path: str
    descriptor: str
    nodes: tuple[NodeInfo, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "descriptor": self.descriptor,
                "nodes": [n.to_json() for n in self.nodes]}

    def lines(self) -> list[str]:
        out = [f"cluster {self.path}: {self.descriptor}"]
        for n in self.nodes:
            out.append(f"node {n.node} ({n.path}):")
            for lg in n.logs:
                held = "-" if lg.first_index is None else f"{lg.first_index}..{lg.last_index}"
                torn = f"; torn tail at {lg.valid_end} ({lg.torn})" if lg.torn else ""
                out.append(f"  log {lg.path.rsplit('/', 1)[-1]}: {human_bytes(lg.file_bytes)}, "
                           f"term {lg.term}, base {lg.base_index}, {lg.entries} entries "
                           f"{held}{torn}")
            for err in n.log_errors:
                out.append(f"  log PROBLEM: {err}")
            if not n.logs and not n.log_errors:
                out.append("  log: none")
            named = (f"ENGINE names {n.pointer}" if n.pointer is not None
                     else "no ENGINE file: generation 1")
            out.append(f"  engine {n.engine_dir.rsplit('/', 1)[-1]} ({named})")
            if n.engine is not None:
                e = n.engine
                tables = len(e.tables)
                out.append(f"    applied and persisted up to index {e.state.last_sequence}; "
                           f"{tables} table{'' if tables == 1 else 's'}, "
                           f"{human_bytes(e.total_bytes)}"
                           + ("; open by a running process" if e.in_use else ""))
            elif n.engine_error is not None:
                out.append(f"    {n.engine_error}")
            for other in n.other_engines:
                out.append(f"  leftover {other} (an interrupted snapshot install; the node "
                           "deletes it)")
        out.append("details: 'python -m replication dump-rlog FILE' for a log, "
                   "'python -m engine stats DIR' for an engine store")
        return out


def _node_info(fs: FileSystem, path: str, node: int) -> NodeInfo:
    ndir = fs.join(path, f"node-{node}")
    names = fs.listdir(ndir) if fs.exists(ndir) else []
    logs: list[RlogInfo] = []
    errors: list[str] = []
    log_dir = fs.join(ndir, "log")
    if fs.exists(log_dir):
        for name in sorted(fs.listdir(log_dir)):
            if name.endswith(".rlog") and name[:-5].isdigit():
                try:
                    logs.append(read_rlog(fs, fs.join(log_dir, name)))
                except (CorruptionError, InvalidArgument) as exc:
                    errors.append(str(exc))
    pointer_path = fs.join(ndir, "ENGINE")
    pointer = None
    generation = 1
    engine_error = None
    if fs.exists(pointer_path):
        pointer = fs.read_file(pointer_path).decode("ascii", "replace").strip()
        if pointer.startswith("engine-") and pointer[7:].isdigit():
            generation = int(pointer[7:])
        else:
            engine_error = str(CorruptionError(pointer_path, 0, f"bad engine pointer {pointer!r}"))
    engine_name = f"engine-{generation:06d}"
    engine_dir = fs.join(ndir, engine_name)
    stats = None
    if engine_error is None:
        if fs.exists(engine_dir):
            try:
                stats = store_stats(fs, engine_dir)
            except (CorruptionError, InvalidArgument) as exc:
                engine_error = f"PROBLEM: {exc}"
        else:
            engine_error = "not created yet"
    others = tuple(n for n in sorted(names) if n.startswith("engine-") and n != engine_name)
    return NodeInfo(node, ndir, tuple(logs), tuple(errors), pointer, engine_dir, stats,
                    engine_error, others)


def cluster_stats(fs: FileSystem, path: str) -> ClusterInfo:
    """Describe the cluster in directory ``path``: InvalidArgument if it is not one."""
    meta = fs.join(path, "CLUSTER")
    if not fs.exists(meta):
        if fs.exists(fs.join(path, "CURRENT")):
            raise InvalidArgument(f"{path} is an engine store, not a cluster directory: use "
                                  f"'python -m engine stats {path}'")
        raise InvalidArgument(f"{path}: not a stratakv cluster directory (no CLUSTER file)")
    text = fs.read_file(meta)
    if not text.startswith(CLUSTER_PREFIX):
        raise CorruptionError(meta, 0, f"not a cluster descriptor: {text[:40]!r}")
    try:
        nodes = int(text[len(CLUSTER_PREFIX):].strip())
    except ValueError:
        raise CorruptionError(meta, len(CLUSTER_PREFIX), f"bad node count {text!r}") from None
    return ClusterInfo(path, text.decode("ascii", "replace").strip(),
                       tuple(_node_info(fs, path, i) for i in range(nodes)))
