"""``python -m replication ctl``: etcdctl's shape for a cluster of node processes.

``put K V``, ``get K``, ``del K``, ``scan [START [END]]`` go through a
:class:`~replication.client.RemoteStore` (so they are linearizable and
follow the leader); ``status`` asks every endpoint for its own view;
``transfer-leader ID`` asks the leader to hand over. Each function returns
the exit status: 0 ok, 1 failed (a key not found, no quorum, a node error);
bad usage is 2, raised by the caller's parser.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from replication.client import RemoteStore
from replication.errors import Unavailable
from replication.transport.tcp import parse_address

__all__ = ["run"]

_COLUMNS = ("id", "address", "role", "term", "leader", "commit", "applied", "log_entries",
            "last_contact_ms")


def run(store: RemoteStore, command: str, argv: list[str], out: TextIO, err: TextIO, *,
        limit: int | None = None, as_json: bool = False) -> int:
    """Run one ctl command against ``store``; the exit status."""
    if command == "put":
        out.write(f"OK index={store.put(argv[0], argv[1])}\n")
    elif command == "get":
        value = store.get(argv[0])
        if value is None:
            err.write(f"{argv[0]}: not found\n")
            return 1
        out.write(value + "\n")
    elif command == "del":
        out.write(f"OK index={store.delete(argv[0])}\n")
    elif command == "scan":
        start = argv[0] if argv else None
        end = argv[1] if len(argv) > 1 else None
        for k, v in store.scan(start, end, limit=limit):
            out.write(f"{k}\t{v}\n")
    elif command == "status":
        rows = store.status()
        if as_json:
            out.write(json.dumps(rows, indent=2) + "\n")
        else:
            _table(rows, store, out)
        return 0 if any(r is not None for r in rows) else 1
    elif command == "transfer-leader":
        return _transfer(store, int(argv[0]), out, err)
    else:  # the parser only lets known commands through
        raise ValueError(f"unknown ctl command {command!r}")
    return 0


def _table(rows: list[dict[str, Any] | None], store: RemoteStore, out: TextIO) -> None:
    cells = [list(_COLUMNS)]
    for address, row in zip(store.endpoints, rows, strict=True):
        if row is None:
            cells.append(["?", f"{address[0]}:{address[1]}", "unreachable"] + [""] * 6)
        else:
            cells.append(["" if row.get(c) is None else str(row[c]) for c in _COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    for r in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        out.write(line.rstrip() + "\n")


def _transfer(store: RemoteStore, to: int, out: TextIO, err: TextIO) -> int:
    leader = next((r for r in store.status() if r is not None and r["role"] == "leader"), None)
    if leader is None:
        raise Unavailable("no node says it leads: nothing to transfer")
    if leader["id"] == to:
        out.write(f"node {to} already leads\n")
        return 0
    result = store.call_node(parse_address(leader["address"]), "transfer_leader", {"to": to})
    out.write(f"OK node {result['leader']} leads\n")
    return 0
