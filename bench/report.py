"""Turning measurements into a table with ratios, results.json, results.md and a chart."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Row", "combine_runs", "render_table", "write_results"]


@dataclass
class Row:
    workload: str
    system: str
    unit: str
    throughput: float
    p50_us: float
    p99_us: float
    ops: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)  # throughput of each repeat, in run order

    @property
    def spread_pct(self) -> float:
        """Half the range of the repeats' throughputs, in percent of the median (0: one run)."""
        if len(self.runs) < 2 or not self.throughput:
            return 0.0
        return 50.0 * (max(self.runs) - min(self.runs)) / self.throughput


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_row(workload: str, system: str, unit: str, ops: int, seconds: float,
             latencies_us: list[float], extra: dict[str, Any]) -> Row:
    return Row(workload, system, unit, ops / seconds if seconds else 0.0,
               statistics.median(latencies_us) if latencies_us else 0.0,
               percentile(latencies_us, 0.99), ops, seconds, extra)


def combine_runs(workload: str, system: str, unit: str, raws: list[dict[str, Any]]) -> Row:
    """One row from repeated measurements: the median throughput, latencies of all runs.

    ``extra`` is the median run's (figures such as bytes on disk belong to one run).
    """
    if len(raws) == 1:
        r = raws[0]
        row = make_row(workload, system, unit, r["ops"], r["seconds"], r["latencies_us"],
                       r["extra"])
        row.runs = [row.throughput]
        return row
    rates = [r["ops"] / r["seconds"] if r["seconds"] else 0.0 for r in raws]
    middle = sorted(range(len(raws)), key=rates.__getitem__)[len(raws) // 2]
    lats = [x for r in raws for x in r["latencies_us"]]
    return Row(workload, system, unit, statistics.median(rates),
               statistics.median(lats) if lats else 0.0, percentile(lats, 0.99),
               sum(r["ops"] for r in raws), sum(r["seconds"] for r in raws),
               raws[middle]["extra"], rates)


def _fmt(x: float) -> str:
    if x >= 100_000:
        return f"{x / 1000:,.0f}k"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def render_table(rows: list[Row], peers: list[str]) -> str:
    """A Markdown table: one line per workload and system, ratios of stratakv to each peer."""
    ours = {r.workload: r for r in rows if r.system == "stratakv"}
    head = ["workload", "system", "throughput", "p50 µs", "p99 µs"]
    head += [f"stratakv / {p}" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        spread = f" ±{r.spread_pct:.0f}%" if len(r.runs) > 1 else ""
        cells = [r.workload, r.system, f"{_fmt(r.throughput)} {r.unit}{spread}",
                 _fmt(r.p50_us), _fmt(r.p99_us)]
        for p in peers:
            if r.system == p and r.workload in ours and r.throughput:
                us = ours[r.workload]
                # Run i of each system ran side by side (repeats interleave): the median
                # of the paired ratios cancels slow spells of the disk that hit both.
                pairs = [a / b for a, b in zip(us.runs, r.runs, strict=False) if b]
                if len(pairs) > 1:
                    cells.append(f"**{statistics.median(pairs):.2f}x** "
                                 f"({min(pairs):.2f}-{max(pairs):.2f})")
                else:
                    cells.append(f"**{us.throughput / r.throughput:.2f}x**")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def write_results(out: str, rows: list[Row], peers: list[str], config: dict[str, Any],
                  versions: dict[str, str]) -> list[str]:
    """Write results.json, results.md and (with matplotlib) results.png; return the paths.

    No PNG path among them means matplotlib is not installed.
    """
    os.makedirs(out, exist_ok=True)
    paths = []
    doc = {"machine": machine(), "versions": versions, "config": config,
           "results": [{**asdict(r), "spread_pct": r.spread_pct} for r in rows]}
    p = os.path.join(out, "results.json")
    with open(p, "w") as f:
        json.dump(doc, f, indent=2)
    paths.append(p)
    p = os.path.join(out, "results.md")
    m = machine()
    with open(p, "w") as f:
        f.write(f"# stratakv benchmark results\n\nMachine: {m['processor']}, {m['cpus']} CPUs, "
                f"{m['platform']}, Python {m['python']}.\nVersions: "
                + ", ".join(f"{k} {v}" for k, v in versions.items())
                + f".\nConfig: {json.dumps(config)}\n\n")
        f.write(render_table(rows, peers) + "\n")
        if any(len(r.runs) > 1 for r in rows):
            f.write(f"\nRepeated workloads: the median of {config.get('repeats')} runs of at "
                    f"least {config.get('min_seconds')} s each, systems interleaved; ±x% is "
                    "half the range of the runs; a ratio is the median of the per-run "
                    "ratios (run i of each system ran side by side), (a-b) their range.\n")
        notes = [(r.workload, r.system, r.extra) for r in rows if r.extra]
        if notes:
            f.write("\n## Extra figures\n\n")
            for w, s, extra in notes:
                shown = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}"
                                  for k, v in extra.items())
                f.write(f"* {w} / {s}: {shown}\n")
    paths.append(p)
    png = _plot(out, rows)
    if png:
        paths.append(png)
    return paths


def _plot(out: str, rows: list[Row]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    workloads = list(dict.fromkeys(r.workload for r in rows))
    systems = list(dict.fromkeys(r.system for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.45 * len(workloads) + 1)))
    width = 0.8 / max(1, len(systems))
    for ax, attr, title in ((axes[0], "throughput", "throughput (log scale)"),
                            (axes[1], "p99_us", "p99 latency µs (log scale)")):
        for i, s in enumerate(systems):
            ys = [next((getattr(r, attr) for r in rows if r.workload == w and r.system == s), 0)
                  for w in workloads]
            ax.barh([j + i * width for j in range(len(workloads))], ys, height=width, label=s)
        ax.set_yticks([j + 0.4 - width / 2 for j in range(len(workloads))])
        ax.set_yticklabels(workloads)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.invert_yaxis()
    axes[0].legend()
    fig.tight_layout()
    path = os.path.join(out, "results.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
