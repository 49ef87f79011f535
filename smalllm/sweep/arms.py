"""The arms page of a sweep: named grids compared at equal steps, per sub-skill, over seeds.

A sweep that compares ways of training on the same task family (Skill-It's mixture policies:
``random``, ``stratified``, ``curriculum``, ``skillit``) writes each as a named grid (its *arm*) and
crosses them with a seed axis. Every arm then trains the same steps on the same data seeds, and
``report/arms.md`` compares them:

* per arm, the final value of the metric (accuracy by default) per sub-skill and its mean over the
  sub-skills, as the mean over seeds with a 95% percentile bootstrap interval over seeds;
* per arm against the baseline arm (``random`` when there is one, else the first), the mean over
  sub-skills' difference *paired on the seed* (both arms saw the same data seed and initialisation),
  with its bootstrap interval over the per-seed differences, and how many seeds favour the arm;
* per-skill curves (mean over seeds) and, where logged, each arm's realised mixture per round.

With three seeds an interval is wide and a percentile bootstrap covers less than its nominal level;
the page says how many seeds it rests on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smalllm.eval.emergence import eval_labels, eval_records
from smalllm.labels import Label
from smalllm.sweep import records
from smalllm.sweep.aggregate import SweepInfo, cell_run_config
from smalllm.sweep.frontier import seed_mean_text

ARMS_FILE = "arms.md"
BASELINE_ARM = "random"


@dataclass
class ArmRun:
    """One cell of an arm: its seed, per-skill curves and logged mixture."""

    arm: str
    cell: str
    seed: int
    skills: list[Label]
    curves: dict[Label, list[tuple[int, float]]]
    """Per skill, (step, metric value) at every evaluation."""
    final_loss: dict[Label, float]
    mixture: list[dict] = field(default_factory=list)
    """The run's ``kind: mixture`` records (one per round)."""


def arm_runs(info: SweepInfo, metric: str = "acc") -> list[ArmRun]:
    """Every finished-or-partial cell of a named grid whose evaluations cover sub-skills."""
    out = []
    for cell in info.cells:
        if not cell.grid or not records.cell_dir(info.sweep_dir, cell.name).is_dir():
            continue
        run = records.cell_run(info.sweep_dir, cell.name)
        cfg = cell_run_config(info, cell)
        if cfg is None or not run.metrics_file.is_file():
            continue
        metrics = run.read_metrics()
        evals = eval_records(metrics)
        skills = [label for label in eval_labels(evals) if label.skill is not None]
        if not skills:
            continue
        curves = {
            s: [(int(r["step"]), float(r[s.key(metric)])) for r in evals if r.get(s.key(metric)) is not None]
            for s in skills
        }
        final_loss = {
            s: next(
                (float(r[s.key("loss")]) for r in evals[::-1] if r.get(s.key("loss")) is not None), math.nan
            )
            for s in skills
        }
        mixture = [r for r in metrics if r.get("kind") == "mixture"]
        out.append(ArmRun(cell.grid, cell.name, cfg.data.seed, skills, curves, final_loss, mixture))
    return out


def _final(run: ArmRun, skill: Label) -> float:
    curve = run.curves.get(skill) or []
    return curve[-1][1] if curve else math.nan


def compare_arms(runs: list[ArmRun]) -> dict:
    """Per arm: per-seed mean-over-skills finals and per-skill finals; per arm vs the baseline: the
    per-seed paired differences of the mean over skills."""
    by_arm: dict[str, dict[int, ArmRun]] = defaultdict(dict)
    for r in runs:
        by_arm[r.arm][r.seed] = r
    skills = list(dict.fromkeys(s for r in runs for s in r.skills))
    arms = list(by_arm)
    baseline = BASELINE_ARM if BASELINE_ARM in by_arm else arms[0]
    table = {}
    for arm, seeds in by_arm.items():
        per_seed_mean = {seed: float(np.nanmean([_final(r, s) for s in skills])) for seed, r in seeds.items()}
        diffs = {
            seed: per_seed_mean[seed] - float(np.nanmean([_final(by_arm[baseline][seed], s) for s in skills]))
            for seed in seeds
            if seed in by_arm[baseline]
        }
        table[arm] = {
            "seeds": sorted(seeds),
            "mean": per_seed_mean,
            "per_skill": {str(s): [_final(r, s) for r in seeds.values()] for s in skills},
            "loss": [
                float(np.nanmean([r.final_loss.get(s, math.nan) for s in skills])) for r in seeds.values()
            ],
            "vs_baseline": diffs,
        }
    return {"baseline": baseline, "skills": [str(s) for s in skills], "arms": table}


def markdown(result: dict, metric: str, images: list[Path]) -> str:
    skills, base = result["skills"], result["baseline"]
    short = [s.split("/", 1)[-1] for s in skills]
    lines = [
        "# Arms compared",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Final `{metric}` per sub-skill (mean over seeds) and the mean over sub-skills with its 95% "
        "bootstrap interval over seeds; loss is the mean over sub-skills of the final answer loss.",
        "",
        "| arm | seeds | mean over skills | " + " | ".join(short) + " | loss |",
        "|---|---:|---:|" + "---:|" * (len(skills) + 1),
    ]
    for arm, row in result["arms"].items():
        per_skill = [f"{np.nanmean(row['per_skill'][s]):.3f}" for s in skills]
        lines.append(
            f"| {arm} | {len(row['seeds'])} | {seed_mean_text(list(row['mean'].values()))} | "
            + " | ".join(per_skill)
            + f" | {np.nanmean(row['loss']):.3f} |"
        )
    lines += [
        "",
        f"Against `{base}`, paired on the seed (same data seed and initialisation):",
        "",
        "| arm | difference in mean over skills | seeds favouring the arm | per-seed differences |",
        "|---|---:|---:|---|",
    ]
    for arm, row in result["arms"].items():
        if arm == base:
            continue
        diffs = list(row["vs_baseline"].values())
        ahead = sum(d > 0 for d in diffs)
        shown = ", ".join(f"{d:+.3f}" for d in diffs)
        lines.append(f"| {arm} | {seed_mean_text(diffs)} | {ahead} of {len(diffs)} | {shown} |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def plot_arms(runs: list[ArmRun], metric: str, out_dir: Path) -> list[Path]:
    """Per-skill curves (mean over seeds, one line per arm) and the logged mixture per round."""
    from smalllm.figures import new_figure, save_figure

    skills = list(dict.fromkeys(s for r in runs for s in r.skills))
    arms = list(dict.fromkeys(r.arm for r in runs))
    fig = new_figure(3.2 * len(skills), 3, dpi=110)
    axes = fig.subplots(1, len(skills), sharey=True, squeeze=False)
    for ax, skill in zip(axes[0], skills):
        for arm in arms:
            curves = [r.curves[skill] for r in runs if r.arm == arm and r.curves.get(skill)]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
            mean = [np.mean([dict(c)[s] for c in curves]) for s in steps]
            ax.plot(steps, mean, label=f"{arm} ({len(curves)})")
        ax.set_title(skill.skill or str(skill), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"held-out {metric}")
    axes[0][-1].legend(fontsize=7)
    written = [save_figure(fig, out_dir / "arms_curves.png")]
    logged = [a for a in arms if any(r.mixture for r in runs if r.arm == a)]
    if logged:
        fig = new_figure(3.4 * len(logged), 3, dpi=110)
        axes = fig.subplots(1, len(logged), sharey=True, squeeze=False)
        for ax, arm in zip(axes[0], logged):
            run = next(r for r in runs if r.arm == arm and r.mixture)
            keys = [k for k in run.mixture[0] if k.startswith("mixture/") and not k.endswith("/loss")]
            steps = [m["step"] for m in run.mixture]
            for key in keys:
                ax.step(
                    steps, [m.get(key, math.nan) for m in run.mixture], where="post", label=key.split("/")[-1]
                )
            ax.set_title(f"{arm} (seed {run.seed})", fontsize=9)
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("sub-skill weight")
        axes[0][-1].legend(fontsize=7)
        written.append(save_figure(fig, out_dir / "arms_mixture.png"))
    return written


def write_arms_page(info: SweepInfo, out_dir: Path, metric: str = "acc") -> list[Path]:
    """``report/arms.md`` and its figures when the sweep has two or more named grids with sub-skill
    evaluations; else nothing."""
    runs = arm_runs(info, metric)
    if len({r.arm for r in runs}) < 2:
        return []
    result = compare_arms(runs)
    images = plot_arms(runs, metric, out_dir)
    page = out_dir / ARMS_FILE
    page.write_text(markdown(result, metric, images))
    return [*images, page]
