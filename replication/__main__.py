"""``python -m replication``: inspect a cluster directory offline.

The replication layer's counterpart of ``python -m engine`` (which reads one
engine store and cannot read replication files: ``engine`` never imports
``replication``). This file parses arguments and prints; the logic lives in
:mod:`replication.tools`, which only reads -- no node is started, no log tail
is cut, no engine is opened.

Exit status: 0 success, 1 damage found (a ``CorruptionError``) or an I/O
error, 2 bad usage (including a path that is not a cluster or a replication
log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from engine.errors import CorruptionError, InvalidArgument
from engine.fs import OSFileSystem
from engine.tools import whole_number
from replication import tools

PROG = "python -m replication"

EPILOG = """\
examples:
  python -m replication stats demo-cluster
  python -m replication dump-rlog demo-cluster/node-0/log/000001.rlog --limit 20
  python -m engine stats demo-cluster/node-0/engine-000001   # one replica's engine

Nothing is started or changed: a torn log tail is reported, not cut off.
exit status: 0 ok, 1 damage found (or an I/O error), 2 bad usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Inspect a stratakv cluster directory offline. Every command "
                               "only reads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("stats", help="nodes, their logs and engines",
                       description="Describe a cluster directory: the CLUSTER descriptor and, "
                                   "per node, its replication log segments (term, base, "
                                   "entries, torn tail), its ENGINE pointer and its engine "
                                   "store (tables, bytes, the log index applied and "
                                   "persisted).")
    p.add_argument("path", metavar="PATH", help="cluster directory (holds CLUSTER)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(parser=p)
    p = sub.add_parser("dump-rlog", help="print the records of a replication log segment",
                       description="Print every record of a replication log segment "
                                   "(node-<i>/log/<n>.rlog): BASE, TERM, TRUNCATE and each "
                                   "ENTRY with its transaction id and operations, then what "
                                   "a restarting node would hold. A torn tail is a note "
                                   "(exit 0); damage followed by valid records is exit 1.")
    p.add_argument("file", metavar="FILE", help="a replication log segment (NNNNNN.rlog)")
    p.add_argument("--limit", type=whole_number, metavar="N", help="print at most N entries")
    p.add_argument("--hex", action="store_true", help="show keys and values in hex")
    p.add_argument("--full", action="store_true",
                   help="print long values whole (default: first 100 bytes)")
    p.set_defaults(parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fs = OSFileSystem()
    try:
        if args.command == "stats":
            if not os.path.isdir(args.path):
                args.parser.error(f"{args.path} is not a directory")
            info = tools.cluster_stats(fs, args.path)
            if args.json:
                print(json.dumps(info.to_json(), indent=2))
            else:
                print("\n".join(info.lines()))
        else:
            if not os.path.isfile(args.file):
                args.parser.error(f"{args.file} is not a file")
            for line in tools.dump_rlog(fs, args.file, limit=args.limit, hex_=args.hex,
                                        value_limit=None if args.full else 100):
                print(line)
        sys.stdout.flush()
        return 0
    except InvalidArgument as exc:
        args.parser.error(str(exc))
    except (CorruptionError, OSError) as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
