"""``python -m bench nemesis``: break a real process cluster on purpose, then judge its histories.

::

    runner (this process)                      node processes (serve --listen)
      Proxy (asyncio thread) <== every node->node and client->node link ==> n0 n1 n2 ..
      Nemesis thread: kill / pause / partition / bridge / oneway / slow / restart
      client processes (bench.nemesis.workload, threads each) --> their own proxy links

A run: start N nodes wired through the proxy and K client processes;
inject seeded faults for ``--duration`` seconds while the clients record
histories; then heal, restart every node, wait until all have applied the
leader's commit index, read the registers and lists once more, stop the
nodes (each must exit 0 on SIGTERM) and judge offline
(:mod:`bench.nemesis.check`): strict serializability of the list-append
transactions, linearizability of the registers, no acknowledged write
lost, identical replicas holding exactly what the log implies. Prints the
timeline, the counts, a verdict and the seed; exit status 0 valid, 1 not.

Every process started here is stopped by its pid on the way out, whether
the run ends, fails or is interrupted (Ctrl-C, SIGTERM); node and client
processes also ask the kernel for SIGTERM should this process die.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.checkers import Op, check_linearizable
from bench.nemesis.check import (
    Attempt,
    check_list_append,
    check_transactions,
    last_element,
)
from bench.nemesis.cluster import LIVENESS_S, ProcCluster, apply_log
from bench.nemesis.faults import FAULT_KINDS, FaultEvent, Nemesis
from bench.nemesis.proxy import Proxy
from bench.nemesis.workload import LIST_KEYS, REGISTER_KEYS
from replication.processes import die_with_parent
from replication.transport.tcp import format_address

__all__ = ["NemesisConfig", "NemesisResult", "main", "parse_args", "run_nemesis"]

ELECTION_TIMEOUT_MS = 400


@dataclass
class NemesisConfig:
    nodes: int = 3
    duration_s: float = 60.0
    seed: int = 1
    faults: Sequence[str] = FAULT_KINDS
    clients: int = 3
    threads: int = 4
    unsafe_follower_reads: bool = False
    follower_reads: bool = False
    max_down: int | None = None
    out: str | None = "nemesis-results"
    base: str | None = None


@dataclass
class NemesisResult:
    ok: bool
    problems: list[str]
    counts: dict[str, int]
    register_ops: int
    transactions: Counter[str]
    timeline: list[FaultEvent]
    ops: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0
    plot: str | None = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_nemesis(cfg: NemesisConfig) -> NemesisResult:
    """One run, start to verdict; every process it started is stopped before it returns."""
    base = Path(cfg.base or tempfile.mkdtemp(prefix="stratakv-nemesis-"))
    extra = ["--max-log-entries", str(10**9), "--log-keep-entries", "1000"]
    if cfg.unsafe_follower_reads:
        extra.append("--unsafe-follower-reads")
    follower_reads = cfg.follower_reads or cfg.unsafe_follower_reads
    _say(f"nemesis: {cfg.nodes} nodes, {cfg.clients} client processes x {cfg.threads} threads, "
         f"{cfg.duration_s:g}s, faults {','.join(cfg.faults)}, seed {cfg.seed}"
         + (", UNSAFE follower reads (broken on purpose)" if cfg.unsafe_follower_reads else "")
         + f"; data in {base}")
    proxy = Proxy(seed=cfg.seed)
    cluster: ProcCluster | None = None
    clients: list[subprocess.Popen[bytes]] = []
    nemesis: Nemesis | None = None
    try:
        cluster = ProcCluster(base, cfg.nodes, extra, proxy=proxy)
        client_names = [f"c{c}" for c in range(cfg.clients)]
        endpoints = [[proxy.add_link(name, f"n{j}", cluster.addresses[j])
                      for j in range(cfg.nodes)] for name in client_names]
        leader = cluster.leader()
        _say(f"nodes up: {cluster.endpoints} (through the proxy); leader {leader}")
        t0 = time.monotonic()
        until = t0 + cfg.duration_s
        for c in range(cfg.clients):
            cmd = [sys.executable, "-m", "bench.nemesis.workload",
                   "--endpoints", ",".join(format_address(a) for a in endpoints[c]),
                   "--client", str(c), "--threads", str(cfg.threads), "--seed", str(cfg.seed),
                   "--until", repr(until), "--out", str(base / f"client-{c}.jsonl")]
            if follower_reads:
                cmd.append("--follower-reads")
            with open(base / f"client-{c}.log", "ab") as log:
                clients.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=log, preexec_fn=die_with_parent))
        nemesis = Nemesis(cluster, proxy, cfg.seed, cfg.faults, ELECTION_TIMEOUT_MS / 1000,
                          clients=client_names, max_down=cfg.max_down, say=_say)
        nemesis.start(until)
        nemesis.t0 = t0
        problems: list[str] = []
        for c, proc in enumerate(clients):
            try:
                code = proc.wait(max(1.0, until - time.monotonic()) + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                problems.append(f"client process {c} exited with status {code} (see "
                                f"{base / f'client-{c}.log'})")
        nemesis.stop()
        if nemesis.error is not None:
            problems.append(f"the nemesis failed: {nemesis.error!r}")
        _say(f"[{time.monotonic() - t0:7.2f}s] healed; restarting every node")
        for i in range(cfg.nodes):
            cluster.kill(i, signal.SIGTERM)
        for i in range(cfg.nodes):
            cluster.restart(i)
        cluster.wait_converged(2 * LIVENESS_S)
        final = _final_reads(cluster)
        cluster.stop()
        codes = [c.process.returncode for c in cluster.children]
        if codes != [0] * cfg.nodes:
            problems.append(f"nodes did not stop cleanly on SIGTERM: exit codes {codes}")
        records = [json.loads(line) for c in range(cfg.clients)
                   if (base / f"client-{c}.jsonl").exists()
                   for line in (base / f"client-{c}.jsonl").read_text().splitlines()]
        result = judge(cluster, records, final, nemesis, problems)
        result.t0 = t0
        _report(cfg, result)
        if cfg.out:
            unsafe = "-unsafe" if cfg.unsafe_follower_reads else ""
            result.plot = plot_timeline(result, Path(cfg.out) / f"nemesis-{cfg.nodes}n-seed"
                                        f"{cfg.seed}{unsafe}.png")
        return result
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if nemesis is not None:
            nemesis.stop()
        if cluster is not None:
            cluster.stop()
        proxy.close()


def _final_reads(cluster: ProcCluster) -> dict[str, tuple[float, str | None, float]]:
    """Every register and list read once more, directly (no proxy), after the cluster healed."""
    out: dict[str, tuple[float, str | None, float]] = {}
    with cluster.client(timeout=LIVENESS_S) as store:
        for key in REGISTER_KEYS + LIST_KEYS:
            invoke = time.monotonic()
            value = store.get(key)
            out[key] = (invoke, value, time.monotonic())
    return out


def judge(cluster: ProcCluster, records: list[dict[str, Any]],
          final: dict[str, tuple[float, str | None, float]], nemesis: Nemesis,
          problems: list[str]) -> NemesisResult:
    """The verdict, from the clients' records and the stopped nodes' directories."""
    n = len(cluster.children)
    states = [cluster.replica_state(i) for i in range(n)]
    for i, st in enumerate(states):
        if st != states[0]:
            diff = sorted(k for k in set(st) | set(states[0]) if st.get(k) != states[0].get(k))
            problems.append(f"replica {i} differs from replica 0 at {diff[:5]}")
    state = dict(states[0])
    applied = int(state.pop(b"__applied__"))
    log = cluster.committed_log(0, applied)
    if state != apply_log(log):
        problems.append("replica 0 does not hold what its log implies")

    # Registers: linearizable; acknowledged puts in the log; failed ones not.
    names: dict[str, int] = {}
    ops: list[Op] = []
    failed: list[str] = []
    regs = [r for r in records if r["type"] == "reg"]
    for r in regs:
        client = names.setdefault(r["client"], len(names))
        if r["outcome"] == "ok":
            ops.append(Op(client, r["kind"], r["key"], r["value"], r["invoke"], r["complete"]))
        elif r["outcome"] == "unknown" and r["kind"] != "get":
            ops.append(Op(client, r["kind"], r["key"], r["value"], r["invoke"], None))
        elif r["outcome"] == "fail" and r["kind"] == "put":
            failed.append(r["value"])
    for key in REGISTER_KEYS:
        invoke, value, complete = final[key]
        ops.append(Op(len(names), "get", key, value, invoke, complete))
    reg_keys = {k.encode() for k in REGISTER_KEYS}
    written = {v.decode() for _, e in log for k, v in e.items()
               if k in reg_keys and v is not None}
    lost = [r["value"] for r in regs if r["kind"] == "put" and r["outcome"] == "ok"
            and r["value"] not in written]
    if lost:
        problems.append(f"{len(lost)} acknowledged register puts are not in the log: {lost[:5]}")
    phantom = [v for v in failed if v in written]
    if phantom:
        problems.append(f"puts reported as failed are in the log: {phantom[:5]}")
    lin = check_linearizable(ops)
    if not lin.ok:
        problems.append(f"registers not linearizable: {lin.explanation}")

    # Transactions: strict serializability, list-append consistency, nothing lost.
    attempts = [Attempt.from_json(r) for r in records if r["type"] == "txn"]
    list_keys = {k.encode() for k in LIST_KEYS}
    verdict = check_transactions(attempts, log, list_keys, last_element)
    problems += verdict.problems
    problems += check_list_append(attempts, log, list_keys)
    for key in LIST_KEYS:
        expected = state.get(key.encode())
        if final[key][1] != (None if expected is None else expected.decode()):
            problems.append(f"final read of {key} disagrees with the replicas")
    unexpected = [r.get("error") for r in records if r.get("outcome") in ("unknown", "error")
                  and r.get("error") and "AmbiguousCommit" not in r.get("error", "")]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected client errors, e.g. {unexpected[:3]}")
    return NemesisResult(not problems, problems, nemesis.counts(), len(ops), verdict.outcomes,
                         nemesis.timeline, records)


def _report(cfg: NemesisConfig, r: NemesisResult) -> None:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "none"
    txns = ", ".join(f"{k} {v}" for k, v in sorted(r.transactions.items()))
    _say(f"faults injected: {faults} ({sum(r.counts.values())} in all)")
    _say(f"checked: {r.register_ops} register operations (linearizability), "
         f"{sum(r.transactions.values())} transactions ({txns}) (strict serializability)")
    if r.ok:
        _say(f"verdict: VALID -- no anomaly found (seed {cfg.seed}, {cfg.nodes} nodes)")
    else:
        _say(f"verdict: INVALID (seed {cfg.seed}, {cfg.nodes} nodes; reproduce with "
             f"--nodes {cfg.nodes} --seed {cfg.seed} --duration {cfg.duration_s:g}"
             f" --faults {','.join(cfg.faults)}"
             + (" --unsafe-follower-reads" if cfg.unsafe_follower_reads else "") + ")")
        for p in r.problems[:10]:
            _say(f"  - {p[:400]}")
        if cfg.unsafe_follower_reads:
            _say("  (expected: --unsafe-follower-reads serves stale reads on purpose)")


def plot_timeline(r: NemesisResult, path: Path) -> str | None:
    """Jepsen's latency plot: each operation's latency over time, coloured by outcome, fault
    intervals shaded. None (and a message) without matplotlib (pip install 'stratakv[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("no latency plot: matplotlib is not installed (pip install 'stratakv[plot]')")
        return None
    colours = {"ok": "tab:green", "committed": "tab:green", "fail": "tab:orange",
               "failed": "tab:orange", "unknown": "tab:red", "ambiguous": "tab:red",
               "error": "tab:red"}
    labels = {"tab:green": "ok", "tab:orange": "failed / aborted", "tab:red": "unknown"}
    fig, ax = plt.subplots(figsize=(14, 6))
    shade = {"kill": "black", "pause": "tab:blue", "partition": "tab:purple",
             "bridge": "tab:brown", "oneway": "tab:pink", "slow": "tab:olive",
             "restart": "tab:gray"}
    seen: set[str] = set()
    for e in r.timeline:
        end = e.end if e.end is not None else e.start + 0.5
        ax.axvspan(e.start - r.t0, end - r.t0, color=shade.get(e.kind, "gray"), alpha=0.12,
                   label=e.kind if e.kind not in seen else None)
        seen.add(e.kind)
    for colour, label in labels.items():
        xs = [o["invoke"] - r.t0 for o in r.ops if colours.get(o["outcome"]) == colour
              and o.get("complete") is not None]
        ys = [max(1e-4, o["complete"] - o["invoke"]) * 1000 for o in r.ops
              if colours.get(o["outcome"]) == colour and o.get("complete") is not None]
        ax.scatter(xs, ys, s=3, c=colour, label=label, alpha=0.6, linewidths=0)
    ax.set_yscale("log")
    ax.set_xlabel("time since the clients started (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"stratakv nemesis: {'VALID' if r.ok else 'INVALID'}")
    ax.legend(loc="upper right", fontsize=8, markerscale=3, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    _say(f"latency plot: {path}")
    return str(path)


def _faults(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kind(s) {unknown}; choose from "
                                         f"{','.join(FAULT_KINDS)}")
    return kinds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench nemesis`` (exits 2 on bad usage)."""
    p = argparse.ArgumentParser(
        prog="python -m bench nemesis",
        description="Jepsen-style fault injection against a real N-node process cluster on "
                    "127.0.0.1, with a fault-injecting proxy between every pair of nodes and "
                    "between clients and nodes; checks strict serializability, "
                    "linearizability, no lost acknowledged write, identical replicas.")
    p.add_argument("--nodes", type=int, choices=(3, 5, 7), default=3)
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="seconds of faults and client load (default 60)")
    p.add_argument("--seed", type=int, default=1, help="fault schedule seed (default 1)")
    p.add_argument("--faults", type=_faults, default=list(FAULT_KINDS),
                   help=f"comma-separated, default all: {','.join(FAULT_KINDS)}")
    p.add_argument("--clients", type=int, default=3, metavar="K",
                   help="client processes (default 3)")
    p.add_argument("--threads", type=int, default=4, metavar="T",
                   help="threads per client process, half registers, half transactions "
                        "(default 4)")
    p.add_argument("--max-down", type=int, default=None, metavar="M",
                   help="allow M nodes down at once (default f = (N-1)/2)")
    p.add_argument("--follower-reads", action="store_true",
                   help="register gets ask a random node first (harmless on a correct build)")
    p.add_argument("--unsafe-follower-reads", action="store_true",
                   help="run a BROKEN build whose nodes serve gets without ReadIndex (implies "
                        "--follower-reads): the verdict must be INVALID")
    p.add_argument("--out", default="nemesis-results", help="where the PNG goes")
    p.add_argument("--dir", default=None, help="data directory (default: a temporary one, "
                                               "removed after a valid run)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.threads < 2:
        p.error("--duration must be > 0, --clients >= 1, --threads >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cfg = NemesisConfig(args.nodes, args.duration, args.seed, args.faults, args.clients,
                        args.threads, args.unsafe_follower_reads, args.follower_reads,
                        args.max_down, args.out, args.dir)
    if cfg.base is None:
        cfg.base = tempfile.mkdtemp(prefix="stratakv-nemesis-")
    try:
        result = run_nemesis(cfg)
    except KeyboardInterrupt:
        _say(f"interrupted: every process stopped; data left in {cfg.base}")
        return 130
    if result.ok and args.dir is None:
        with contextlib.suppress(OSError):
            shutil.rmtree(cfg.base)
    elif not result.ok:
        _say(f"data and node logs kept in {cfg.base}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
