"""The mechanisms page of a sweep: interference, gap retention and probes, per model size and gap.

Huang et al. (2026, Sec. 4) explain *why* small models lose rare tasks with three measurements made
in the language-model runs themselves; a sweep whose cells recorded any of them gets this page in its
report (``report/mechanisms.md``):

* **Interference** (``interference.enabled``): cos(g_nt, g_r), the cosine between the gradient of the
  batch's non-task tokens and the task's reference gradient, per module set. The paper: negative in
  small models, near zero in large ones. Reported as the mean ± sd over a cell's measurements, then
  over data seeds.
* **Retention** (``eval.around_injections`` under a ``gap`` schedule): the final task loss against the
  gap N (Fig. 6b: larger gaps hurt, and hurt small models more), with each cycle's gain at injection
  and decay until the next (:mod:`smalllm.eval.retention`).
* **Probes** (``smalllm probe SWEEP_DIR`` after the sweep): R² of the T_CMP value from each layer's
  residual at the last probed checkpoint, against its shuffled-value control.

Every number is a mean over the data seeds present (each its own task table, pool split, placement
and, with ``init: data``, initialisation), with a 95% percentile bootstrap interval over those seeds
where there are two or more: the seed axis that decides a cell, as in the frontier report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smalllm.eval.retention import retention_cycles, summarize_cycles
from smalllm.labels import Label
from smalllm.run_record import read_json
from smalllm.sweep import records
from smalllm.sweep.aggregate import SweepInfo, cell_run_config, get_key
from smalllm.sweep.frontier import bootstrap_mean_ci, seed_mean_text

MECHANISMS_FILE = "mechanisms.md"
COSINES = ("cos_nt", "cos_t", "cos")


@dataclass
class CellMechanisms:
    """What one cell recorded of the three measurements."""

    cell: str
    size: str
    params: int | None
    gap: int
    data_seed: int
    task: str
    measured_task: str | None = None
    """The task interference was measured on (None: not measured)."""
    final_loss: float = math.nan
    final_choice_acc: float = math.nan
    before_last: float = math.nan
    """Task loss just before the last bracketed injection (NaN without brackets)."""
    interference: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Module set -> cosine name -> its values over the cell's measurements."""
    retention: dict = field(default_factory=dict)
    """:func:`~smalllm.eval.retention.summarize_cycles` of the cell's bracketed cycles."""
    probe_r2: list[float] = field(default_factory=list)
    """R² per layer (embeddings first) at the last probed checkpoint."""
    probe_control: list[float] = field(default_factory=list)
    probe_step: int | None = None


def _tasks_of(cfg) -> tuple[str | None, str | None]:
    """(the task retention and probes are read for, the task interference was measured on): the
    bracketed task (else the measured one, else T_CMP), and the measured one (``interference.task``,
    else the first task, as the callback takes it)."""
    names = [t.name for t in cfg.data.tasks]
    measured = cfg.interference.task_of(names) if cfg.interference.enabled else None
    main = cfg.eval.around_injections or measured or ("t_cmp" if "t_cmp" in names else None)
    return main, measured


def cell_mechanisms(info: SweepInfo, cell) -> CellMechanisms | None:
    """The cell's measurements; None when it has no run or recorded none of them."""
    cfg = cell_run_config(info, cell)
    run = records.cell_run(info.sweep_dir, cell.name)
    if cfg is None or not run.metrics_file.is_file():
        return None
    task, measured = _tasks_of(cfg)
    if task is None:
        return None
    index = [t.name for t in cfg.data.tasks].index(task)
    schedule = cfg.data.tasks[index].schedule
    summary = run.read_summary()
    out = CellMechanisms(
        cell=cell.name,
        size=str(get_key(cfg, info.size_key)),
        params=summary.get("non_embedding_params"),
        gap=schedule.gap_batches if schedule.kind == "gap" else 1,
        data_seed=cfg.data.seed,
        task=task,
        measured_task=measured,
    )
    metrics = run.read_metrics()
    evals = [r for r in metrics if r.get("kind") == "eval"]
    label = Label(task)
    for rec in evals[::-1]:
        if label.key("loss") in rec:
            out.final_loss = float(rec[label.key("loss")])
            out.final_choice_acc = float(rec.get(label.key("choice_acc"), math.nan))
            break
    prefix = f"interference/{measured}/"
    for rec in metrics:
        # Step 0 measures the initialisation, not training: left out of the means.
        if rec.get("kind") != "interference" or not rec.get("step"):
            continue
        for key, value in rec.items():
            if not key.startswith(prefix) or value is None:
                continue
            module_set, _, name = key[len(prefix) :].rpartition("/")
            if name in COSINES:
                out.interference.setdefault(module_set, defaultdict(list))[name].append(float(value))
    injections = summary.get("injections")
    if injections and injections.get("task") == task:
        brackets = [tuple(b) for b in injections["brackets"]]
        cycles = retention_cycles(evals, task, brackets)
        out.retention = summarize_cycles(cycles)
        # The final step sits at a different point of the last cycle for each gap; the loss just
        # before the last bracketed injection is the decayed state at a comparable point.
        out.before_last = cycles[-1]["before"] if cycles else math.nan
    if run.probes_file.is_file():
        steps = read_json(run.probes_file).get("tasks", {}).get(task, {}).get("steps", [])
        if steps and all("r2" in layer for layer in steps[-1]["layers"]):
            last = steps[-1]
            out.probe_step = last["step"]
            out.probe_r2 = [_num(layer["r2"]) for layer in last["layers"]]
            out.probe_control = [_num(layer["r2_control"]) for layer in last["layers"]]
    if not (out.interference or out.retention or out.probe_r2):
        return None
    return out


def _num(value) -> float:
    return math.nan if value is None else float(value)


def collect_mechanisms(info: SweepInfo) -> list[CellMechanisms]:
    cells = [
        cell_mechanisms(info, cell)
        for cell in info.cells
        if records.cell_dir(info.sweep_dir, cell.name).is_dir()
    ]
    return [c for c in cells if c is not None]


def _groups(cells: list[CellMechanisms]) -> dict[tuple[str, int], list[CellMechanisms]]:
    """Cells by (size, gap), sizes in parameter order."""
    out: dict[tuple[str, int], list[CellMechanisms]] = defaultdict(list)
    for c in sorted(cells, key=lambda c: (c.params or 0, c.size, c.gap, c.data_seed)):
        out[(c.size, c.gap)].append(c)
    return out


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):+.3f} ± {np.std(values):.3f}"


def interference_rows(cells: list[CellMechanisms]) -> list[dict]:
    """Per (size, gap, module set): cos(g_nt, g_r) etc. as mean ± sd over all measurements of all
    seeds, and the mean over seeds of each seed's mean (with its interval)."""
    rows = []
    for (size, gap), group in _groups(cells).items():
        sets = dict.fromkeys(s for c in group for s in c.interference)
        for module_set in sets:
            row = {"size": size, "gap": gap, "set": module_set, "seeds": 0, "measurements": 0}
            for name in COSINES:
                per_seed = [c.interference.get(module_set, {}).get(name, []) for c in group]
                pooled = [v for vs in per_seed for v in vs]
                row[name] = pooled
                row[f"{name}_seed_means"] = [float(np.mean(vs)) for vs in per_seed if vs]
            row["seeds"] = len(row["cos_nt_seed_means"])
            row["measurements"] = len(row["cos_nt"])
            rows.append(row)
    return rows


def markdown(cells: list[CellMechanisms], images: list[Path]) -> str:
    """The page: one table per measurement, then the figures."""
    lines = ["# Mechanisms", "", __doc__.split("\n\n")[0].replace("\n", " "), ""]
    seeds = sorted({c.data_seed for c in cells})
    lines += [
        f"Data seeds: {', '.join(map(str, seeds))} (table, pool split, placement; see the sweep's seeds).",
        "",
    ]
    rows = interference_rows(cells)
    if rows:
        lines += [
            "## Interference",
            "",
            "cos(g_nt, g_r) < 0: the rest of the batch pushes against the task. Mean ± sd over every "
            "measurement after step 0 (the initialisation) of every seed; 'over seeds' is the mean of the "
            "per-seed means with its 95% bootstrap interval.",
            "",
            "| size | gap | module set | seeds | measurements | cos(g_nt, g_r) | over seeds | "
            "cos(g_t, g_r) | cos(g, g_r) |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['size']} | {r['gap']} | {r['set']} | {r['seeds']} | {r['measurements']} | "
                f"{_mean_sd(r['cos_nt'])} | {seed_mean_text(r['cos_nt_seed_means'])} | "
                f"{_mean_sd(r['cos_t'])} | {_mean_sd(r['cos'])} |"
            )
        lines.append("")
    groups = _groups(cells)
    if any(c.retention for c in cells) or any(math.isfinite(c.final_loss) for c in cells):
        lines += [
            "## Retention against the gap",
            "",
            "Final task loss (nats per answer token) and choice accuracy over data seeds; gain = loss drop "
            "at an injection, decay = loss regained before the next (means over the bracketed cycles, then "
            "over seeds).",
            "",
            "| size | gap N | seeds | final task loss | loss before the last injection | final choice acc | "
            "gain per injection | decay per gap |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (size, gap), group in groups.items():
            lines.append(
                f"| {size} | {gap} | {len(group)} | {seed_mean_text([c.final_loss for c in group])} | "
                f"{seed_mean_text([c.before_last for c in group])} | "
                f"{seed_mean_text([c.final_choice_acc for c in group])} | "
                f"{seed_mean_text([c.retention.get('mean_gain', math.nan) for c in group])} | "
                f"{seed_mean_text([c.retention.get('mean_decay', math.nan) for c in group])} |"
            )
        lines.append("")
    probed = [c for c in cells if c.probe_r2]
    if probed:
        depth = max(len(c.probe_r2) for c in probed)
        lines += [
            "## Probes",
            "",
            "R² of val(TOK) from each layer's residual at the operand positions (layer 0 = embeddings), "
            "at the last probed checkpoint; folds split table tokens. Control: the same probe on values "
            "dealt to the tokens at random (its mean over layers).",
            "",
            "| size | gap | seeds | " + " | ".join(f"layer {i}" for i in range(depth)) + " | control |",
            "|---|---:|---:|" + "---:|" * (depth + 1),
        ]
        for (size, gap), group in groups.items():
            have = [c for c in group if c.probe_r2]
            if not have:
                continue
            cols = [
                seed_mean_text([c.probe_r2[i] for c in have if i < len(c.probe_r2)]) for i in range(depth)
            ]
            control = seed_mean_text([float(np.nanmean(c.probe_control)) for c in have])
            lines.append(f"| {size} | {gap} | {len(have)} | " + " | ".join(cols) + f" | {control} |")
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def plot_mechanisms(cells: list[CellMechanisms], out_dir: Path) -> list[Path]:
    """Final task loss against the gap per size (Fig. 6b), cos(g_nt, g_r) per size and gap, and probe
    R² by layer per size and gap (mean over seeds)."""
    from smalllm.figures import new_figure, save_figure

    written = []
    by_size: dict[str, dict[int, list[CellMechanisms]]] = defaultdict(dict)
    for (size, gap), group in _groups(cells).items():
        by_size[size][gap] = group
    panels = [
        ("retention_gap", "gap N (batches)", "final task loss", lambda c: c.final_loss),
        (
            "interference_gap",
            "gap N (batches)",
            "cos(g_nt, g_r), all parameters",
            lambda c: (
                float(np.mean(c.interference["all"]["cos_nt"]))
                if c.interference.get("all", {}).get("cos_nt")
                else math.nan
            ),
        ),
    ]
    for stem, xlabel, ylabel, value in panels:
        fig = new_figure(5, 3.6, dpi=120)
        ax = fig.add_subplot(1, 1, 1)
        drawn = False
        for size, gaps in by_size.items():
            xs, means, los, his = [], [], [], []
            for gap in sorted(gaps):
                vals = [v for v in (value(c) for c in gaps[gap]) if math.isfinite(v)]
                if vals:
                    mean, lo, hi = bootstrap_mean_ci(vals)
                    xs.append(gap), means.append(mean), los.append(mean - lo), his.append(hi - mean)
            if xs:
                ax.errorbar(xs, means, yerr=[los, his], marker="o", capsize=3, label=size)
                drawn = True
        if not drawn:
            continue
        if len({g for gaps in by_size.values() for g in gaps}) > 2:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.legend(fontsize=8), ax.grid(alpha=0.3)
        written.append(save_figure(fig, out_dir / f"mechanisms_{stem}.png"))
    probed = [c for c in cells if c.probe_r2]
    if probed:
        fig = new_figure(5.4, 3.8, dpi=120)
        ax = fig.add_subplot(1, 1, 1)
        sizes = list(dict.fromkeys(c.size for c in sorted(probed, key=lambda c: c.params or 0)))
        gaps = sorted({c.gap for c in probed})
        styles = ["-", "--", ":", "-."]
        for (size, gap), group in _groups(probed).items():
            depth = max(len(c.probe_r2) for c in group)
            mean = [np.nanmean([c.probe_r2[i] for c in group if i < len(c.probe_r2)]) for i in range(depth)]
            ax.plot(
                range(depth),
                mean,
                marker="o",
                linestyle=styles[gaps.index(gap) % len(styles)],
                color=f"C{sizes.index(size)}",
                label=f"{size}, gap {gap} ({len(group)} runs)",
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("layer (0 = embeddings)"), ax.set_ylabel("probe R² of val(TOK)")
        ax.legend(fontsize=8), ax.grid(alpha=0.3)
        written.append(save_figure(fig, out_dir / "mechanisms_probe_r2.png"))
    return written


def write_mechanisms_page(info: SweepInfo, out_dir: Path) -> list[Path]:
    """``report/mechanisms.md`` and its figures when any cell recorded a measurement; else nothing."""
    cells = collect_mechanisms(info)
    if not cells:
        return []
    images = plot_mechanisms(cells, out_dir)
    page = out_dir / MECHANISMS_FILE
    page.write_text(markdown(cells, images))
    return [*images, page]
