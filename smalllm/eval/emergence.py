"""Emergence detection: when a task's accuracy (or loss) crosses a threshold and stays there.

Evaluations are noisy (a few hundred held-out instances), so "first crossing" alone would report a
lucky spike as emergence, while "crossed and never fell back" would let one unlucky evaluation
postpone it indefinitely. :func:`detect_emergence` sits between the two with a small confirmation
window that tolerates one isolated dip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smalllm.eval.config import CriterionConfig, EvalConfig, upgrade_legacy_eval
from smalllm.labels import EVAL, Label, parse_key
from smalllm.run_record import RunDir


@dataclass
class Emergence:
    """The evaluation at which a task counted as learned."""

    step: int
    """Optimizer step of that evaluation."""
    tokens: int
    """Training tokens seen by then."""
    value: float
    """The metric's value there (accuracy or loss ratio)."""
    confirmed: bool = True
    """False for a crossing that still holds at the last evaluation but whose confirmation window the
    run ended before: evidence of learning, not yet proof (``eval.criterion.at_end`` decides)."""


def _holds(value: float, threshold: float, higher_is_better: bool) -> bool:
    if value is None or not math.isfinite(value):  # a NaN evaluation never confirms anything
        return False
    return value >= threshold if higher_is_better else value <= threshold


def detect_emergence(
    steps: Sequence[int],
    tokens: Sequence[int],
    values: Sequence[float],
    threshold: float,
    patience: int = 2,
    higher_is_better: bool = True,
) -> Emergence | None:
    """First evaluation at which ``values`` crosses ``threshold`` and the crossing is confirmed.

    An evaluation *holds* when its value is ``>= threshold`` (``<=`` with ``higher_is_better=False``,
    e.g. for loss over chance); NaN never holds. Evaluations are taken in the given (step) order.
    Emergence is at the first index ``i`` that holds and is confirmed by the evaluations after it:

    * ``patience == 0``: holding at ``i`` is enough (the last evaluation included).
    * At least ``patience`` evaluations follow ``i``: the window ``i+1 … i+patience`` may contain at
      most one failing evaluation, and that failure must be *isolated*: the evaluation right after it
      exists and holds (it may lie just beyond the window). So with ``patience=2``, ``hold, fail,
      hold`` and ``hold, hold, fail, hold`` emerge at the first ``hold``; ``hold, fail, fail`` does not,
      nor does a window ending the run on a failure (``hold, hold, fail`` then nothing).
    * Fewer than ``patience`` evaluations follow ``i``: all of them must hold and there must be at
      least one. In particular a first crossing at the very last evaluation is not confirmed when
      ``patience >= 1``: there is no evidence yet that it is not a spike.

    What happens after the confirmation window does not matter: a later permanent drop (e.g. from
    forgetting under a gap schedule) does not undo the emergence reported here.

    Returns the step, tokens and value at ``i``. When no crossing is confirmed but the evaluations
    from some ``i`` to the last all hold (in practice: the last one crosses), that crossing is returned
    with ``confirmed=False`` rather than dropped. None when neither applies.
    """
    if not (len(steps) == len(tokens) == len(values)):
        raise ValueError("steps, tokens and values must have the same length")
    if patience < 0:
        raise ValueError(f"patience must be >= 0, got {patience}")
    ok = [_holds(v, threshold, higher_is_better) for v in values]
    n = len(ok)
    for i in range(n):
        if not ok[i]:
            continue
        after = n - 1 - i
        if patience == 0:
            confirmed = True
        elif after < patience:
            confirmed = after >= 1 and all(ok[i + 1 :])
        else:
            fails = [j for j in range(i + 1, i + patience + 1) if not ok[j]]
            confirmed = not fails or (len(fails) == 1 and fails[0] + 1 < n and ok[fails[0] + 1])
        if confirmed:
            return Emergence(step=int(steps[i]), tokens=int(tokens[i]), value=float(values[i]))
    if n and ok[-1]:
        # The run ended on a crossing too recent to confirm: report where its final run of holds began.
        i = n - 1
        while i > 0 and ok[i - 1]:
            i -= 1
        return Emergence(int(steps[i]), int(tokens[i]), float(values[i]), confirmed=False)
    return None


def eval_records(records: list[dict]) -> list[dict]:
    """Eval records sorted by step; a step logged twice (e.g. after a resume) keeps its last record."""
    by_step: dict[int, dict] = {}
    for rec in records:
        if rec.get("kind") == "eval" and "step" in rec:
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def eval_labels(records: list[dict]) -> list[Label]:
    """Tasks and sub-skills with an accuracy in ``records``: each task first, then its sub-skills.

    Tasks come in first-seen order; the background (which has no accuracy) never appears.
    """
    seen: dict[Label, None] = {}
    for rec in records:
        for key in rec:
            parsed = parse_key(key)
            if parsed is not None and parsed.kind == EVAL and parsed.metric == "acc":
                seen[parsed.label] = None
    out: list[Label] = []
    for task in dict.fromkeys(label.task for label in seen):
        if Label(task) in seen:
            out.append(Label(task))
        out.extend(label for label in seen if label.task == task and label.skill is not None)
    return out


def _series(records: list[dict], key: str) -> tuple[list[int], list[int], list[float]]:
    steps, toks, vals = [], [], []
    for rec in records:
        if key in rec and rec[key] is not None:
            steps.append(int(rec["step"]))
            toks.append(int(rec.get("tokens", 0)))
            vals.append(float(rec[key]))
    return steps, toks, vals


def _last(records: list[dict], key: str) -> float | None:
    vals = _series(records, key)[2]
    return vals[-1] if vals else None


def describe_criterion(cfg: EvalConfig) -> str:
    """One sentence stating the pre-registered criterion, e.g. for a report."""
    crit = cfg.criterion
    sign = ">=" if crit.higher_is_better else "<="
    at_end = {
        "unconfirmed": "is reported as unconfirmed (not learned)",
        "learned": "is reported as unconfirmed and counted as learned",
        "not_learned": "counts as not learned",
    }[crit.at_end]
    return (
        f"learned at the first evaluation with {crit.metric} {sign} {crit.threshold:g}, confirmed by the "
        f"next {crit.patience} evaluation(s) (one isolated dip tolerated); a crossing the run ends before "
        f"confirming {at_end}"
    )


STATUSES = ("learned", "unconfirmed", "not_learned")
"""Verdicts of :func:`emergence_status`."""


def emergence_status(em: Emergence | None, cfg: EvalConfig) -> tuple[str, bool]:
    """(status, learned) of a :func:`detect_emergence` result under ``cfg.criterion``.

    A confirmed crossing is ``learned``; none at all is ``not_learned``. An unconfirmed one is
    ``unconfirmed`` and not learned, unless ``at_end`` says it counts as ``learned`` (status stays
    ``unconfirmed``) or as ``not_learned`` (status too).
    """
    if em is None:
        return "not_learned", False
    if em.confirmed:
        return "learned", True
    at_end = cfg.criterion.at_end
    if at_end == "not_learned":
        return "not_learned", False
    return "unconfirmed", at_end == "learned"


def emergence_table(records: list[dict], cfg: EvalConfig) -> list[dict]:
    """One row per task and per task/sub-skill summarising final metrics and emergence.

    ``records`` are the lines of a run's metrics file (non-eval lines are ignored). Emergence applies
    ``cfg.criterion`` (metric, threshold, patience; see :func:`detect_emergence`) and
    :func:`emergence_status`. Row keys: task, skill (None for the whole task), final_acc, final_loss,
    final_loss_ratio, final_choice_acc, final_choice_loss, final_label_mass (None where not logged),
    best_acc, status, learned, emergence_step, emergence_tokens, emergence_value (where the task
    counts as learned; all None when ``learned`` is False), crossing_step (the crossing of a learned or
    unconfirmed row, None for not_learned), metric, threshold.
    """
    evals = eval_records(records)
    crit = cfg.criterion
    rows = []
    for label in eval_labels(evals):
        accs = [v for v in _series(evals, label.key("acc"))[2] if math.isfinite(v)]
        steps, toks, vals = _series(evals, label.key(crit.metric))
        em = detect_emergence(steps, toks, vals, crit.threshold, crit.patience, crit.higher_is_better)
        status, learned = emergence_status(em, cfg)
        # emergence_* name where the task counts as learned, so "emergence_step is not None" keeps
        # meaning learned; crossing_step also shows an unconfirmed crossing.
        shown = em if learned else None
        rows.append(
            {
                "task": label.task,
                "skill": label.skill,
                "final_acc": _last(evals, label.key("acc")),
                "final_loss": _last(evals, label.key("loss")),
                "final_loss_ratio": _last(evals, label.key("loss_ratio")),
                "final_choice_acc": _last(evals, label.key("choice_acc")),
                "final_choice_loss": _last(evals, label.key("choice_loss")),
                "final_label_mass": _last(evals, label.key("label_mass")),
                "best_acc": max(accs) if accs else None,
                "status": status,
                "learned": learned,
                "emergence_step": shown.step if shown else None,
                "emergence_tokens": shown.tokens if shown else None,
                "emergence_value": shown.value if shown else None,
                "crossing_step": em.step if em and status != "not_learned" else None,
                "metric": crit.metric,
                "threshold": crit.threshold,
            }
        )
    return rows


def human_count(n: float | None) -> str:
    """Compact token count: 1234 -> 1.2K, 3_400_000 -> 3.4M; None -> '-'."""
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


TABLE_COLUMNS = (
    "task",
    "skill",
    "final acc",
    "choice acc",
    "label mass",
    "best acc",
    "final loss/chance",
    "status",
    "emerged at step",
    "at tokens",
)


TEXT_COLUMNS = (0, 1, TABLE_COLUMNS.index("status"))
"""Columns of words (left-aligned); the rest are numbers."""


def table_cells(row: dict) -> list[str]:
    """Display strings of one :func:`emergence_table` row, in :data:`TABLE_COLUMNS` order."""
    return [
        row["task"],
        row["skill"] or "(all)",
        _fmt(row["final_acc"]),
        _fmt(row.get("final_choice_acc")),
        _fmt(row.get("final_label_mass")),
        _fmt(row["best_acc"]),
        _fmt(row["final_loss_ratio"]),
        row.get("status", "-"),
        "-" if row["emergence_step"] is None else str(row["emergence_step"]),
        human_count(row["emergence_tokens"]),
    ]


def format_emergence_table(rows: list[dict]) -> str:
    """Aligned plain-text table of :func:`emergence_table` rows, for the terminal."""
    if not rows:
        return "(no task evaluations found)"
    cells = [list(TABLE_COLUMNS)] + [table_cells(r) for r in rows]
    widths = [max(len(c[j]) for c in cells) for j in range(len(TABLE_COLUMNS))]
    lines = []
    for k, c in enumerate(cells):
        # Text columns left-aligned, numbers right-aligned, as a reader scans them.
        parts = [c[j].ljust(widths[j]) if j in TEXT_COLUMNS else c[j].rjust(widths[j]) for j in range(len(c))]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load_eval_config(run_dir: str | Path) -> EvalConfig:
    """The ``eval`` section of the run's saved config, or the defaults when there is none."""
    path = RunDir(run_dir).config_file
    try:
        section = (yaml.safe_load(path.read_text()) or {}).get("eval") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return EvalConfig()
    section = upgrade_legacy_eval(section)
    names = {f.name for f in dataclasses.fields(EvalConfig)} - {"criterion"}
    criterion = section.get("criterion") or {}
    crit_names = {f.name for f in dataclasses.fields(CriterionConfig)}
    return EvalConfig(
        **{k: v for k, v in section.items() if k in names},
        criterion=CriterionConfig(**{k: v for k, v in criterion.items() if k in crit_names}),
    )
