"""Task registry: built-in tasks plus any installed under the ``smalllm.tasks`` entry-point group.

Only two sources of task code exist, by design: modules of this package and entry points of
installed distributions. Configs name tasks; they never name code to import.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from smalllm.errors import ConfigError, did_you_mean
from smalllm.labels import check_skill_names, check_task_name
from smalllm.tasks.base import (
    Instance,
    Task,
    TaskVocab,
    describe_params,
    parse_params,
    skill_labels,
    skill_names,
)

__all__ = [
    "Instance",
    "PluginWarning",
    "Task",
    "TaskVocab",
    "build_task",
    "describe_params",
    "get_task",
    "parse_params",
    "register",
    "registered_tasks",
    "skill_labels",
    "skill_names",
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
BUILTIN = "smalllm (built-in)"

_REGISTRY: dict[str, type[Task]] = {}
_CLASHES: dict[str, list[str]] = {}
"""Task names that several installed distributions register, with who registers them."""
_loaded = False


class PluginWarning(UserWarning):
    """A task plug-in was skipped; the other tasks remain usable."""


def register(task_cls: type[Task]) -> type[Task]:
    """Add a task class to the registry (usable as a class decorator)."""
    name = getattr(task_cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{task_cls.__qualname__} needs a class attribute 'name'")
    check_task_name(name)
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not task_cls:
        raise ValueError(
            f"task name '{name}' is already registered by {existing.__module__}.{existing.__qualname__}"
        )
    _REGISTRY[name] = task_cls
    return task_cls


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else ep.value


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    origins = {n: BUILTIN if c.__module__ in _BUILTIN_MODULES else c.__module__ for n, c in _REGISTRY.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"task plug-in '{ep.name}' ({ep.value}) of {_distribution(ep)}"
        # One broken plug-in must not take the built-ins and the other plug-ins down with it.
        try:
            task_cls = ep.load()
            if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
                raise TypeError(f"{ep.value} is not a smalllm.tasks.Task subclass")
            if getattr(task_cls, "name", None) is None:
                task_cls.name = ep.name
            check_task_name(task_cls.name)
        except Exception as exc:
            warnings.warn(f"{where} is skipped: {type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
            continue
        name = task_cls.name
        if name in _CLASHES:
            _CLASHES[name].append(_distribution(ep))
        elif name in _REGISTRY and _REGISTRY[name] is not task_cls:
            # Neither registration can be preferred silently: the name is unusable until one goes.
            _CLASHES[name] = [origins[name], _distribution(ep)]
            del _REGISTRY[name]
        else:
            _REGISTRY[name] = task_cls
            origins[name] = _distribution(ep)
    for name in _CLASHES:
        warnings.warn(_clash_message(name), PluginWarning, stacklevel=2)


def _clash_message(name: str) -> str:
    who = " and ".join(f"'{d}'" for d in sorted(_CLASHES[name]))
    return f"task '{name}' is registered by {who}; uninstall all but one to use it"


def registered_tasks() -> dict[str, type[Task]]:
    """All known tasks, by name (a name that two distributions register is left out)."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str, where: str = "task") -> type[Task]:
    """Look a task class up by name; unknown names get a one-line error with a suggestion."""
    tasks = registered_tasks()
    if name in _CLASHES:
        raise ConfigError(f"{where}: {_clash_message(name)}")
    if name not in tasks:
        raise ConfigError(f"{where}: unknown task '{name}'{did_you_mean(name, tasks)}")
    return tasks[name]


def build_task(
    name: str, params: dict[str, Any], vocab: TaskVocab, seed: int = 0, where: str = "task"
) -> Task:
    """Instantiate a registered task with validated parameters and distinct sub-skill names."""
    task_cls = get_task(name, f"{where}.name")
    parsed = parse_params(task_cls, params, f"{where}.params")
    try:
        task = task_cls(parsed, vocab, seed)
        check_skill_names(skill_names(task))
    except ConfigError as exc:  # e.g. more distinct tokens than the vocabulary has: name the task's entry
        raise ConfigError(f"{where}.params: task '{name}': {exc}") from None
    return task
