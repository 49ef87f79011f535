"""Gap retention: what one injection of a task teaches, and how much of it is gone by the next.

Huang et al. (Fig. 6b) hold a rare task's global frequency fixed and bunch its instances into one
batch every N (the stream's ``gap`` schedule): larger gaps hurt, and hurt small models more. The
mechanism is a cycle. Batch ``b`` carries the instances (an *injection*); the task's loss drops
(the *gain*); the batches without it pull the loss back up until the next injection (the *decay*).

With ``eval.around_injections`` a run evaluates around a few cycles (:func:`bracket_steps`), and
:func:`retention_cycles` reads them back. Steps count optimizer steps done, so the evaluation at
step ``b`` sees the model just before injection batch ``b`` and the one at ``b + 1`` just after it:

- ``gain = L(b) − L(b + 1)``: what the injection taught (positive when it helped);
- ``decay = L(b_next) − L(b + 1)``: what was lost before the next injection ``b_next`` (positive
  when the loss came back up). With N = 1 every batch is an injection and the decay is 0 by
  construction; retention is a question about N > 1.
"""

from __future__ import annotations

import math

import numpy as np

from smalllm.labels import Label


def bracket_steps(injections: list[int], cycles: int, total_steps: int) -> list[tuple[int, int, int | None]]:
    """``cycles`` injection batches spread evenly over ``injections`` (first and last included), each
    as (before, after, next before): the evaluation steps ``b``, ``b + 1`` and the next injection
    ``b_next`` (None after the last one, or past ``total_steps``)."""
    inside = [b for b in injections if b < total_steps]
    if not inside or cycles < 1:
        return []
    chosen = sorted({int(round(i)) for i in np.linspace(0, len(inside) - 1, min(cycles, len(inside)))})
    out = []
    for i in chosen:
        b = inside[i]
        following = inside[i + 1] if i + 1 < len(inside) else None
        out.append((b, b + 1, following))
    return out


def eval_steps_of(brackets: list[tuple[int, int, int | None]]) -> set[int]:
    """Every evaluation step the brackets need."""
    return {s for bracket in brackets for s in bracket if s is not None}


def retention_cycles(
    records: list[dict], task: str, brackets: list[tuple[int, int, int | None]], metric: str = "loss"
) -> list[dict]:
    """Per bracketed cycle: the loss before and after its injection, at the next one, its gain and
    decay (NaN where an evaluation is missing, e.g. a run stopped early). ``records`` are eval records
    (``kind: eval``), ``metric`` a per-task eval metric (``loss`` or ``choice_loss``)."""
    key = Label(task).key(metric)
    at = {int(r["step"]): float(r[key]) for r in records if r.get("kind") == "eval" and key in r}
    nan = float("nan")
    out = []
    for before, after, following in brackets:
        lb, la = at.get(before, nan), at.get(after, nan)
        ln = at.get(following, nan) if following is not None else nan
        out.append(
            {
                "injection": before,
                "next": following,
                "before": lb,
                "after": la,
                "at_next": ln,
                "gain": lb - la,
                "decay": ln - la,
            }
        )
    return out


def summarize_cycles(cycles: list[dict]) -> dict:
    """Mean gain and decay over the cycles that have them (NaN when none has), and how many had."""
    out: dict = {}
    for field in ("gain", "decay"):
        values = [c[field] for c in cycles if math.isfinite(c[field])]
        out[f"mean_{field}"] = float(np.mean(values)) if values else float("nan")
        out[f"{field}_cycles"] = len(values)
    return out
