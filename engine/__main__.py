"""``python -m engine``: inspect and check a store offline (like RocksDB's ``ldb``/``sst_dump``).

This file parses arguments and prints; the logic lives in :mod:`engine.tools`,
which only reads. No command opens the store with ``engine.open()`` (recovery
would rewrite it), so every command is safe on a damaged store and leaves the
directory unchanged. Single-threaded.

Exit status: 0 success (``verify``: no problems), 1 damage found (a
``CorruptionError``, or ``verify`` problems), an I/O error or (``get``) a key
not found, 2 bad usage (including a path that is not an engine store, such
as a cluster directory or a replication log: the message names the tool that
reads it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from engine import tools
from engine.errors import CorruptionError, InvalidArgument
from engine.fs import FileSystem, OSFileSystem
from engine.tools import whole_number

PROG = "python -m engine"

EPILOG = """\
examples:
  python -m engine stats /var/lib/app/db
  python -m engine stats --json /var/lib/app/db
  python -m engine verify /var/lib/app/db && echo intact
  python -m engine dump-sst /var/lib/app/db/000012.sst --blocks --limit 20
  python -m engine dump-wal /var/lib/app/db/000031.log
  python -m engine dump-manifest /var/lib/app/db
  python -m engine get /var/lib/app/db user:42
  python -m engine scan /var/lib/app/db user: user~ --limit 10

No command opens the store for writing or runs recovery: inspecting a
store never changes it, whether it is damaged, closed or open elsewhere.

exit status: 0 ok, 1 damage found (or an I/O error; get: key not found),
2 bad usage. A cluster directory and its .rlog files are read by
'python -m replication' instead.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and check a stratakv store offline. Every command only reads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print the engine's log warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str,
                run: Callable[[argparse.Namespace, FileSystem], int]
                ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run, parser=p)
        return p

    p = command(
        "stats", "levels, tables, WAL segments and sizes of a store",
        "Describe a store from its files: the manifest's counters, each level and\n"
        "table (size, entries, sequence and key ranges), each WAL segment (batches,\n"
        "sequences, torn tail) and the bytes on disk. Reads CURRENT, the manifest\n"
        "and the WAL; does not open the store or change anything.", _stats)
    p.add_argument("path", metavar="PATH", help="store directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--hex", action="store_true", help="show keys in hex")

    p = command(
        "verify", "check every table block, the manifest and the WAL",
        "Read and check everything a store holds: CURRENT, the manifest (every edit),\n"
        "every table the manifest lists (footer, index, filter, properties, every\n"
        "data block, key order, agreement with the manifest) and every WAL segment.\n"
        "A torn record at the end of the newest WAL segment is a note (recovery cuts\n"
        "it off); damage anywhere else is a problem.\n\n"
        "exit status: 0 no problems, 1 problems found, 2 bad usage.", _verify)
    p.add_argument("path", metavar="PATH", help="store directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")

    p = command(
        "dump-sst", "print a table's properties, blocks and entries",
        "Print a table's properties, then its entries as\n"
        "  KEY @ SEQUENCE : PUT VALUE   or   KEY @ SEQUENCE : DELETE\n"
        "in stored order (key ascending, newest first). Keys and values are Python\n"
        "bytes literals, or hex with --hex. Every block read is checked; damage ends\n"
        "the dump with the CorruptionError message and exit status 1.", _dump_sst)
    p.add_argument("file", metavar="FILE", help="a table file (NNNNNN.sst)")
    p.add_argument("--limit", type=whole_number, metavar="N", help="print at most N entries")
    p.add_argument("--blocks", action="store_true",
                   help="also print a per-block summary (offset, stored and raw sizes, "
                        "entries, first and last key)")
    p.add_argument("--hex", action="store_true", help="show keys and values in hex")
    p.add_argument("--full", action="store_true",
                   help="print long values whole (default: first 100 bytes)")

    p = command(
        "dump-wal", "print the write groups and batches of a WAL segment",
        "Print each write group of a WAL segment: its offset, then each batch\n"
        "(sequence, operation count) and its operations. A torn tail is reported\n"
        "as a note at the end (exit status 0); damage followed by valid records is\n"
        "corruption (exit status 1, after the records before it).", _dump_wal)
    p.add_argument("file", metavar="FILE", help="a WAL segment (NNNNNN.log)")
    p.add_argument("--limit", type=whole_number, metavar="N", help="print at most N batches")
    p.add_argument("--hex", action="store_true", help="show keys and values in hex")
    p.add_argument("--full", action="store_true",
                   help="print long values whole (default: first 100 bytes)")

    p = command(
        "get", "print the value of one key",
        "Print the value of KEY as the store holds it now: the newest version in the\n"
        "live tables and the WAL segments recovery would replay (like ldb get). Reads\n"
        "the files; does not open the store, run recovery or change anything.\n"
        "KEY is text (UTF-8) or, with --hex, hexadecimal; the value is printed as\n"
        "text (bytes that are not UTF-8 as \\x escapes) or, with --hex, in hex.\n\n"
        "exit status: 0 found, 1 not found (or damage), 2 bad usage.", _get)
    p.add_argument("path", metavar="PATH", help="store directory")
    p.add_argument("key", metavar="KEY", help="the key (text, or hex with --hex)")
    p.add_argument("--hex", action="store_true", help="KEY is hex; print the value in hex")

    p = command(
        "scan", "print the keys and values of a key range",
        "Print 'KEY : VALUE' for every key with START <= key < END, ascending, as the\n"
        "store holds it now (like ldb scan). Without START from the first key, without\n"
        "END to the last. Reads the files; does not open the store or change anything.\n"
        "Keys and values are text (non-UTF-8 bytes as \\x escapes) or hex with --hex.",
        _scan)
    p.add_argument("path", metavar="PATH", help="store directory")
    p.add_argument("start", metavar="START", nargs="?", help="first key (inclusive)")
    p.add_argument("end", metavar="END", nargs="?", help="end key (exclusive)")
    p.add_argument("--limit", type=whole_number, metavar="N", help="print at most N pairs")
    p.add_argument("--hex", action="store_true", help="START and END are hex; print hex")

    p = command(
        "dump-manifest", "print every version edit of a manifest",
        "Print every version edit of a manifest (files added and deleted per level,\n"
        "log number, next file number, last sequence) and the version they add up\n"
        "to. Given a store directory, dumps the manifest CURRENT names.",
        _dump_manifest)
    p.add_argument("path", metavar="PATH_OR_FILE", help="store directory or MANIFEST-NNNNNN file")
    p.add_argument("--hex", action="store_true", help="show keys in hex")
    return parser


def _emit(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def _need_dir(args: argparse.Namespace, path: str) -> None:
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        args.parser.error(f"{path} {what} (expected a store directory)")


def _need_file(args: argparse.Namespace, path: str) -> None:
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(path) else "is not a file"
        args.parser.error(f"{path} {what}")


def _stats(args: argparse.Namespace, fs: FileSystem) -> int:
    _need_dir(args, args.path)
    stats = tools.store_stats(fs, args.path)
    if args.json:
        print(json.dumps(stats.to_json(), indent=2))
    else:
        _emit(stats.lines(hex_=args.hex))
    return 0


def _verify(args: argparse.Namespace, fs: FileSystem) -> int:
    _need_dir(args, args.path)
    result = tools.verify_store_offline(fs, args.path)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _emit(result.lines())
    return 0 if result.ok else 1


def _dump_sst(args: argparse.Namespace, fs: FileSystem) -> int:
    _need_file(args, args.file)
    _emit(tools.dump_sst(fs, args.file, limit=args.limit, blocks=args.blocks, hex_=args.hex,
                         value_limit=None if args.full else 100))
    return 0


def _dump_wal(args: argparse.Namespace, fs: FileSystem) -> int:
    _need_file(args, args.file)
    _emit(tools.dump_wal(fs, args.file, limit=args.limit, hex_=args.hex,
                         value_limit=None if args.full else 100))
    return 0


def _key_arg(args: argparse.Namespace, text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    if not args.hex:
        return text.encode("utf-8", "surrogateescape")
    try:
        return bytes.fromhex(text)
    except ValueError:
        args.parser.error(f"{what} {text!r} is not hex (--hex given)")
    return None  # not reached: parser.error exits


def _show(data: bytes, hex_: bool) -> str:
    """Text for a terminal: UTF-8 with other bytes and control characters as escapes."""
    if hex_:
        return data.hex()
    text = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == "\\" else repr(c)[1:-1] for c in text)


def _get(args: argparse.Namespace, fs: FileSystem) -> int:
    _need_dir(args, args.path)
    key = _key_arg(args, args.key, "KEY")
    assert key is not None
    with tools.open_view(fs, args.path) as view:
        value = view.get(key)
    if value is None:
        print(f"{args.key}: not found", file=sys.stderr)
        return 1
    print(_show(value, args.hex))
    return 0


def _scan(args: argparse.Namespace, fs: FileSystem) -> int:
    _need_dir(args, args.path)
    start = _key_arg(args, args.start, "START")
    end = _key_arg(args, args.end, "END")
    with tools.open_view(fs, args.path) as view:
        for i, (key, value) in enumerate(view.scan(start, end)):
            if args.limit is not None and i >= args.limit:
                break
            print(f"{_show(key, args.hex)} : {_show(value, args.hex)}")
    return 0


def _dump_manifest(args: argparse.Namespace, fs: FileSystem) -> int:
    if not os.path.exists(args.path):
        args.parser.error(f"{args.path} does not exist")
    _emit(tools.dump_manifest(fs, args.path, hex_=args.hex))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace, FileSystem], int] = args.run
    try:
        status = run(args, OSFileSystem())
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except InvalidArgument as exc:
        args.parser.error(str(exc))
    except CorruptionError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Python's docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
