"""An outside package adds a task through the ``smalllm.tasks`` entry point and trains with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import TINY_OVERRIDES

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from smalllm.tasks import Instance, Task


@dataclass
class Params:
    length: int = 3
    """Digits to count."""


class CountOnes(Task):
    name = "count_ones"
    description = "How many 1s in a bit string (plug-in test task)"
    Params = Params

    def setup(self, rng):
        self.bits = self.vocab.symbols(["0", "1"])
        self.digits = self.vocab.symbols([str(d) for d in range(10)])

    def generate(self, rng, skill=0):
        bits = rng.integers(0, 2, size=self.params.length)
        return Instance(tuple(self.bits[b] for b in bits), (self.digits[int(bits.sum())],))

    def answer_space(self, skill=0):
        return self.params.length + 1
'''


def test_outside_plugin_is_discovered_and_trains(tmp_path):
    pkg = tmp_path / "plugin_src"
    (pkg / "smalllm_plugin_demo").mkdir(parents=True)
    (pkg / "smalllm_plugin_demo" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "smalllm-plugin-demo"
            version = "0.0.1"

            [project.entry-points."smalllm.tasks"]
            count_ones = "smalllm_plugin_demo:CountOnes"
            """
        )
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(pkg),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run(
        [sys.executable, "-m", "smalllm.cli", "tasks", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "count_ones" in listed.stdout

    run_dir = tmp_path / "run"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "smalllm.cli",
            "train",
            *TINY_OVERRIDES,
            "data.tasks=[{name: count_ones, frequency: 0.3, unit: example_fraction, params: {length: 4}}]",
            f"run_dir={run_dir}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "eval/count_ones/acc" in (run_dir / "metrics.jsonl").read_text()
    assert '"train/count_ones/loss"' in (run_dir / "metrics.jsonl").read_text()
