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

from bench.report import Row, combine_runs, render_table, write_results
from bench.systems import NETWORK_PEERS, SYSTEMS, available_systems
from bench.workloads import WORKLOADS, Config

# Which pip extra provides each optional peer.
EXTRAS = {"lmdb": "peers", "rocksdb": "peers"}

T = TypeVar("T")

SUITES = {
    "quick": Config(keys=100_000, scale=1.0, suite="quick"),
    "full": Config(keys=1_000_000, scale=5.0, suite="full"),
}


def _child(workload: str, system: str, cfg: dict[str, Any], path: str) -> dict[str, Any]:
    """Run one workload on one system (in a fresh process); return the raw measurement."""
    config = Config(**{**cfg, "path": path, "system": system})

    def make(durable: bool, **options: Any) -> Any:
        if system not in SYSTEMS:
            raise RuntimeError(f"{system} runs only the workloads on server processes")
        return SYSTEMS[system](path, durable, options if system == "stratakv" else None)

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
                    "installed: pip install 'stratakv[peers]'; etcd on the proc_* workloads "
                    "when an etcd binary is on PATH). '--list' lists the workloads. "
                    "Subcommand: 'python -m bench crash --help' for the crash-recovery "
                    "torture test.")
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick",
                        help="quick: a few minutes, 100,000 keys (default); full: 1,000,000 "
                             "keys and five times the operations")
    parser.add_argument("--only", metavar="PATTERN", action="append",
                        help="run only workloads matching this glob (repeatable), e.g. 'read*'")
    parser.add_argument("--keys", type=_positive, help="keys to load (overrides the suite)")
    parser.add_argument("--threads", type=_positive, help="client threads for the concurrent "
                                                          "workloads (default 16)")
    parser.add_argument("--systems", default=None,
                        help="comma-separated subset of: "
                             + ", ".join([*SYSTEMS, *NETWORK_PEERS]))
    parser.add_argument("--values", choices=["compressible", "random"], default="compressible",
                        help="100-byte values that compress about 2:1 (db_bench's) or random")
    parser.add_argument("--out", default="bench-results",
                        help="directory for results.json, results.md, results.png")
    parser.add_argument("--dir", default=None,
                        help="where the stores under test are written (default: the temporary "
                             "directory); a stratakv-bench-* directory inside it is removed "
                             "at the end")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--repeats", type=_positive, default=None,
                        help="runs of each durable (fsync-bound) workload, systems "
                             "interleaved; the table gives the median and the spread "
                             "(default 3)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="each run of a durable workload lasts at least this long; its "
                             "operation count is scaled up to reach it (default 2)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.systems:
        wanted = args.systems.split(",")
        unknown = set(wanted) - set(SYSTEMS) - set(NETWORK_PEERS)
        if unknown:
            parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
        missing = [s for s in wanted if s not in available_systems([s])]
        if missing:
            extras = sorted({EXTRAS[s] for s in missing if s in EXTRAS})
            hints = ([("pip install " + " ".join(f"'stratakv[{e}]'" for e in extras))]
                     if extras else []) + [NETWORK_PEERS[s] for s in missing
                                           if s in NETWORK_PEERS]
            parser.error(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                         "installed: " + "; ".join(hints))
    if args.min_seconds is not None and not args.min_seconds >= 0:
        parser.error(f"--min-seconds must be >= 0, got {args.min_seconds}")
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: no such directory")
    if args.only:
        names = [w for w in WORKLOADS if any(fnmatch.fnmatch(w, p) for p in args.only)]
        if not names:
            parser.error(f"--only {args.only} matches no workload; try --list")
    return args


def _calibrated(cfg: Config, raw: dict[str, Any]) -> Config | None:
    """A config whose op count makes a run last ``min_seconds``; None if ``raw``'s already did."""
    if raw["seconds"] >= cfg.min_seconds or not raw["ops"]:
        return None
    factor = min(50.0, 1.2 * cfg.min_seconds / max(raw["seconds"], 1e-3))
    return Config(**{**asdict(cfg), "scale": cfg.scale * factor})


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        width = max(len(name) for name in WORKLOADS)
        units = max(len(w.unit) for w in WORKLOADS.values())
        for workload in WORKLOADS.values():
            tags = ", ".join(t for t, on in (
                ("durable: repeated", workload.durable),
                ("stratakv only", not workload.peers and not workload.network),
                ("stratakv and " + ", ".join(NETWORK_PEERS), workload.network)) if on)
            print(f"{workload.name:{width}}  {workload.unit:{units}}  {workload.description}"
                  + (f" [{tags}]" if tags else ""))
        return 0
    base = SUITES[args.suite]
    cfg = Config(**{**asdict(base), "seed": args.seed, "values": args.values})
    if args.keys:
        cfg.keys = args.keys
    if args.threads:
        cfg.threads = args.threads
    if args.repeats is not None:
        cfg.repeats = args.repeats
    if args.min_seconds is not None:
        cfg.min_seconds = args.min_seconds
    systems = available_systems(args.systems.split(",") if args.systems else None)
    peers = [s for s in systems if s != "stratakv"]
    names = [w for w in WORKLOADS
             if not args.only or any(fnmatch.fnmatch(w, p) for p in args.only)]
    # One step per measurement; a durable workload's repeats interleave the systems,
    # so that a slow spell of the disk hits every system alike.
    steps = [(w, s, rep) for w in names
             for rep in range(cfg.repeats if WORKLOADS[w].durable else 1)
             for s in systems if WORKLOADS[w].runs_on(s)]
    print(f"stratakv benchmark: suite={args.suite} keys={cfg.keys:,} systems={', '.join(systems)}"
          f" workloads={len(names)}", flush=True)
    ctx = multiprocessing.get_context("spawn")
    raws: dict[tuple[str, str], list[dict[str, Any]]] = {}
    configs: dict[tuple[str, str], Config] = {}
    scratch = tempfile.mkdtemp(prefix="stratakv-bench-", dir=args.dir)
    started = time.perf_counter()
    interrupted = False

    def measure(w: str, s: str, run_cfg: Config) -> dict[str, Any]:
        path = os.path.join(scratch, f"{w}-{s}")
        try:
            with ctx.Pool(1) as pool:
                result: dict[str, Any] = pool.apply(_child, (w, s, asdict(run_cfg), path))
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return result

    try:
        for w, s, _ in _progress(steps, "bench"):
            key = (w, s)
            run_cfg = configs.get(key, cfg)
            raw = measure(w, s, run_cfg)
            if WORKLOADS[w].durable:
                if key not in configs:
                    configs[key] = run_cfg
                    longer = _calibrated(cfg, raw)
                    if longer is not None:  # too short to trust: measure again, longer
                        configs[key] = longer
                        raw = measure(w, s, longer)
                raw["extra"] = {**raw["extra"], "scale": round(configs[key].scale, 2)}
            raws.setdefault(key, []).append(raw)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: reporting the measurements that finished", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows: list[Row] = [combine_runs(w, s, WORKLOADS[w].unit, runs)
                       for (w, s), runs in raws.items()]
    if not rows:
        print("nothing was measured; results in " + args.out + " left as they were",
              file=sys.stderr)
        return 130 if interrupted else 1
    print()
    print(render_table(rows, peers))
    versions = {"stratakv": metadata.version("stratakv") if _installed() else "source",
                "sqlite": __import__("sqlite3").sqlite_version}
    for mod, dist in (("lmdb", "lmdb"), ("rocksdb", "rocksdict")):
        if mod in systems:
            versions[dist] = metadata.version(dist)
    if "etcd" in systems:
        from bench.etcd import etcd_version

        versions["etcd"] = etcd_version()
    paths = write_results(args.out, rows, peers,
                          {**asdict(cfg), "systems": systems, "interrupted": interrupted},
                          versions)
    print(f"\n{len(rows)} measurements in {time.perf_counter() - started:.0f} s; wrote "
          + ", ".join(paths))
    if not any(p.endswith(".png") for p in paths):
        print("no chart: matplotlib is not installed (pip install 'stratakv[plot]')")
    return 130 if interrupted else 0


def _installed() -> bool:
    try:
        metadata.version("stratakv")
    except metadata.PackageNotFoundError:
        return False
    return True
