"""The ``stratakv`` console script: one command that reaches every tool.

Each subcommand hands the rest of the command line to a tool that also runs
as ``python -m ...``; nothing here parses a tool's options, so the two forms
accept the same arguments and return the same exit status:

=================================  =======================================
``stratakv bench [...]``           ``python -m bench [...]``
``stratakv crash [...]``           ``python -m bench crash [...]``
``stratakv txn [...]``             ``python -m bench txn [...]``
``stratakv inspect COMMAND ...``   ``python -m engine COMMAND ...``
``stratakv cluster COMMAND ...``   ``python -m replication COMMAND ...``
``stratakv sim [...]``             ``python -m replication.sim [...]``
=================================  =======================================

It lives in ``bench`` because ``bench`` is the one package allowed to import
both ``engine`` and ``replication`` (dependencies point down). Tools are
imported only when chosen, so ``stratakv inspect`` does not load the
benchmark workloads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

__all__ = ["COMMANDS", "main"]

# name -> (module with main(argv), what it is)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("bench.cli", "run the benchmark suite (python -m bench)"),
    "crash": ("bench.crash", "SIGKILL torture test of durability (python -m bench crash)"),
    "nemesis": ("bench.nemesis.run", "Jepsen-style faults against node processes "
                                     "(python -m bench nemesis)"),
    "txn": ("bench.txn", "SSI versus OCC transaction benchmark (python -m bench txn)"),
    "inspect": ("engine.__main__", "inspect an engine store offline (python -m engine)"),
    "cluster": ("replication.__main__",
                "inspect a cluster directory offline (python -m replication)"),
    "sim": ("replication.sim", "seeded deterministic cluster simulation "
                               "(python -m replication.sim)"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: stratakv COMMAND [ARGS...]", "",
             "stratakv: a durable, transactional, replicated key-value store. Commands:"]
    lines += [f"  {name:{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "'stratakv COMMAND --help' describes a command's arguments.",
              "exit status: the command's own (2: bad usage)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from engine import __version__

        print(f"stratakv {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"stratakv: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    tool: Callable[[list[str]], int] = import_module(COMMANDS[name][0]).main
    return tool(rest)


if __name__ == "__main__":
    sys.exit(main())
