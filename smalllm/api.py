"""The Python API in one place (``docs/api.md``): what ``import smalllm`` exposes lazily.

``smalllm.train`` and ``smalllm.sweep`` are the (callable) subpackages of those names; the
functions behind them are re-exported here under names that do not collide with the packages.
"""

from __future__ import annotations

from smalllm.sweep.runner import run_sweep
from smalllm.sweep.skills_graph import estimate_skills_graph
from smalllm.train.api import Run, evaluate, load_run, override_strings, resolve_config
from smalllm.train.api import train as train_run

__all__ = [
    "Run",
    "estimate_skills_graph",
    "evaluate",
    "load_run",
    "override_strings",
    "resolve_config",
    "run_sweep",
    "train_run",
]
