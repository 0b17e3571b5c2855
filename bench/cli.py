"""``python -m bench``: run the workloads on stratakv and its peers, print and save results."""

from __future__ import annotations

import argparse
import fnmatch
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from importlib import metadata
from typing import Any, TypeVar

from bench.report import Row, make_row, render_table, write_results
from bench.systems import SYSTEMS, available_systems
from bench.workloads import WORKLOADS, Config

T = TypeVar("T")

SUITES = {
    "quick": Config(keys=100_000, scale=1.0, suite="quick"),
    "full": Config(keys=1_000_000, scale=5.0, suite="full"),
}


def _child(workload: str, system: str, cfg: dict[str, Any], path: str) -> dict[str, Any]:
    """Run one workload on one system (in a fresh process); return the raw measurement."""
    config = Config(**{**cfg, "path": path})
    factory = SYSTEMS[system]

    def make(durable: bool, **options: Any) -> Any:
        return factory(path, durable, options if system == "stratakv" else None)

    m = WORKLOADS[workload].run(make, config)
    return {"ops": m.ops, "seconds": m.seconds, "latencies_us": m.latencies_us[:200_000],
            "extra": m.extra}


def _progress(items: list[T], desc: str) -> Iterator[T]:
    try:
        from tqdm import tqdm
    except ImportError:
        for i, item in enumerate(items):
            print(f"[{i + 1}/{len(items)}] {desc}: {item}", file=sys.stderr, flush=True)
            yield item
        return
    bar = tqdm(items, desc=desc, file=sys.stderr)
    for item in bar:
        bar.set_postfix_str(str(item))
        yield item


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark stratakv side by side with sqlite3 (and lmdb / RocksDB when "
                    "installed: pip install 'stratakv[peers]'). Subcommand: "
                    "'python -m bench crash --help' for the crash-recovery torture test.")
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick",
                        help="quick: about a minute, 100,000 keys (default); full: 1,000,000 "
                             "keys and five times the operations")
    parser.add_argument("--only", metavar="PATTERN", action="append",
                        help="run only workloads matching this glob (repeatable), e.g. 'read*'")
    parser.add_argument("--keys", type=_positive, help="keys to load (overrides the suite)")
    parser.add_argument("--threads", type=_positive, help="client threads for the concurrent "
                                                          "workloads (default 16)")
    parser.add_argument("--systems", default=None,
                        help="comma-separated subset of: " + ", ".join(SYSTEMS))
    parser.add_argument("--values", choices=["compressible", "random"], default="compressible",
                        help="100-byte values that compress about 2:1 (db_bench's) or random")
    parser.add_argument("--out", default="bench-results",
                        help="directory for results.json, results.md, results.png")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.systems:
        unknown = set(args.systems.split(",")) - set(SYSTEMS)
        if unknown:
            parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    if args.only:
        names = [w for w in WORKLOADS if any(fnmatch.fnmatch(w, p) for p in args.only)]
        if not names:
            parser.error(f"--only {args.only} matches no workload; try --list")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for workload in WORKLOADS.values():
            print(f"{workload.name:16} {workload.description}")
        return 0
    base = SUITES[args.suite]
    cfg = Config(**{**asdict(base), "seed": args.seed, "values": args.values})
    if args.keys:
        cfg.keys = args.keys
    if args.threads:
        cfg.threads = args.threads
    systems = available_systems(args.systems.split(",") if args.systems else None)
    peers = [s for s in systems if s != "stratakv"]
    names = [w for w in WORKLOADS
             if not args.only or any(fnmatch.fnmatch(w, p) for p in args.only)]
    steps = [(w, s) for w in names for s in systems if s == "stratakv" or WORKLOADS[w].peers]
    print(f"stratakv benchmark: suite={args.suite} keys={cfg.keys:,} systems={', '.join(systems)}"
          f" workloads={len(names)}", flush=True)
    ctx = multiprocessing.get_context("spawn")
    rows: list[Row] = []
    scratch = tempfile.mkdtemp(prefix="stratakv-bench-")
    started = time.perf_counter()
    try:
        for w, s in _progress(steps, "bench"):
            path = os.path.join(scratch, f"{w}-{s}")
            with ctx.Pool(1) as pool:
                raw = pool.apply(_child, (w, s, asdict(cfg), path))
            shutil.rmtree(path, ignore_errors=True)
            rows.append(make_row(w, s, WORKLOADS[w].unit, raw["ops"], raw["seconds"],
                                 raw["latencies_us"], raw["extra"]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(render_table(rows, peers))
    versions = {"stratakv": metadata.version("stratakv") if _installed() else "source",
                "sqlite": __import__("sqlite3").sqlite_version}
    for mod, dist in (("lmdb", "lmdb"), ("rocksdb", "rocksdict")):
        if mod in systems:
            versions[dist] = metadata.version(dist)
    paths = write_results(args.out, rows, peers, {**asdict(cfg), "systems": systems}, versions)
    print(f"\n{len(rows)} measurements in {time.perf_counter() - started:.0f} s; wrote "
          + ", ".join(paths))
    return 0


def _installed() -> bool:
    try:
        metadata.version("stratakv")
    except metadata.PackageNotFoundError:
        return False
    return True
