"""``smalllm report SWEEP``: the tidy table, size x frequency heatmaps, the learned frontier, curves.

For each task (and each combination of swept keys other than size, frequency and seeds, called a
*facet*), the finished cells are arranged on a grid of model size (rows, by parameter count) by the
task's frequency (columns); seeds are averaged (init seeds within a data seed first, then data seeds). A (size, frequency) point counts as *learned* when
the task emerged (the run's own criterion, see :mod:`smalllm.eval.emergence`) in at least half of its
seeds. The *frontier* is read off that grid: the lowest frequency learned at each size, and the
smallest size that learns each frequency.

Files (in ``SWEEP/report/``, ``<task>`` suffixed by the facet when there is one)::

    heatmap_acc_<task>.png    final choice accuracy, mean over data seeds with its 95% CI; learned
                              cells boxed; chance and one-position-rule baselines on the colour bar
    heatmap_loss_<task>.png   final answer loss / chance loss, annotated
    frontier_<task>.png       learned / not learned points and the frontier line, log-log
    crossing_<task>.png       f* against parameters with 95% CIs, log-log (both bases)
    curves_<task>.png         choice accuracy vs tokens, one panel per frequency, sizes overlaid,
                              threshold and baselines as lines
    task_vs_background_<task>.png  task (choice) loss against background eval loss along training
    summary.md                cell states, frontier tables, f* tables, the images

and, beside ``results.csv`` in the sweep directory, ``frontier.csv`` / ``frontier.json``: the f*
estimate of :mod:`smalllm.sweep.frontier` per task (facet), basis and size, and the exchange rates.
Runs older than the choice metrics fall back to their accuracy / loss, and every output names the
metric it used.

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

from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from smalllm.eval.config import ACCURACY_METRICS, higher_is_better
from smalllm.figures import new_figure, save_figure
from smalllm.run_record import (
    FRONTIER_CSV_FILE,
    FRONTIER_JSON_FILE,
    atomic_write_json,
    atomic_write_text,
    fits_json_file,
    frontier_csv_file,
    frontier_json_file,
    read_json,
)
from smalllm.sweep.aggregate import SweepInfo, collect, curves, write_table
from smalllm.sweep.arms import ARMS_FILE, write_arms_page
from smalllm.sweep.frontier import (
    LEARNED_THRESHOLD,
    ExchangeRate,
    SizeFrontier,
    bootstrap_mean_ci,
    estimate_frontier,
    nominal_coverage,
)
from smalllm.sweep.mechanisms import MECHANISMS_FILE, write_mechanisms_page

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
    runs: dict[tuple[str, float], dict[Any, list[dict]]] = field(default_factory=dict)
    """Rows of each point grouped by data seed (init seeds of one data seed side by side)."""
    choice_acc: dict[tuple[str, float], float] = field(default_factory=dict)
    """Mean over data seeds of the final choice accuracy (accuracy for runs without it)."""
    choice_ci: dict[tuple[str, float], tuple[float, float]] = field(default_factory=dict)
    """95% CI of :attr:`choice_acc`: percentile bootstrap over data seeds (never wider than their
    range; see :func:`~smalllm.sweep.frontier.nominal_coverage`), or the run's own CI for one seed."""
    acc_metric: str = "choice_acc"
    """What :attr:`choice_acc` holds: ``choice_acc``, ``acc``, or ``choice_acc, acc where missing``."""
    metric: str = "acc"
    """The criterion's metric (``value_metric`` of the rows may fall back, see :attr:`value_metric`)."""
    value_metric: str = "acc"
    threshold: float = math.nan
    baselines: dict[str, float] = field(default_factory=dict)
    """Mean over runs of ``chance_acc`` and ``rule_acc`` (only those the runs' baselines files give)."""

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
        metric = str(first.get("metric") or "acc")
        crit = f"{metric} {'>=' if higher_is_better(metric) else '<='} {first['threshold']:g}"
        panel = Panel(
            task=task,
            facet=facet,
            sizes=sizes,
            params={s: int(_mean(v)) for s, v in params.items()},
            freqs=freqs,
            unit=str(first.get("unit") or "per_token"),
            criterion=crit,
            metric=metric,
            value_metric=_metric_names(group, "value_metric", metric),
            threshold=float(first["threshold"]),
            acc_metric=_metric_names(group, None, "choice_acc"),
            baselines={
                k: m
                for k in ("chance_acc", "rule_acc")
                if math.isfinite(m := _mean([r.get(k) for r in group]))
            },
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
            by_seed: dict[Any, list[dict]] = defaultdict(list)
            for r in rs:
                by_seed[r.get("data_seed")].append(r)
            panel.runs[point] = dict(by_seed)
            panel.choice_acc[point], panel.choice_ci[point] = _seed_mean_ci(list(by_seed.values()))
        out.append(panel)
    return sorted(out, key=lambda p: (p.task, str(p.facet)))


def _choice_acc(row: dict) -> float | None:
    return row.get("final_choice_acc") if row.get("final_choice_acc") is not None else row.get("final_acc")


def _metric_names(rows: list[dict], column: str | None, metric: str) -> str:
    """The metric the rows' values were read from, saying so when older runs fell back to another."""
    if column is None:  # choice accuracy: present in the row, or accuracy instead
        used = {"choice_acc" if r.get("final_choice_acc") is not None else "acc" for r in rows}
    else:
        used = {str(r.get(column) or metric) for r in rows}
    if len(used) == 1:
        return used.pop()
    fallback = next(iter(used - {metric}), "")
    return f"{metric}, {fallback} where missing"


def _seed_mean_ci(seed_rows: list[list[dict]]) -> tuple[float, tuple[float, float]]:
    """Mean over data seeds (init seeds averaged first) of the choice accuracy, and its 95% CI.

    Two or more data seeds: the percentile bootstrap over data seeds (the spread that matters, and
    the same rule as f*'s interval). One: the run's own bootstrap CI over held-out instances when it
    has one, else no interval (NaN).
    """
    per_seed = [_mean([_choice_acc(r) for r in rs]) for rs in seed_rows]
    per_seed = [v for v in per_seed if math.isfinite(v)]
    if len(per_seed) >= 2:
        mean, lo, hi = bootstrap_mean_ci(per_seed)
        return mean, (lo, hi)
    if not per_seed:
        return math.nan, (math.nan, math.nan)
    rows = seed_rows[0]
    lo, hi = _mean([r.get("choice_acc_lo") for r in rows]), _mean([r.get("choice_acc_hi") for r in rows])
    return per_seed[0], (lo, hi)


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
    return f"{n} run(s) per point; learned = the criterion ({panel.criterion}) counted it learned in >= half of them"


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
    baselines = [
        f"{text} {panel.baselines[name]:.2f}"
        for name, text in (("chance_acc", "chance"), ("rule_acc", "best one-position rule"))
        if name in panel.baselines
    ]
    lines += [
        f"heatmap: final {panel.acc_metric}, mean over data seeds with its 95% CI"
        + (f"; baselines: {', '.join(baselines)}" if baselines else "; no baselines recorded"),
        "",
    ]
    header = ["size", "params", *(_fmt_freq(f) for f in panel.freqs)]
    grid_rows = []
    for s in panel.sizes:
        cells = []
        for f in panel.freqs:
            a = panel.choice_acc.get((s, f))
            cells.append(
                ""
                if a is None
                else ("-" if math.isnan(a) else f"{a:.2f}") + ("*" if panel.learned(s, f) else "")
            )
        grid_rows.append([s, _fmt_params(panel.params.get(s)), *cells])
    lines.append(f"final {panel.acc_metric} (mean over data seeds; * = learned):")
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
    return new_figure(width, height, DPI)


def plot_heatmap(panel: Panel, kind: str, path: Path) -> Path:
    """Size x frequency heatmap of final choice accuracy with its CI (``kind="acc"``) or loss / chance.

    The accuracy map shows the mean over data seeds (see :attr:`Panel.choice_acc`) and, under it, its
    95% CI; the chance and best one-position-rule baselines of the runs are marked on the colour bar.
    """
    import numpy as np

    values = panel.choice_acc if kind == "acc" else panel.loss_ratio
    grid = np.full((len(panel.sizes), len(panel.freqs)), np.nan)
    for i, s in enumerate(panel.sizes):
        for j, f in enumerate(panel.freqs):
            v = values.get((s, f))
            if v is not None:
                grid[i, j] = v
    fig = _figure(1.4 + 1.1 * len(panel.freqs), 1.5 + 0.6 * len(panel.sizes))
    ax = fig.add_subplot(1, 1, 1)
    if kind == "acc":
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        label, fmt = f"final {panel.acc_metric}, mean over data seeds [95% CI]", "{:.2f}"
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
            text = fmt.format(v)
            lo_ci, hi_ci = panel.choice_ci.get((s, f), (math.nan, math.nan))
            if kind == "acc" and math.isfinite(lo_ci) and math.isfinite(hi_ci):
                text += f"\n[{lo_ci:.2f}, {hi_ci:.2f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if light else "white")
            if panel.learned(s, f):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(panel.freqs)), [_fmt_freq(f) for f in panel.freqs], fontsize=8)
    ax.set_yticks(
        range(len(panel.sizes)), [f"{s}\n{_fmt_params(panel.params.get(s))}" for s in panel.sizes], fontsize=8
    )
    ax.set_xlabel(f"task frequency ({panel.unit})")
    ax.set_ylabel("model size")
    ax.set_title(f"{panel.title}: {label}\nred box: learned ({panel.criterion})", fontsize=8)
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    if kind == "acc":
        marks = []
        for name, (style, text) in BASELINE_STYLES.items():
            if name in panel.baselines:
                bar.ax.axhline(panel.baselines[name], color="red", ls=style, lw=1.5)
                marks.append(f"{text} {panel.baselines[name]:.2f} ({style})")
        if marks:
            ax.set_title(f"{ax.get_title()}; on the colour bar: {', '.join(marks)}", fontsize=7)
    return save_figure(fig, path)


BASELINE_STYLES = {"chance_acc": (":", "chance"), "rule_acc": ("-.", "1-pos rule")}
"""How the baselines of a run's baselines file are drawn: line style and label."""


def _draw_baselines(ax: Any, panel: Panel) -> None:
    for name, (style, text) in BASELINE_STYLES.items():
        if name in panel.baselines:
            ax.axhline(
                panel.baselines[name],
                color="C3",
                ls=style,
                lw=0.9,
                label=f"{text} {panel.baselines[name]:.2f}",
            )


def _label_sizes_and_frequencies(ax: Any, panel: Panel) -> dict[int, str]:
    """Tick the swept sizes (x, by parameters) and frequencies (y) themselves: a log axis over a
    narrow range otherwise shows crowded minor labels or none. Returns {parameters: size}."""
    ticks = {panel.params.get(s) or 0: s for s in panel.sizes}
    ax.set_xticks(list(ticks), [f"{s}\n{_fmt_params(x)}" for x, s in ticks.items()], fontsize=7)
    ax.set_yticks(panel.freqs, [_fmt_freq(f) for f in panel.freqs], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    return ticks


def _save_size_frequency_plot(ax: Any, path: Path, ylabel: str, title: str) -> Path:
    """Label, grid and save a plot of frequency against parameters (the frontier, f*)."""
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(ax.figure, path)


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
    ticks = _label_sizes_and_frequencies(ax, panel)
    if len(ticks) > 1:
        lo, hi = min(ticks), max(ticks)
        ax.set_xlim(lo / (hi / lo) ** 0.15, hi * (hi / lo) ** 0.15)
    return _save_size_frequency_plot(
        ax, path, f"task frequency ({panel.unit})", f"{panel.title}: learned frontier"
    )


def _accuracy_curve(info: SweepInfo, cell: Any, task: str) -> tuple[list[int], list[float], str]:
    """(tokens, values, metric) of the choice accuracy, or of the accuracy for runs without it."""
    for metric in ("choice_acc", "acc"):
        xs, ys = curves(info, cell, task, metric)
        if xs:
            return xs, ys, metric
    return [], [], "acc"


@dataclass
class _FrequencyAxes:
    """One subplot of a per-frequency figure and the runs it draws."""

    ax: Any
    frequency: float
    runs: list[tuple[Any, Any, str | None]]
    """(cell, colour, legend label): one viridis colour per size, the label on its first run only."""

    def finish(self, panel: Panel, xlabel: str, ylabel: str, legend_loc: str) -> None:
        ax = self.ax
        ax.set_title(f"{panel.title} @ {_fmt_freq(self.frequency)}", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if self.frequency == panel.freqs[0] and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc=legend_loc)


def _per_frequency_figure(info: SweepInfo, panel: Panel) -> tuple[Any, list[_FrequencyAxes]]:
    """A figure with one subplot per swept frequency, up to 4 a row."""
    from matplotlib import colormaps

    n = len(panel.freqs)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.2 * ncols, 2.6 * nrows)
    cmap = colormaps["viridis"]
    by_name = {c.name: c for c in info.cells}
    subplots = []
    for j, f in enumerate(panel.freqs):
        runs = []
        for k, s in enumerate(panel.sizes):
            color = cmap(0.85 * k / max(1, len(panel.sizes) - 1))
            for m, name in enumerate(panel.cells.get((s, f), [])):
                runs.append((by_name[name], color, s if m == 0 else None))
        subplots.append(_FrequencyAxes(fig.add_subplot(nrows, ncols, j + 1), f, runs))
    return fig, subplots


def plot_curves(info: SweepInfo, panel: Panel, path: Path, threshold: float | None) -> Path:
    """Choice accuracy vs tokens: one panel per frequency, one colour per size, one line per seed.

    Runs without choice metrics draw their accuracy (the y label says which); the criterion's
    threshold (when it is an accuracy) and the runs' baselines are drawn as horizontal lines.
    """
    fig, subplots = _per_frequency_figure(info, panel)
    for sub in subplots:
        ax, plotted, used = sub.ax, False, set()
        for cell, color, label in sub.runs:
            xs, ys, metric = _accuracy_curve(info, cell, panel.task)
            pts = [(x, y) for x, y in zip(xs, ys) if x > 0]
            if not pts:
                continue
            used.add(metric)
            ax.plot(*zip(*pts), color=color, lw=1.2, alpha=0.9, label=label)
            plotted = True
        if threshold is not None:
            ax.axhline(threshold, color="0.4", ls="--", lw=0.8, label=f"threshold {threshold:g}")
        _draw_baselines(ax, panel)
        if plotted:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.03, 1.03)
        sub.finish(panel, "tokens", " / ".join(sorted(used, reverse=True)) or "accuracy", "upper left")
    return save_figure(fig, path)


def _paired_curve(info: SweepInfo, cell: Any, task: str, metric: str) -> list[tuple[float, float]]:
    """(background eval loss, task ``metric``) at each evaluation that has both."""
    bx, by = curves(info, cell, "background", "loss")
    background = dict(zip(bx, by))
    xs, ys = curves(info, cell, task, metric)
    return [(background[x], y) for x, y in zip(xs, ys) if x in background]


def plot_task_vs_background(info: SweepInfo, panel: Panel, path: Path) -> Path:
    """Task loss against background eval loss along training (Huang et al. App. F.1).

    One panel per frequency, one colour per size, one line per run, each running from its first
    evaluation (right: high background loss) to its last (left). A size whose task loss flattens
    while its background loss still falls has plateaued on the task.
    """
    fig, subplots = _per_frequency_figure(info, panel)
    # One metric for the whole figure, so that every line is on one scale: the choice loss when every
    # run has it, else the loss over the full vocabulary.
    cells = [cell for sub in subplots for cell, _, _ in sub.runs]
    metric = "choice_loss" if all(curves(info, c, panel.task, "choice_loss")[0] for c in cells) else "loss"
    for sub in subplots:
        for cell, color, label in sub.runs:
            pts = _paired_curve(info, cell, panel.task, metric)
            if pts:
                sub.ax.plot(*zip(*pts), color=color, lw=1.2, marker=".", ms=3, alpha=0.9, label=label)
        sub.ax.invert_xaxis()  # training runs left to right
        sub.finish(panel, "background eval loss", f"task {metric}", "upper right")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- f* estimate

BASES = ("final", "learned")
"""What f* is read from: the final value of the criterion metric, or the fraction of runs that learned."""


@dataclass
class PanelFrontier:
    """The frontier estimate of one panel under one basis (see :mod:`smalllm.sweep.frontier`)."""

    panel: Panel
    basis: str
    criterion: str
    """The rule a frequency must meet, as text (metric, comparison, threshold)."""
    data_seeds: list[Any]
    sizes: list[SizeFrontier]
    rates: list[ExchangeRate]

    def bracket_cells(self, front: SizeFrontier) -> list[str]:
        """The cells at the two swept frequencies bracketing ``front``'s f* (or at the bound)."""
        if front.crossing.bracket is None:
            return []
        freqs = dict.fromkeys(front.crossing.bracket)
        return [c for f in freqs for c in self.panel.cells.get((front.size, f), [])]


def panel_frontier(panel: Panel, basis: str = "final") -> PanelFrontier:
    """Estimate f* per size of ``panel``: the per-run value of ``basis``, averaged per data seed."""
    import numpy as np

    seeds = sorted({seed for runs in panel.runs.values() for seed in runs}, key=str)
    values = np.full((len(panel.sizes), len(panel.freqs), len(seeds)), np.nan)
    for (size, freq), by_seed in panel.runs.items():
        for seed, rs in by_seed.items():
            if basis == "final":
                v = _mean([r.get("final_value") for r in rs])
            else:
                v = _mean([float(bool(r.get("learned"))) for r in rs])
            values[panel.sizes.index(size), panel.freqs.index(freq), seeds.index(seed)] = v
    if basis == "final":
        threshold, higher = panel.threshold, higher_is_better(panel.metric)
        criterion = f"final {panel.value_metric} {'>=' if higher else '<='} {threshold:g}"
    else:
        threshold, higher = LEARNED_THRESHOLD, True
        criterion = f"learned ({panel.criterion}) in >= {LEARNED_THRESHOLD:g} of the runs"
    sizes, rates = estimate_frontier(
        panel.sizes, [panel.params.get(s) for s in panel.sizes], panel.freqs, values, threshold, higher
    )
    return PanelFrontier(panel, basis, criterion, seeds, sizes, rates)


def _bracket_text(front: SizeFrontier) -> str:
    """The swept frequencies whose cells bound f* (their names are in ``frontier.json``)."""
    c = front.crossing
    if c.bracket is None:
        return "-"
    if c.value is None:
        return f"{'highest' if c.bound == 'above' else 'lowest'} swept, {_fmt_freq(c.bracket[0])}"
    return f"{_fmt_freq(c.bracket[0])} and {_fmt_freq(c.bracket[1])}"


def _ci_text(front: SizeFrontier) -> str:
    return f"[{front.ci_lo_text}, {front.ci_hi_text}]"


def _rate_ci_text(rate: ExchangeRate) -> str:
    if rate.ci_lo_text == "n/a" or rate.ci_hi_text == "n/a":
        return "n/a"
    return f"[{rate.ci_lo_text}, {rate.ci_hi_text}]"


def estimate_text(est: PanelFrontier, markdown: bool = False) -> str:
    """f* per size with CIs and bounding cells, then the exchange rates, as a table."""
    h = "### " if markdown else ""
    p = est.panel
    lines = [
        f"{h}{p.title}: crossing frequency f* ({p.unit}), basis {est.basis}",
        "",
        f"criterion: {est.criterion}; mean over {len(est.data_seeds)} data seed(s) "
        f"({', '.join(map(str, est.data_seeds))}), log-linear interpolation between the highest frequency "
        "that misses it and the next; "
        + (
            "95% CI: percentile bootstrap over data seeds "
            f"({est.sizes[0].resamples if est.sizes else 0} resamples), which cannot reach past the seeds' "
            f"own range: with {len(est.data_seeds)} seeds it covers at most "
            f"{nominal_coverage(len(est.data_seeds)):.0%} of the time, so read it with the per-seed f*"
            if len(est.data_seeds) > 1
            else "one data seed, so no interval: the task table's own variation is not measured"
        ),
        "",
    ]
    rows = [
        [
            f.size,
            _fmt_params(f.params),
            f.crossing.text(),
            _ci_text(f),
            ", ".join(f.per_seed),
            _bracket_text(f),
            str(f.no_crossing),
        ]
        for f in est.sizes
    ]
    header = [
        "size",
        "params",
        "f*",
        "95% CI",
        "f* per data seed",
        "bounding cells (frequencies)",
        "resamples without crossing",
    ]
    lines += _table(header, rows, markdown)
    if est.rates:
        lines += [
            "",
            "upweighting exchange rate f*(smaller) / f*(larger) (paired on the resampled data seeds):",
        ]
        lines += _table(
            ["smaller", "larger", "rate", "95% CI", "resamples unbounded", "resamples undefined"],
            [
                [r.smaller, r.larger, r.text, _rate_ci_text(r), str(r.unbounded), str(r.undefined)]
                for r in est.rates
            ],
            markdown,
        )
    return "\n".join(lines)


FRONTIER_COLUMNS = [
    "task",
    "facet",
    "basis",
    "criterion",
    "data_seeds",
    "size",
    "params",
    "f_star",
    "f_star_text",
    "bound",
    "bracket_lo",
    "bracket_hi",
    "bracket_cells",
    "ci_lo",
    "ci_hi",
    "ci_lo_text",
    "ci_hi_text",
    "resamples",
    "resamples_no_crossing",
    "exchange_with",
    "exchange_rate",
    "exchange_text",
    "exchange_ci_lo",
    "exchange_ci_hi",
    "exchange_ci_lo_text",
    "exchange_ci_hi_text",
    "exchange_resamples",
    "exchange_resamples_unbounded",
    "exchange_resamples_undefined",
]


def _size_record(est: PanelFrontier, front: SizeFrontier) -> dict:
    bracket = front.crossing.bracket or (None, None)
    return {
        "size": front.size,
        "params": front.params,
        "f_star": front.crossing.value,
        "f_star_text": front.crossing.text(),
        "bound": front.crossing.bound,
        "bracket_lo": bracket[0],
        "bracket_hi": bracket[1],
        "bracket_cells": est.bracket_cells(front),
        "ci_lo": front.ci_lo,
        "ci_hi": front.ci_hi,
        "ci_lo_text": front.ci_lo_text,
        "ci_hi_text": front.ci_hi_text,
        "resamples": front.resamples,
        "resamples_no_crossing": front.no_crossing,
        "per_seed": front.per_seed,
        "means": [None if not math.isfinite(m) else m for m in front.means],
    }


def _rate_record(rate: ExchangeRate) -> dict:
    return {
        "smaller": rate.smaller,
        "larger": rate.larger,
        "rate": rate.value,
        "text": rate.text,
        "ci_lo": rate.ci_lo,
        "ci_hi": rate.ci_hi,
        "ci_lo_text": rate.ci_lo_text,
        "ci_hi_text": rate.ci_hi_text,
        "resamples": rate.resamples,
        "resamples_unbounded": rate.unbounded,
        "resamples_undefined": rate.undefined,
    }


def frontier_json(estimates: list[PanelFrontier]) -> dict:
    """What ``frontier.json`` holds: per panel and basis, f* per size and the exchange rates."""
    return {
        "version": 1,
        "definition": "see smalllm.sweep.frontier: f* = log-linear interpolation between the highest swept "
        "frequency whose mean over data seeds misses the criterion and the next; bounds outside the range; "
        "95% percentile CI from resampling data seeds",
        "panels": [
            {
                "task": e.panel.task,
                "facet": dict(e.panel.facet),
                "basis": e.basis,
                "criterion": e.criterion,
                "unit": e.panel.unit,
                "freqs": e.panel.freqs,
                "data_seeds": e.data_seeds,
                "sizes": [_size_record(e, f) for f in e.sizes],
                "exchange": [_rate_record(r) for r in e.rates],
            }
            for e in estimates
        ],
    }


def write_frontier_files(sweep_dir: Path, estimates: list[PanelFrontier]) -> list[Path]:
    """Write ``frontier.csv`` (one row per panel, basis and size) and ``frontier.json``."""
    import csv
    import io

    json_path = frontier_json_file(sweep_dir)
    atomic_write_json(json_path, frontier_json(estimates))
    csv_path = frontier_csv_file(sweep_dir)
    fh = io.StringIO(newline="")
    writer = csv.DictWriter(fh, fieldnames=FRONTIER_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for e in estimates:
        rates = {r.smaller: r for r in e.rates}
        panel_columns = {
            "task": e.panel.task,
            "facet": ";".join(f"{k}={v}" for k, v in e.panel.facet),
            "basis": e.basis,
            "criterion": e.criterion,
            "data_seeds": " ".join(map(str, e.data_seeds)),
        }
        for front in e.sizes:
            rec = {**_size_record(e, front), **panel_columns, "resamples_no_crossing": front.no_crossing}
            rec["bracket_cells"] = " ".join(rec["bracket_cells"])
            rate = rates.get(front.size)
            if rate is not None:  # frontier.json's rate record, under an ``exchange_`` prefix
                rec.update({f"exchange_{k}": v for k, v in _rate_record(rate).items()})
                rec["exchange_with"] = rate.larger
            writer.writerow({k: "" if rec.get(k) is None else rec[k] for k in FRONTIER_COLUMNS})
    atomic_write_text(csv_path, fh.getvalue())
    return [csv_path, json_path]


def plot_crossing(estimates: list[PanelFrontier], path: Path) -> Path:
    """f* against parameters (log-log) with 95% CI bars, one series per basis; bounds as arrows.

    A size whose crossing lies outside the swept range is drawn as a triangle at the range's edge,
    pointing the way the bound goes (up: f* > f_max, down: f* <= f_min).
    """
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    panel = estimates[0].panel
    for k, est in enumerate(estimates):
        color = f"C{k}"
        xs, ys, lo, hi = [], [], [], []
        for front in est.sizes:
            x = (front.params or 0) * (1.0 + 0.04 * k)  # a small shift keeps the bases apart
            if front.crossing.value is not None:
                y = front.crossing.value
                xs.append(x)
                ys.append(y)
                lo.append(y - (front.ci_lo if front.ci_lo is not None else min(panel.freqs)))
                hi.append((front.ci_hi if front.ci_hi is not None else max(panel.freqs)) - y)
            elif front.crossing.bound is not None and front.crossing.bracket is not None:
                up = front.crossing.bound == "above"
                edge = front.crossing.bracket[1] if up else front.crossing.bracket[0]
                ax.scatter([x], [edge], marker="^" if up else "v", color=color, s=50)
        if xs:
            ax.errorbar(
                xs, ys, yerr=[lo, hi], color=color, marker="o", capsize=3, lw=1.2, label=est.criterion
            )
        else:
            ax.plot([], [], color=color, marker="o", label=est.criterion)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _label_sizes_and_frequencies(ax, panel)
    ax.set_ylim(min(panel.freqs) / 1.3, max(panel.freqs) * 1.3)
    title = f"{panel.title}: f* with 95% CI over data seeds"
    return _save_size_frequency_plot(ax, path, f"crossing frequency f* ({panel.unit})", title)


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
    """The criterion's threshold when it is an accuracy (the curves plot accuracies)."""
    for r in rows:
        if r.get("task") == task and r.get("metric") in ACCURACY_METRICS and r.get("threshold") is not None:
            return float(r["threshold"])
    return None


def _fits_section(sweep_dir: Path) -> list[str]:
    """The scaling-fit table, when ``smalllm fit`` has written ``fits.json`` into the sweep directory."""
    path = fits_json_file(sweep_dir)
    if not path.is_file():
        return []
    from smalllm.sweep.fits import fits_markdown

    try:
        table = fits_markdown(read_json(path))
    except (KeyError, TypeError):
        return ["", "## Scaling fits", "", f"`{path.name}` is not one `smalllm fit` wrote; rerun it.", ""]
    return ["", "## Scaling fits", "", f"From `{path.name}` (`smalllm fit`):", "", table, ""]


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
    estimates: list[PanelFrontier] = []
    for panel in panels(info, rows):
        ests = [panel_frontier(panel, basis) for basis in BASES]
        estimates += ests
        images = [
            plot_heatmap(panel, "acc", out / f"heatmap_acc_{panel.slug}.png"),
            plot_heatmap(panel, "loss", out / f"heatmap_loss_{panel.slug}.png"),
            plot_frontier(panel, out / f"frontier_{panel.slug}.png"),
            plot_crossing(ests, out / f"crossing_{panel.slug}.png"),
            plot_curves(info, panel, out / f"curves_{panel.slug}.png", _threshold(rows, panel.task)),
            plot_task_vs_background(info, panel, out / f"task_vs_background_{panel.slug}.png"),
        ]
        written += images
        estimate_texts = [estimate_text(e) for e in ests]
        texts.append("\n\n".join([frontier_text(panel), *estimate_texts]))
        md += [frontier_text(panel, markdown=True), ""]
        md += [x for e in ests for x in (estimate_text(e, markdown=True), "")]
        md += [f"![{p.stem}]({p.name})" for p in images] + [""]
    if estimates:
        written += write_frontier_files(info.sweep_dir, estimates)
        md.insert(4, f"Crossing frequencies: `{FRONTIER_CSV_FILE}` and `{FRONTIER_JSON_FILE}`.")
    if not texts:
        md.append("No finished cells with task evaluations yet.")
    md += _fits_section(info.sweep_dir)
    mechanisms = write_mechanisms_page(info, out)
    if mechanisms:
        written += mechanisms
        md += ["", f"Interference, retention and probes: [{MECHANISMS_FILE}]({MECHANISMS_FILE})."]
    arms = write_arms_page(info, out)
    if arms:
        written += arms
        md += ["", f"Named grids compared per sub-skill, paired on the seed: [{ARMS_FILE}]({ARMS_FILE})."]
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
