"""Held-out evaluation sets saved with a run (``eval_sets.json``), so a checkpoint can be scored
later on exactly the instances the run was tracked on, without rebuilding its stream."""

from __future__ import annotations

import json
from pathlib import Path

from smalllm.errors import SmalllmError
from smalllm.eval.evaluator import TaskEvalSet
from smalllm.tasks import Instance


def save_eval_sets(sets: list[TaskEvalSet], path: str | Path) -> None:
    data = [
        {
            "task": s.task,
            "skills": s.skills,
            "chance_loss": s.chance_loss,
            "instances": [[list(i.prompt), list(i.answer), i.skill] for i in s.instances],
        }
        for s in sets
    ]
    Path(path).write_text(json.dumps(data))


def load_eval_sets(path: str | Path) -> list[TaskEvalSet]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return [
            TaskEvalSet(
                task=d["task"],
                skills=list(d["skills"]),
                instances=[Instance(tuple(p), tuple(a), int(s)) for p, a, s in d["instances"]],
                chance_loss=[float(c) for c in d["chance_loss"]],
            )
            for d in data
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SmalllmError(f"{path}: unreadable eval sets ({type(exc).__name__})") from None
