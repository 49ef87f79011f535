"""Task registry: built-in tasks plus any installed under the ``smalllm.tasks`` entry-point group.

Only two sources of task code exist, by design: modules of this package and entry points of
installed distributions. Configs name tasks; they never name code to import.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from smalllm.errors import ConfigError, did_you_mean
from smalllm.tasks.base import Instance, Task, TaskVocab, describe_params, parse_params

__all__ = [
    "Instance",
    "Task",
    "TaskVocab",
    "build_task",
    "describe_params",
    "get_task",
    "parse_params",
    "register",
    "registered_tasks",
]

ENTRY_POINT_GROUP = "smalllm.tasks"
_BUILTIN_MODULES = (
    "smalllm.tasks.lookup",
    "smalllm.tasks.lego",
    "smalllm.tasks.arithmetic",
    "smalllm.tasks.parity",
    "smalllm.tasks.sequence",
    "smalllm.tasks.memory",
)

_REGISTRY: dict[str, type[Task]] = {}
_loaded = False


def register(task_cls: type[Task]) -> type[Task]:
    """Add a task class to the registry (usable as a class decorator)."""
    name = getattr(task_cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{task_cls.__qualname__} needs a class attribute 'name'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not task_cls:
        raise ValueError(
            f"task name '{name}' is already registered by {existing.__module__}.{existing.__qualname__}"
        )
    _REGISTRY[name] = task_cls
    return task_cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            task_cls = ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-ins down with it
            raise ConfigError(f"task plug-in '{ep.name}' ({ep.value}) failed to load: {exc}") from None
        if getattr(task_cls, "name", None) is None:
            task_cls.name = ep.name
        register(task_cls)


def registered_tasks() -> dict[str, type[Task]]:
    """All known tasks, by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str, where: str = "task") -> type[Task]:
    """Look a task class up by name; unknown names get a one-line error with a suggestion."""
    tasks = registered_tasks()
    if name not in tasks:
        raise ConfigError(f"{where}: unknown task '{name}'{did_you_mean(name, tasks)}")
    return tasks[name]


def build_task(
    name: str, params: dict[str, Any], vocab: TaskVocab, seed: int = 0, where: str = "task"
) -> Task:
    """Instantiate a registered task with validated parameters."""
    task_cls = get_task(name, f"{where}.name")
    parsed = parse_params(task_cls, params, f"{where}.params")
    try:
        return task_cls(parsed, vocab, seed)
    except ConfigError as exc:  # e.g. more distinct tokens than the vocabulary has: name the task's entry
        raise ConfigError(f"{where}.params: task '{name}': {exc}") from None
