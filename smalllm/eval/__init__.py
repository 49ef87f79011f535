"""Held-out evaluation, evaluation schedule, emergence detection and run reports.

The report functions are imported lazily: the trainer imports this package on every run, and it
should not pay for matplotlib unless a report is actually drawn.
"""

from __future__ import annotations

from typing import Any

from smalllm.data.eval_sets import TaskEvalSet
from smalllm.eval.emergence import Emergence, detect_emergence, emergence_table, format_emergence_table
from smalllm.eval.evaluator import InstanceScores, evaluate, greedy_generate, score_instances
from smalllm.eval.schedule import eval_steps

__all__ = [
    "Emergence",
    "InstanceScores",
    "TaskEvalSet",
    "detect_emergence",
    "emergence_table",
    "eval_steps",
    "evaluate",
    "format_emergence_table",
    "greedy_generate",
    "read_metrics",
    "score_instances",
    "write_report",
]

_LAZY = {"read_metrics", "write_report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from smalllm.eval import report

        return getattr(report, name)
    raise AttributeError(f"module 'smalllm.eval' has no attribute {name!r}")
