"""Held-out evaluation sets: what the stream holds out of training and the evaluator scores.

They sit in the data layer, below both: the stream builds them, the evaluator reads them, and a run
saves them with its record so that a checkpoint can be scored later on exactly the instances the
run was tracked on, without rebuilding its stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smalllm.errors import SmalllmError
from smalllm.run_record import atomic_write_text
from smalllm.tasks.base import Instance


@dataclass
class TaskEvalSet:
    """Held-out instances of one task, with what is needed to put its loss on a chance scale."""

    task: str
    """Task name (the registry name used in the config)."""
    skills: list[str]
    """Sub-skill names; ``Instance.skill`` indexes this list."""
    instances: list[Instance]
    """Held-out instances (never seen in training)."""
    chance_loss: list[float]
    """Loss in nats per answer token of a guesser uniform over the valid answers, per skill."""
    prefix: tuple[int, ...] = ()
    """Tokens placed before every prompt when scoring, where training put the task: () for position 0 (prefix placement), (eod,) for a document start."""


def save_eval_sets(sets: list[TaskEvalSet], path: str | Path, background: np.ndarray | None = None) -> None:
    """Write the task sets and the held-out background rows of a run."""
    tasks = [
        {
            "task": s.task,
            "skills": s.skills,
            "chance_loss": s.chance_loss,
            "instances": [[list(i.prompt), list(i.answer), i.skill] for i in s.instances],
        }
        for s in sets
    ]
    rows = [] if background is None else np.asarray(background).tolist()
    atomic_write_text(Path(path), json.dumps({"tasks": tasks, "background": rows}))


def load_eval_sets(path: str | Path) -> tuple[list[TaskEvalSet], np.ndarray | None]:
    """The task sets and background rows saved by :func:`save_eval_sets`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        background = np.asarray(data["background"], dtype=np.int64) if data["background"] else None
        sets = [
            TaskEvalSet(
                task=d["task"],
                skills=list(d["skills"]),
                instances=[Instance(tuple(p), tuple(a), int(s)) for p, a, s in d["instances"]],
                chance_loss=[float(c) for c in d["chance_loss"]],
            )
            for d in data["tasks"]
        ]
        return sets, background
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SmalllmError(f"{path}: unreadable eval sets ({type(exc).__name__})") from None
