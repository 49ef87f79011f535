"""Metric labels: which task (and sub-skill) a number is about, and the one spelling of its key.

Every per-task number in ``metrics.jsonl``, on TensorBoard/W&B and in the sweep table is keyed
``{kind}/{task}/{metric}`` or ``{kind}/{task}/{skill}/{metric}``, with kind ``eval`` or ``train``.
:meth:`Label.key` is the only code that spells such a key and :func:`parse_key` the only code that
reads one.

A key is read from both ends: the first segment is the kind, the second the task, the last the
metric, and whatever lies between is the skill. So a skill name may itself contain ``/``
(``eval/t/a/x/acc`` is skill ``a/x`` of task ``t``), while a task name may not:
:func:`check_task_name` refuses one at registration, and :func:`check_skill_names` refuses the skill
lists that no key could tell apart (an empty name, the same name twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smalllm.errors import ConfigError

SEP = "/"
EVAL = "eval"
TRAIN = "train"
KINDS = (EVAL, TRAIN)


@dataclass(frozen=True)
class Label:
    """A task as a whole (``skill`` None) or one sub-skill of a task family."""

    task: str
    skill: str | None = None

    def __str__(self) -> str:
        """``task`` or ``task/skill``: the label of the stream, its frequency table and ``summary.json``."""
        return self.task if self.skill is None else f"{self.task}{SEP}{self.skill}"

    def key(self, metric: str, kind: str = EVAL) -> str:
        """The metrics key of ``metric`` for this label, e.g. ``eval/addition/digit0/acc``."""
        return f"{kind}{SEP}{self}{SEP}{metric}"


BACKGROUND = Label("background")
"""The background text: label 0 of the stream, ``train/background/loss`` and ``eval/background/loss``."""


@dataclass(frozen=True)
class MetricKey:
    """A metrics key taken apart by :func:`parse_key`."""

    kind: str
    label: Label
    metric: str


def parse_key(key: str) -> MetricKey | None:
    """The parts of a key written by :meth:`Label.key`; None for any other key (``loss``, ``lr``, …)."""
    kind, *parts = key.split(SEP)
    if kind not in KINDS or len(parts) < 2 or not parts[0] or not parts[-1]:
        return None
    task, *skill, metric = parts
    # Joining the middle back undoes the split exactly, so a skill keeps every '/' it had.
    return MetricKey(kind, Label(task, SEP.join(skill) if skill else None), metric)


def check_task_name(name: str) -> None:
    """Refuse a task name that would make metric keys ambiguous."""
    if not name or SEP in name:
        raise ConfigError(
            f"task name {name!r}: must be non-empty and contain no '{SEP}' "
            f"(metric keys read eval/TASK/…; sub-skill names may contain '{SEP}')"
        )
    if name == BACKGROUND.task:
        raise ConfigError(f"task name {name!r} is reserved for the background text (eval/{name}/loss)")


def check_skill_names(skills: Sequence[str]) -> None:
    """Refuse sub-skill names (``task/`` prefix removed) whose keys would be empty or collide."""
    if not all(skills):
        raise ConfigError(f"a sub-skill has an empty name (sub-skills: {list(skills)})")
    twice = sorted({s for s in skills if list(skills).count(s) > 1})
    if twice:
        raise ConfigError(f"sub-skill name(s) {twice} appear more than once")
