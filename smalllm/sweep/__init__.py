"""Sweeps: grids of runs (model sizes x task frequencies x seeds x any config key) in one directory.

* :mod:`smalllm.sweep.grid` parses a sweep file and expands its grids into cells;
* :mod:`smalllm.sweep.records` owns the sweep directory and decides each cell's state;
* :mod:`smalllm.sweep.estimates` sizes and times the cells (``--dry-run``);
* :mod:`smalllm.sweep.execution` runs the cells as resumable subprocesses;
* :mod:`smalllm.sweep.emit` writes Slurm / shell launch scripts instead, which call
  :mod:`smalllm.sweep.cellcmd` for each cell's bookkeeping;
* :mod:`smalllm.sweep.runner` is ``smalllm sweep`` itself (:func:`run_sweep`);
* :mod:`smalllm.sweep.aggregate` builds the tidy per-cell x task table;
* :mod:`smalllm.sweep.frontier` estimates the crossing frequency f*(size) with bootstrap CIs over
  data seeds, and the exchange rates between sizes (pure numpy);
* :mod:`smalllm.sweep.skills_graph` estimates a Skill-It skills graph over a task family's
  sub-skills (``smalllm skills-graph``);
* :mod:`smalllm.sweep.report` draws heatmaps, the learned frontier, f*, curves (``smalllm report``).

Nothing is imported eagerly: launch scripts run ``python -m smalllm.sweep.cellcmd``, which must not
find its own module already imported by this package, and should not pay for torch.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

_EXPORTS = {
    "run_sweep": "smalllm.sweep.runner",
    "SweepFailed": "smalllm.sweep.runner",
    "write_sweep_report": "smalllm.sweep.report",
    "estimate_cell": "smalllm.sweep.estimates",
    "dry_run_table": "smalllm.sweep.estimates",
    "cell_state": "smalllm.sweep.records",
    "estimate_skills_graph": "smalllm.sweep.skills_graph",
}

__all__ = list(_EXPORTS)


class _CallablePackage(types.ModuleType):
    """``smalllm.sweep(config, ...)`` is :func:`smalllm.sweep.runner.run_sweep`: the Python API's
    name and this package's are the same attribute of ``smalllm``, so the package answers the call."""

    def __call__(self, config: Any, **kwargs: Any) -> dict[str, dict] | None:
        return import_module("smalllm.sweep.runner").run_sweep(config, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'smalllm.sweep' has no attribute '{name}'")
