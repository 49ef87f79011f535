"""The Python API's surface: cheap import, callable ``smalllm.train``/``smalllm.sweep``, overrides.

The end-to-end example (train, load_run, evaluate, sweep) is docs/api.md, run by tests/test_docs.py.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import smalllm
from smalllm.errors import SmalllmError

ROOT = Path(__file__).resolve().parents[1]


def test_import_smalllm_loads_neither_torch_nor_transformers():
    code = (
        "import sys, smalllm\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'omegaconf') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == ""


def test_train_and_sweep_are_their_callable_packages():
    import smalllm.train.trainer  # noqa: F401  (sets smalllm.train to the package, as any import does)

    assert isinstance(smalllm.train, types.ModuleType) and callable(smalllm.train)
    assert isinstance(smalllm.sweep, types.ModuleType) and callable(smalllm.sweep)
    from smalllm.train.api import evaluate, load_run

    assert smalllm.load_run is load_run and smalllm.evaluate is evaluate
    with pytest.raises(AttributeError):
        _ = smalllm.no_such_function


def test_overrides_from_keywords_and_mappings():
    from smalllm.train.api import override_strings, resolve_config

    assert override_strings({"train.lr": 1e-3, "model.preset": "1e-3", "run_dir": Path("a/b")}) == [
        "train.lr=0.001",
        'model.preset="1e-3"',
        'run_dir="a/b"',
    ]
    cfg = resolve_config({"model": {"preset": "micro-w32"}}, {"train.lr": 1e-3, "run_dir": "runs/x"})
    assert (cfg.model.preset, cfg.model.arch, cfg.train.lr, cfg.run_dir) == (
        "micro-w32",
        "olmo",
        1e-3,
        "runs/x",
    )
    again = resolve_config(cfg, {"train.lr": 2e-3})  # a RunConfig is validated like a file
    assert (again.model.preset, again.train.lr) == ("micro-w32", 2e-3)


def test_bad_input_is_one_line():
    with pytest.raises(SmalllmError, match=r"^train\.lrr: unknown key"):
        smalllm.train(**{"train.lrr": 1.0})
    with pytest.raises(SmalllmError, match=r"^config: 'nope\.yaml' not found"):
        smalllm.train("nope.yaml")
    with pytest.raises(SmalllmError, match="is not a run directory"):
        smalllm.load_run(ROOT / "docs")
