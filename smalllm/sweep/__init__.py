"""Sweeps: grids of runs (model sizes x task frequencies x seeds x any config key) in one directory.

* :mod:`smalllm.sweep.grid` parses a sweep file and expands its grids into cells;
* :mod:`smalllm.sweep.runner` runs the cells as resumable subprocesses (``smalllm sweep``);
* :mod:`smalllm.sweep.emit` writes Slurm / shell launch scripts instead;
* :mod:`smalllm.sweep.aggregate` builds the tidy per-cell x task table;
* :mod:`smalllm.sweep.report` draws heatmaps, the learned frontier and curves (``smalllm report``).
"""

from smalllm.sweep.grid import Cell, SweepSpec, expand, load_sweep, validate_cells
from smalllm.sweep.runner import run_sweep

__all__ = ["Cell", "SweepSpec", "expand", "load_sweep", "run_sweep", "validate_cells"]
