"""Sweeps: grids of runs (model sizes x task frequencies x seeds x any config key) in one directory.

* :mod:`smalllm.sweep.grid` parses a sweep file and expands its grids into cells;
* :mod:`smalllm.sweep.runner` runs the cells as resumable subprocesses (``smalllm sweep``);
* :mod:`smalllm.sweep.emit` writes Slurm / shell launch scripts instead;
* :mod:`smalllm.sweep.aggregate` builds the tidy per-cell x task table;
* :mod:`smalllm.sweep.report` draws heatmaps, the learned frontier and curves (``smalllm report``).

Nothing is imported eagerly: launch scripts run ``python -m smalllm.sweep.runner``, which must not
find its own module already imported by this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_sweep", "write_sweep_report"]


def __getattr__(name: str) -> Any:
    if name == "run_sweep":
        from smalllm.sweep.runner import run_sweep

        return run_sweep
    if name == "write_sweep_report":
        from smalllm.sweep.report import write_sweep_report

        return write_sweep_report
    raise AttributeError(f"module 'smalllm.sweep' has no attribute '{name}'")
