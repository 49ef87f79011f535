"""``smalllm report SWEEP``: the tidy table, size x frequency heatmaps, the learned frontier, curves.

For each task (and each combination of swept keys other than size, frequency and seeds, called a
*facet*), the finished cells are arranged on a grid of model size (rows, by parameter count) by the
task's frequency (columns); seeds are averaged. A (size, frequency) point counts as *learned* when
the task emerged (the run's own criterion, see :mod:`smalllm.eval.emergence`) in at least half of its
seeds. The *frontier* is read off that grid: the lowest frequency learned at each size, and the
smallest size that learns each frequency.

Files (in ``SWEEP/report/``, ``<task>`` suffixed by the facet when there is one)::

    heatmap_acc_<task>.png    final accuracy, mean over seeds, annotated; learned cells boxed
    heatmap_loss_<task>.png   final answer loss / chance loss, annotated
    frontier_<task>.png       learned / not learned points and the frontier line, log-log
    curves_<task>.png         accuracy vs tokens, one panel per frequency, sizes overlaid
    summary.md                cell states, frontier tables, the images

Figures use :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot global state).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from smalllm.sweep.aggregate import SweepInfo, collect, curves, write_table

DPI = 100
REPORT_DIR = "report"
_SEED_KEY = re.compile(r"^(train\.seed|data\.seed|data\.tasks\.\d+\.seed)$")
_FREQ_KEY = re.compile(r"^data\.tasks\.\d+\.(frequency|unit)$")


# ---------------------------------------------------------------------------------------------- frontier


@dataclass
class Panel:
    """One task (within one facet) on the size x frequency grid, seeds averaged."""

    task: str
    facet: tuple[tuple[str, Any], ...]
    sizes: list[str]
    """Row labels, smallest model first."""
    params: dict[str, int]
    freqs: list[float]
    """Column values, lowest frequency first."""
    unit: str
    acc: dict[tuple[str, float], float] = field(default_factory=dict)
    loss_ratio: dict[tuple[str, float], float] = field(default_factory=dict)
    learned_frac: dict[tuple[str, float], float] = field(default_factory=dict)
    seeds: dict[tuple[str, float], int] = field(default_factory=dict)
    cells: dict[tuple[str, float], list[str]] = field(default_factory=dict)
    criterion: str = ""

    @property
    def title(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.facet)
        return self.task + (f" [{extra}]" if extra else "")

    @property
    def slug(self) -> str:
        extra = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in self.facet)
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.task + (f"_{extra}" if extra else ""))

    def learned(self, size: str, freq: float) -> bool:
        return self.learned_frac.get((size, freq), 0.0) >= 0.5

    def lowest_learned(self, size: str) -> float | None:
        """Lowest frequency learned at ``size`` (None: none of the swept ones)."""
        return next((f for f in self.freqs if self.learned(size, f)), None)

    def smallest_learner(self, freq: float) -> str | None:
        """Smallest size that learns ``freq`` (None: no swept size)."""
        return next((s for s in self.sizes if self.learned(s, freq)), None)


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def panels(info: SweepInfo, rows: list[dict]) -> list[Panel]:
    """Group the finished task-level rows into size x frequency panels."""
    facet_keys = [
        k for k in info.grid_keys if k != info.size_key and not _SEED_KEY.match(k) and not _FREQ_KEY.match(k)
    ]
    usable = [
        row
        for row in rows
        if row.get("state") == "done"
        and row.get("task")
        and not row.get("skill")
        and row.get("frequency") is not None
        and (not info.tasks or row["task"] in info.tasks)
    ]
    # Sub-grids that share a task may differ in their own overrides (context, budget): keep them apart.
    grids_of: dict[str, set] = defaultdict(set)
    for row in usable:
        grids_of[row["task"]].add(row.get("grid") or "")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in usable:
        facet = tuple((k, row.get(k)) for k in facet_keys)
        if len(grids_of[row["task"]]) > 1:
            facet = (("grid", row.get("grid") or "-"), *facet)
        groups[(row["task"], facet)].append(row)
    out = []
    for (task, facet), group in groups.items():
        params: dict[str, list[int]] = defaultdict(list)
        for r in group:
            if r.get("params") is not None:
                params[str(r["size"])].append(int(r["params"]))
        sizes = sorted({str(r["size"]) for r in group}, key=lambda s: (_mean(params.get(s, [])), s))
        freqs = sorted({float(r["frequency"]) for r in group})
        first = group[0]
        crit = (
            f"accuracy >= {first['threshold']:g}"
            if first.get("metric") == "acc"
            else f"loss/chance <= {first['threshold']:g}"
        )
        panel = Panel(
            task=task,
            facet=facet,
            sizes=sizes,
            params={s: int(_mean(v)) for s, v in params.items()},
            freqs=freqs,
            unit=str(first.get("unit") or "per_token"),
            criterion=crit,
        )
        by_point: dict[tuple[str, float], list[dict]] = defaultdict(list)
        for r in group:
            by_point[(str(r["size"]), float(r["frequency"]))].append(r)
        for point, rs in by_point.items():
            panel.acc[point] = _mean([r.get("final_acc") for r in rs])
            panel.loss_ratio[point] = _mean([r.get("final_loss_ratio") for r in rs])
            panel.learned_frac[point] = sum(bool(r.get("learned")) for r in rs) / len(rs)
            panel.seeds[point] = len(rs)
            panel.cells[point] = [r["cell"] for r in rs]
        out.append(panel)
    return sorted(out, key=lambda p: (p.task, str(p.facet)))


def _fmt_freq(f: float) -> str:
    return f"{f:.2g}" if f >= 1e-3 else f"{f:.1e}"


def _fmt_params(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _seeds_note(panel: Panel) -> str:
    counts = sorted(set(panel.seeds.values()))
    n = "/".join(str(c) for c in counts) or "0"
    return f"{n} seed(s) per point; learned = emerged ({panel.criterion}, confirmed) in >= half of the seeds"


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    cells = [header, *rows]
    widths = [max(len(c[j]) for c in cells) for j in range(len(header))]
    lines = []
    for k, c in enumerate(cells):
        lines.append(
            "  ".join(
                c[0].ljust(widths[0]) if j == 0 else c[j].rjust(widths[j]) for j in range(len(c))
            ).rstrip()
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def frontier_text(panel: Panel, markdown: bool = False) -> str:
    """The frontier of one panel: the accuracy grid (``*`` = learned) and both frontier views."""
    h = "### " if markdown else ""
    lines = [f"{h}{panel.title}: frequency ({panel.unit}) x size", "", _seeds_note(panel), ""]
    header = ["size", "params", *(_fmt_freq(f) for f in panel.freqs)]
    grid_rows = []
    for s in panel.sizes:
        cells = []
        for f in panel.freqs:
            a = panel.acc.get((s, f))
            cells.append(
                ""
                if a is None
                else ("-" if math.isnan(a) else f"{a:.2f}") + ("*" if panel.learned(s, f) else "")
            )
        grid_rows.append([s, _fmt_params(panel.params.get(s)), *cells])
    lines.append("final accuracy (mean over seeds; * = learned):")
    lines += _table(header, grid_rows, markdown)
    lines.append("")
    by_size = [
        [
            s,
            _fmt_params(panel.params.get(s)),
            _fmt_freq(f) if (f := panel.lowest_learned(s)) is not None else "none",
        ]
        for s in panel.sizes
    ]
    lines.append("lowest frequency learned at each size:")
    lines += _table(["size", "params", "lowest learned frequency"], by_size, markdown)
    lines.append("")
    by_freq = [[_fmt_freq(f), panel.smallest_learner(f) or "none"] for f in reversed(panel.freqs)]
    lines.append("smallest size that learns each frequency:")
    lines += _table(["frequency", "smallest size learning it"], by_freq, markdown)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_heatmap(panel: Panel, kind: str, path: Path) -> Path:
    """Size x frequency heatmap of final accuracy (``kind="acc"``) or loss / chance (``"loss"``)."""
    import numpy as np

    values = panel.acc if kind == "acc" else panel.loss_ratio
    grid = np.full((len(panel.sizes), len(panel.freqs)), np.nan)
    for i, s in enumerate(panel.sizes):
        for j, f in enumerate(panel.freqs):
            v = values.get((s, f))
            if v is not None:
                grid[i, j] = v
    fig = _figure(1.4 + 1.0 * len(panel.freqs), 1.3 + 0.55 * len(panel.sizes))
    ax = fig.add_subplot(1, 1, 1)
    if kind == "acc":
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        label, fmt = "final accuracy", "{:.2f}"
    else:
        finite = grid[np.isfinite(grid) & (grid > 0)]
        lo = float(finite.min()) if finite.size else 0.01
        hi = float(finite.max()) if finite.size else 1.0
        norm = LogNorm(vmin=min(lo, 0.9), vmax=max(hi, 1.1))  # keep chance (1.0) inside the scale
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="magma_r", norm=norm)
        label, fmt = "final loss / chance", "{:.2g}"
    for i, s in enumerate(panel.sizes):
        for j, f in enumerate(panel.freqs):
            v = grid[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.5")
                continue
            rgba = im.cmap(im.norm(v))
            light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
            ax.text(
                j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="black" if light else "white"
            )
            if panel.learned(s, f):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(panel.freqs)), [_fmt_freq(f) for f in panel.freqs], fontsize=8)
    ax.set_yticks(
        range(len(panel.sizes)), [f"{s}\n{_fmt_params(panel.params.get(s))}" for s in panel.sizes], fontsize=8
    )
    ax.set_xlabel(f"task frequency ({panel.unit})")
    ax.set_ylabel("model size")
    ax.set_title(f"{panel.title}: {label} (red box: learned)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.9)
    fig.savefig(path, dpi=DPI)
    return path


def plot_frontier(panel: Panel, path: Path) -> Path:
    """Learned (filled) and not-learned (open) points on log params x log frequency, with the frontier."""
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    xs_l, ys_l, xs_n, ys_n = [], [], [], []
    for s in panel.sizes:
        x = panel.params.get(s) or 0
        for f in panel.freqs:
            if (s, f) not in panel.acc:
                continue
            (xs_l if panel.learned(s, f) else xs_n).append(x)
            (ys_l if panel.learned(s, f) else ys_n).append(f)
    ax.scatter(xs_n, ys_n, facecolors="none", edgecolors="0.5", s=45, label="not learned")
    ax.scatter(xs_l, ys_l, color="C2", s=45, label="learned")
    fx = [panel.params.get(s) or 0 for s in panel.sizes if panel.lowest_learned(s) is not None]
    fy = [panel.lowest_learned(s) for s in panel.sizes if panel.lowest_learned(s) is not None]
    if fx:
        ax.plot(fx, fy, color="C3", lw=1.5, marker="_", ms=14, label="lowest frequency learned")
    if any(x > 0 for x in xs_l + xs_n):
        ax.set_xscale("log")
    ax.set_yscale("log")
    # Label the swept sizes and frequencies themselves: a log axis over a narrow range otherwise
    # shows crowded minor labels or none at all.
    ticks = {panel.params.get(s) or 0: s for s in panel.sizes}
    ax.set_xticks(list(ticks), [f"{s}\n{_fmt_params(x)}" for x, s in ticks.items()], fontsize=7)
    ax.set_yticks(panel.freqs, [_fmt_freq(f) for f in panel.freqs], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    if len(ticks) > 1:
        lo, hi = min(ticks), max(ticks)
        ax.set_xlim(lo / (hi / lo) ** 0.15, hi * (hi / lo) ** 0.15)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"task frequency ({panel.unit})")
    ax.set_title(f"{panel.title}: learned frontier", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=DPI)
    return path


def plot_curves(info: SweepInfo, panel: Panel, path: Path, threshold: float | None) -> Path:
    """Accuracy vs tokens: one panel per frequency, one colour per size, one line per seed."""
    from matplotlib import colormaps

    n = len(panel.freqs)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.2 * ncols, 2.6 * nrows)
    cmap = colormaps["viridis"]
    by_name = {c.name: c for c in info.cells}
    for j, f in enumerate(panel.freqs):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        plotted = False
        for k, s in enumerate(panel.sizes):
            color = cmap(0.85 * k / max(1, len(panel.sizes) - 1))
            for m, name in enumerate(panel.cells.get((s, f), [])):
                xs, ys = curves(info, by_name[name], panel.task)
                pts = [(x, y) for x, y in zip(xs, ys) if x > 0]
                if not pts:
                    continue
                ax.plot(*zip(*pts), color=color, lw=1.2, alpha=0.9, label=s if m == 0 else None)
                plotted = True
        if threshold is not None:
            ax.axhline(threshold, color="0.4", ls="--", lw=0.8)
        if plotted:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{panel.title} @ {_fmt_freq(f)}", fontsize=8)
        ax.set_xlabel("tokens", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if j == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------------------------- report


def _state_counts(rows: list[dict]) -> dict[str, int]:
    states: dict[str, str] = {}
    for r in rows:
        states[r["cell"]] = r["state"]
    counts: dict[str, int] = defaultdict(int)
    for s in states.values():
        counts[s] += 1
    return dict(counts)


def _threshold(rows: list[dict], task: str) -> float | None:
    for r in rows:
        if r.get("task") == task and r.get("metric") == "acc" and r.get("threshold") is not None:
            return float(r["threshold"])
    return None


def write_sweep_report(sweep_dir: str | Path, log: Callable[[str], None] | None = print) -> list[Path]:
    """Write the tidy table, the plots and ``report/summary.md``; print the frontier; return the files.

    ``log`` receives the terminal frontier tables (None: silent).
    """
    info, rows = collect(sweep_dir)
    written = write_table(info, rows)
    out = info.sweep_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    counts = _state_counts(rows)
    md = [
        f"# Sweep report: {info.name}",
        "",
        "Cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" (of {len(info.cells)}).",
        "Tidy table: `results.csv`" + (" and `results.parquet`." if len(written) > 1 else "."),
        "",
    ]
    failed = sorted({(r["cell"], r["error"]) for r in rows if r.get("state") == "failed"})
    if failed:
        md += ["Failed cells:", ""] + [f"- `{c}`: {e}" for c, e in failed] + [""]
    texts = []
    for panel in panels(info, rows):
        images = [
            plot_heatmap(panel, "acc", out / f"heatmap_acc_{panel.slug}.png"),
            plot_heatmap(panel, "loss", out / f"heatmap_loss_{panel.slug}.png"),
            plot_frontier(panel, out / f"frontier_{panel.slug}.png"),
            plot_curves(info, panel, out / f"curves_{panel.slug}.png", _threshold(rows, panel.task)),
        ]
        written += images
        texts.append(frontier_text(panel))
        md += [frontier_text(panel, markdown=True), ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    if not texts:
        md.append("No finished cells with task evaluations yet.")
    summary = out / "summary.md"
    summary.write_text("\n".join(md) + "\n")
    written.append(summary)
    if log is not None:
        for text in texts or ["(no finished cells with task evaluations yet)"]:
            log("\n" + text)
    return written


def heatmap_paths(sweep_dir: str | Path) -> list[Path]:
    """The accuracy heatmaps a report wrote (what the demo points at)."""
    return sorted((Path(sweep_dir) / REPORT_DIR).glob("heatmap_acc_*.png"))
