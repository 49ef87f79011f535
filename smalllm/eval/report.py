"""``smalllm report RUN``: learning-curve plots and an emergence summary from a run's metrics file.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly rather
than through ``pyplot``: no global backend switch, no figure registry to leak, safe in a headless
training process or a notebook alike.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from smalllm.errors import SmalllmError
from smalllm.eval.baselines import best_baseline_acc, read_baselines
from smalllm.eval.config import EvalConfig, higher_is_better
from smalllm.eval.emergence import (
    TABLE_COLUMNS,
    TEXT_COLUMNS,
    describe_criterion,
    emergence_table,
    eval_labels,
    eval_records,
    human_count,
    load_eval_config,
    table_cells,
)
from smalllm.figures import new_figure, save_figure
from smalllm.labels import BACKGROUND, TRAIN, Label
from smalllm.run_record import REPORT_SUMMARY_FILE, RunDir, read_jsonl

DPI = 100


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of the run's metrics file (or of that file itself, given its path), in file order.

    Lines that are not JSON objects are skipped: the last line of a run that was killed mid-write is
    usually truncated, and one bad line should not hide the rest of the run.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = RunDir(path).metrics_file
    if not path.is_file():
        raise SmalllmError(f"{path}: metrics file not found (is this a run directory?)")
    return read_jsonl(path)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "task"


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(tokens, values) of ``key``, dropping points a log-token axis cannot show (tokens <= 0) and NaNs."""
    xs, ys = [], []
    for rec in records:
        v, t = rec.get(key), rec.get("tokens")
        if v is None or t is None or t <= 0 or not math.isfinite(float(v)):
            continue
        xs.append(int(t))
        ys.append(float(v))
    return xs, ys


def _at_step(records: list[dict], step: int, key: str) -> float | None:
    for rec in records:
        if rec.get("step") == step and rec.get(key) is not None:
            return float(rec[key])
    return None


def _chance(records: list[dict], label: Label) -> float | None:
    """Chance loss recovered from any record with both loss and a positive loss ratio."""
    for rec in records:
        loss, ratio = rec.get(label.key("loss")), rec.get(label.key("loss_ratio"))
        if loss is not None and ratio and math.isfinite(loss) and math.isfinite(ratio):
            return float(loss) / float(ratio)
    return None


def _new_figure(ncols: int) -> tuple[Figure, list[Any]]:
    fig = new_figure(5 * ncols, 3.6, DPI)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _finish_axis(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # Log tokens only when there is something to put on it: an all-empty axis cannot be log-scaled.
    if any(len(line.get_xdata()) for line in ax.get_lines()):
        ax.set_xscale("log")
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def plot_task(
    task: str,
    evals: list[dict],
    trains: list[dict],
    rows: list[dict],
    cfg: EvalConfig,
    path: Path,
    baselines: dict | None = None,
) -> Path:
    """One figure for a task family: eval (and train) loss and accuracy against tokens, log x.

    Each sub-skill is its own coloured line (with its chance loss dotted), the task aggregate is black;
    choice accuracy, where the task has an answer set, is dashed in the same colour. A star and a dotted
    vertical line mark where each of them emerged; a dash-dotted line is the best baseline accuracy
    (chance or the one-position rule) from ``baselines``.
    """
    metric, threshold = cfg.criterion.metric, cfg.criterion.threshold
    base = (baselines or {}).get("labels", {})
    fig, (ax_loss, ax_acc) = _new_figure(2)
    task_rows = [r for r in rows if r["task"] == task]
    multi = any(r["skill"] is not None for r in task_rows)
    for k, row in enumerate(task_rows):
        skill = row["skill"]
        of_row = Label(task, skill)
        is_total = skill is None
        color = "black" if is_total and multi else f"C{k if multi else 0}"
        label = ("all" if multi else task) if is_total else skill
        width = 2.0 if is_total and multi else 1.3
        xs, ys = _series(evals, of_row.key("loss"))
        ax_loss.plot(xs, ys, color=color, lw=width, marker=".", ms=3, label=f"{label} (eval)")
        # Chance loss = loss / loss_ratio exactly for one sub-skill; for a mixed aggregate it is not.
        chance = None if is_total and multi else _chance(evals, of_row)
        if chance is not None:
            ax_loss.axhline(chance, color=color, ls=":", lw=0.8)
        xa, ya = _series(evals, of_row.key("acc"))
        ax_acc.plot(xa, ya, color=color, lw=width, marker=".", ms=3, label=label)
        xc, yc = _series(evals, of_row.key("choice_acc"))
        if xc:
            ax_acc.plot(xc, yc, color=color, lw=width * 0.8, ls="--", label=f"{label} (choice)")
        if str(of_row) in base:
            ax_acc.axhline(best_baseline_acc(base[str(of_row)]), color=color, ls="-.", lw=0.8)
        step = row["emergence_step"]
        if step is not None and row["emergence_tokens"]:
            t = row["emergence_tokens"]
            for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
                ax.axvline(t, color=color, ls=":", lw=0.9)
                v = _at_step(evals, step, of_row.key(key))
                if v is not None:
                    ax.plot([t], [v], marker="*", ms=11, color=color, ls="none")
    xt, yt = _series(trains, Label(task).key("loss", TRAIN))
    if xt:
        ax_loss.plot(xt, yt, color="0.55", lw=0.8, ls="--", label="train")
    if higher_is_better(metric):  # a probability (accuracy, label mass): drawn on the accuracy axis
        ax_acc.axhline(threshold, color="0.4", ls="--", lw=0.8)
    ax_acc.set_ylim(-0.03, 1.03)
    _finish_axis(ax_loss, "tokens", "answer loss (nats/token)")
    _finish_axis(ax_acc, "tokens", "accuracy (solid: exact match, dashed: choice)")
    ax_loss.set_title(f"{task}: loss (dotted: chance)", fontsize=10)
    crit = f"{metric} {'>=' if cfg.criterion.higher_is_better else '<='} {threshold:g}"
    ax_acc.set_title(f"{task}: accuracy (star: emergence, {crit}; dash-dot: baseline)", fontsize=10)
    return save_figure(fig, path)


def plot_background(evals: list[dict], trains: list[dict], path: Path) -> Path | None:
    """Held-out background loss (and overall training loss) against tokens; None when neither exists."""
    xe, ye = _series(evals, BACKGROUND.key("loss"))
    xt, yt = _series(trains, "loss")
    if not xe and not xt:
        return None
    fig, (ax,) = _new_figure(1)
    if xt:
        ax.plot(xt, yt, color="0.55", lw=0.8, ls="--", label="train (all tokens)")
    if xe:
        ax.plot(xe, ye, color="C0", lw=1.5, marker=".", ms=3, label="held-out background")
    _finish_axis(ax, "tokens", "loss (nats/token)")
    ax.set_title("background loss", fontsize=10)
    return save_figure(fig, path)


def summary_markdown(
    run_dir: Path,
    rows: list[dict],
    evals: list[dict],
    cfg: EvalConfig,
    images: list[Path],
    baselines: dict | None = None,
) -> str:
    """The ``summary.md`` text: criterion, final background loss, one table row per task/sub-skill,
    and the baselines when the run has them."""
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"Criterion: {describe_criterion(cfg)} (see `smalllm.eval.emergence.detect_emergence`).",
        "",
    ]
    if evals:
        last = evals[-1]
        lines.append(f"Last evaluation: step {last['step']}, {human_count(last.get('tokens'))} tokens.")
        bg = last.get(BACKGROUND.key("loss"))
        if bg is not None:
            lines.append(f"Held-out background loss: {bg:.4f} nats ({bg / math.log(2):.4f} bits) per token.")
        lines.append("")
    header = list(TABLE_COLUMNS)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if j in TEXT_COLUMNS else "---:" for j in range(len(header))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(table_cells(row)) + " |")
    if not rows:
        lines.append("| (no task evaluations) |" + " |" * (len(header) - 1))
    lines.append("")
    if baselines and baselines.get("labels"):
        lines += [
            "Baselines (held-out set): chance is uniform over the answer set; the rule answers the "
            "majority training answer given the token at one prompt position (the best position).",
            "",
            "| label | n | answers | chance acc | rule position | rule acc | rule choice loss |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, r in baselines["labels"].items():
            cells = [r["n"], r["answer_set_size"], r["chance_acc"], r["rule_position"], r["rule_acc"]]
            cells.append(r["rule_choice_loss"])
            shown = ["-" if c is None else f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells]
            lines.append(f"| {label} | " + " | ".join(shown) + " |")
        lines.append("")
    for img in images:
        lines.append(f"![{img.stem}]({img.name})")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, cfg: EvalConfig | None = None) -> list[Path]:
    """Write ``run_dir/report/{task}.png``, ``background.png`` and ``summary.md``; return their paths.

    ``cfg`` gives the emergence criterion; by default it is read from the run's saved config.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    cfg = cfg if cfg is not None else load_eval_config(run_dir)
    evals = eval_records(records)
    trains = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r.get("step", 0))
    rows = emergence_table(records, cfg)
    baselines = read_baselines(RunDir(run_dir).baselines_file)
    out_dir = RunDir(run_dir).report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    used: set[str] = set()
    for task in dict.fromkeys(label.task for label in eval_labels(evals)):
        name = _safe_name(task)
        while name in used or name == BACKGROUND.task:  # keep distinct tasks in distinct files
            name += "_"
        used.add(name)
        images.append(plot_task(task, evals, trains, rows, cfg, out_dir / f"{name}.png", baselines))
    bg = plot_background(evals, trains, out_dir / "background.png")
    if bg is not None:
        images.append(bg)
    summary = out_dir / REPORT_SUMMARY_FILE
    summary.write_text(summary_markdown(run_dir, rows, evals, cfg, images, baselines))
    return [*images, summary]
