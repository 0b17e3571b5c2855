"""``python -m replication``: run node processes, talk to them, inspect directories offline.

* ``serve`` runs one node process, ``up`` a local N-node cluster of them
  (:mod:`replication.processes`);
* ``ctl`` is an etcdctl-style client of a running cluster (:mod:`replication.ctl`);
* ``stats`` and ``dump-rlog`` inspect a cluster directory offline, the
  replication layer's counterpart of ``python -m engine`` (:mod:`replication.tools`
  only reads: no node is started, no log tail is cut, no engine is opened).

This file parses arguments and prints. Exit status: 0 success, 1 damage
found (a ``CorruptionError``), an I/O error or a failed operation (no
quorum; ``ctl get``: key not found; ``serve``: the node stopped on a
failure), 2 bad usage (including a path that is not a cluster or a
replication log, and a data directory of another node or cluster).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from engine.errors import CorruptionError, InvalidArgument
from engine.fs import LockedError, OSFileSystem
from engine.tools import whole_number
from replication import ctl, processes, tools
from replication.client import connect
from replication.errors import ReplicationError
from replication.server import ServerOptions
from replication.transport.tcp import parse_address

PROG = "python -m replication"

EPILOG = """\
examples:
  python -m replication up --nodes 3 --dir /tmp/skv        # a local cluster, until Ctrl-C
  python -m replication ctl --endpoints 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002 status
  python -m replication serve --id 0 --peers 0=h0:7000,1=h1:7000,2=h2:7000 --data /var/skv
  python -m replication stats demo-cluster
  python -m replication dump-rlog demo-cluster/node-0/log/000001.rlog --limit 20
  python -m engine stats demo-cluster/node-0/engine-000001   # one replica's engine

stats and dump-rlog start and change nothing: a torn log tail is reported, not cut off.
exit status: 0 ok, 1 damage found (or an I/O error, or a failed operation), 2 bad usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run stratakv node processes, talk to a running cluster, "
                               "or inspect a cluster directory offline.",
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
    _add_process_commands(sub)
    return parser


def _add_server_options(p: argparse.ArgumentParser) -> None:
    d = ServerOptions()
    p.add_argument("--cluster", default="stratakv", help="cluster name (default: stratakv); "
                   "nodes and clients of other clusters are refused")
    p.add_argument("--election-timeout-ms", type=whole_number, default=d.election_timeout_ms,
                   metavar="MS", help=f"default {d.election_timeout_ms}")
    p.add_argument("--heartbeat-ms", type=whole_number, default=d.heartbeat_ms, metavar="MS",
                   help=f"default {d.heartbeat_ms}")
    p.add_argument("--max-log-entries", type=whole_number, default=d.max_log_entries,
                   metavar="N", help=f"compact the log beyond N entries (default "
                                     f"{d.max_log_entries})")
    p.add_argument("--log-keep-entries", type=whole_number, default=d.log_keep_entries,
                   metavar="N", help=f"entries kept after compaction (default "
                                     f"{d.log_keep_entries})")
    p.add_argument("--txn-idle-timeout-s", type=float, default=d.txn_idle_timeout_s,
                   metavar="S", help=f"roll back idle transactions (default "
                                     f"{d.txn_idle_timeout_s:g})")
    p.add_argument("--snapshot-chunk-bytes", type=whole_number, default=d.snapshot_chunk_bytes,
                   metavar="N", help="bytes per snapshot read (default 1 MiB)")
    p.add_argument("--unsafe-follower-reads", action="store_true",
                   help="BROKEN ON PURPOSE, for testing checkers: serve get from the local "
                        "engine without ReadIndex (stale reads)")


def _options(args: argparse.Namespace) -> ServerOptions:
    return ServerOptions(election_timeout_ms=args.election_timeout_ms,
                         heartbeat_ms=args.heartbeat_ms, max_log_entries=args.max_log_entries,
                         log_keep_entries=args.log_keep_entries,
                         txn_idle_timeout_s=args.txn_idle_timeout_s,
                         snapshot_chunk_bytes=args.snapshot_chunk_bytes,
                         unsafe_follower_reads=args.unsafe_follower_reads).validate()


def _add_process_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run one node process",
                       description="Run node ID of the cluster listed in --peers, its data "
                                   "in DIR, until SIGTERM or SIGINT. One address serves peers "
                                   "and clients. A directory of another node or cluster is "
                                   "refused (exit 2).")
    p.add_argument("--id", type=int, required=True, help="this node's id (0..N-1)")
    p.add_argument("--peers", required=True, metavar="0=HOST:PORT,1=HOST:PORT,...",
                   help="every node's address, this one's included (N = 3, 5 or 7)")
    p.add_argument("--data", required=True, metavar="DIR", help="this node's data directory")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="listen here instead of at this node's --peers entry; --peers then "
                        "says where to dial each peer (through a proxy or NAT)")
    _add_server_options(p)
    p.set_defaults(parser=p)
    p = sub.add_parser("up", help="run a local N-node cluster until Ctrl-C",
                       description="Start N serve processes on 127.0.0.1 (data in "
                                   "DIR/node-<i>, logs in DIR/node-<i>.log), wait for a "
                                   "leader, print each node and an endpoints= line, and stop "
                                   "them all on Ctrl-C or SIGTERM.")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5, 7))
    p.add_argument("--dir", required=True, metavar="DIR")
    p.add_argument("--port", type=whole_number, metavar="P",
                   help="first port (nodes get P, P+1, ...; default: free ports)")
    _add_server_options(p)
    p.set_defaults(parser=p)
    p = sub.add_parser("ctl", help="talk to a running cluster (etcdctl-style)",
                       description="put K V | get K | del K | scan [START [END]] | status | "
                                   "transfer-leader ID, against the cluster at --endpoints. "
                                   "exit status: 0 ok, 1 failed (get: not found), 2 bad usage.")
    p.add_argument("--endpoints", required=True, metavar="HOST:PORT,...")
    p.add_argument("--cluster", default="stratakv")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds per operation (default 5)")
    p.add_argument("--limit", type=whole_number, metavar="N", help="scan: at most N pairs")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("ctl_command", metavar="COMMAND",
                   choices=("put", "get", "del", "scan", "status", "transfer-leader"))
    p.add_argument("ctl_args", nargs="*", metavar="ARG")
    p.set_defaults(parser=p)


_CTL_ARITY = {"put": (2, 2), "get": (1, 1), "del": (1, 1), "scan": (0, 2), "status": (0, 0),
              "transfer-leader": (1, 1)}


def _process_command(args: argparse.Namespace) -> int:
    """serve, up or ctl; their exit status."""
    if args.command == "serve":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format=f"%(asctime)s %(levelname)s node-{args.id} %(name)s: "
                                   f"%(message)s")
        listen = None
        if args.listen is not None:
            try:
                listen = parse_address(args.listen)
            except ValueError as exc:
                args.parser.error(f"--listen: {exc}")
        return processes.serve(args.id, processes.parse_peers(args.peers), args.data,
                               cluster=args.cluster, options=_options(args), listen=listen)
    if args.command == "up":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        extra = ["--cluster", args.cluster,
                 "--election-timeout-ms", str(args.election_timeout_ms),
                 "--heartbeat-ms", str(args.heartbeat_ms),
                 "--max-log-entries", str(args.max_log_entries),
                 "--log-keep-entries", str(args.log_keep_entries),
                 "--txn-idle-timeout-s", str(args.txn_idle_timeout_s),
                 "--snapshot-chunk-bytes", str(args.snapshot_chunk_bytes)]
        if args.unsafe_follower_reads:
            extra.append("--unsafe-follower-reads")
        _options(args)  # bad settings fail here, before any process starts
        return processes.up(args.nodes, args.dir, port=args.port, extra=extra)
    lo, hi = _CTL_ARITY[args.ctl_command]
    if not lo <= len(args.ctl_args) <= hi:
        args.parser.error(f"{args.ctl_command} takes {lo}"
                          f"{'' if lo == hi else f' to {hi}'} argument(s)")
    if args.ctl_command == "transfer-leader" and not args.ctl_args[0].isdigit():
        args.parser.error("transfer-leader takes a node id")
    with connect(args.endpoints, timeout=args.timeout, cluster=args.cluster) as store:
        return ctl.run(store, args.ctl_command, args.ctl_args, sys.stdout, sys.stderr,
                       limit=args.limit, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fs = OSFileSystem()
    try:
        if args.command in ("serve", "up", "ctl"):
            code = _process_command(args)
            sys.stdout.flush()
            return code
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
    except (InvalidArgument, TypeError) as exc:
        args.parser.error(str(exc))
    except (CorruptionError, OSError, ReplicationError, LockedError) as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
