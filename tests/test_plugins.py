"""Outside packages add tasks through the ``smalllm.tasks`` entry point: they train, their sub-skill
names reach every table whole, and a broken or clashing plug-in is named without hiding the others."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
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


class Slashed(Task):
    """A family whose sub-skill names contain '/', as a plug-in author may well write them."""

    name = "slashed"
    description = "Copy a bit (sub-skill a/x) or flip it (sub-skill b) (plug-in test task)"
    Params = Params

    @property
    def skills(self):
        return ["a/x", "b"]

    def setup(self, rng):
        self.bits = self.vocab.symbols(["0", "1"])
        self.marks = self.vocab.symbols(["c", "f"])

    def generate(self, rng, skill=0):
        bits = rng.integers(0, 2, size=self.params.length)
        prompt = (self.marks[skill], *(self.bits[b] for b in bits))
        return Instance(prompt, (self.bits[int(bits[0]) ^ skill],), skill)
'''

BROKEN = """
from smalllm.tasks import Instance, Task

from smalllm_plugin_demo import Params


class Clash(Task):
    name = "count_ones"
    description = "Takes a name another package has (plug-in test task)"
    Params = Params

    def generate(self, rng, skill=0):
        return Instance((1,), (1,))


class BadName(Clash):
    name = "bad/name"
"""


def pip_install(tmp_path: Path, packages: dict[str, tuple[str, dict[str, str]]]) -> Path:
    """Install each ``dist name: (module source, entry points)`` into a fresh target directory.

    The module is named after the distribution (dashes as underscores), so sources can import one
    another; returns the directory to put on PYTHONPATH.
    """
    sources = []
    for dist, (source, eps) in packages.items():
        pkg = tmp_path / "src" / dist
        module = dist.replace("-", "_")
        (pkg / module).mkdir(parents=True)
        (pkg / module / "__init__.py").write_text(textwrap.dedent(source))
        lines = "\n".join(f'{name} = "{value}"' for name, value in eps.items())
        (pkg / "pyproject.toml").write_text(
            textwrap.dedent(
                f"""
                [build-system]
                requires = ["setuptools"]
                build-backend = "setuptools.build_meta"

                [project]
                name = "{dist}"
                version = "0.0.1"

                [project.entry-points."smalllm.tasks"]
                """
            )
            + lines
            + "\n"
        )
        sources.append(str(pkg))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), *sources],
        check=True,
        capture_output=True,
    )
    return site


def smalllm_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    # Keep any PYTHONPATH already set: it decides which smalllm the subprocesses import.
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "smalllm.cli", *args], env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory) -> Path:
    """One installed distribution with two well-behaved task plug-ins."""
    eps = {"count_ones": "smalllm_plugin_demo:CountOnes", "slashed": "smalllm_plugin_demo:Slashed"}
    return pip_install(tmp_path_factory.mktemp("plugin"), {"smalllm-plugin-demo": (PLUGIN, eps)})


def test_outside_plugin_is_discovered_and_trains(tmp_path, demo_site):
    listed = smalllm_cli(demo_site, "tasks", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "count_ones" in listed.stdout

    run_dir = tmp_path / "run"
    trained = smalllm_cli(
        demo_site,
        "train",
        *TINY_OVERRIDES,
        "data.tasks=[{name: count_ones, frequency: 0.3, unit: example_fraction, params: {length: 4}}]",
        f"run_dir={run_dir}",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "eval/count_ones/acc" in (run_dir / "metrics.jsonl").read_text()
    assert '"train/count_ones/loss"' in (run_dir / "metrics.jsonl").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    # 2^4 bit strings, half held out: accuracy counts eighths; one answer token of 5 possible values.
    for rec in evals:
        assert (8 * rec["eval/count_ones/acc"]).is_integer() and 0 <= rec["eval/count_ones/acc"] <= 1
        assert rec["eval/count_ones/token_acc"] == rec["eval/count_ones/acc"]
        assert rec["eval/count_ones/loss_ratio"] == pytest.approx(rec["eval/count_ones/loss"] / math.log(5))
    trains = [r["train/count_ones/loss"] for r in records if "train/count_ones/loss" in r]
    assert trains and all(0 < loss < math.log(300) * 3 for loss in trains)


def test_a_skill_name_with_a_slash_reaches_every_table_whole(tmp_path, demo_site):
    sweep = {
        "name": "slashed",
        "sweep_dir": str(tmp_path / "sweep"),
        "overrides": [
            *TINY_OVERRIDES,
            "data.tasks=[{name: slashed, frequency: 0.3, unit: example_fraction, eval_size: 16}]",
        ],
        "grids": [{"model.preset": ["micro-w32"]}],
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    swept = smalllm_cli(demo_site, "sweep", str(tmp_path / "sweep.yaml"))
    assert swept.returncode == 0, swept.stderr[-2000:]
    (run,) = (tmp_path / "sweep" / "cells").glob("*/run")

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    last_train = [r for r in records if r["kind"] == "train"][-1]
    for skill in ("a/x", "b"):
        assert 0.0 <= last_eval[f"eval/slashed/{skill}/acc"] <= 1.0
        assert last_train[f"train/slashed/{skill}/loss"] > 0

    emergence = {(r["task"], r["skill"]): r for r in json.loads((run / "emergence.json").read_text())}
    assert set(emergence) == {("slashed", None), ("slashed", "a/x"), ("slashed", "b")}
    assert emergence[("slashed", "a/x")]["final_acc"] == last_eval["eval/slashed/a/x/acc"]

    summary = json.loads((run / "summary.json").read_text())
    realised = {f["label"]: f["realised"] for f in summary["frequencies"]}
    with open(tmp_path / "sweep" / "results.csv") as fh:
        rows = {(r["task"], r["skill"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("slashed", ""), ("slashed", "a/x"), ("slashed", "b")}
    row = rows[("slashed", "a/x")]
    assert float(row["final_acc"]) == last_eval["eval/slashed/a/x/acc"]
    assert int(row["instances"]) == realised["slashed/a/x"] > 0


@pytest.fixture(scope="module")
def troubled_site(tmp_path_factory) -> Path:
    """Two distributions that register one task name, a broken entry point and a bad task name."""
    demo = {"count_ones": "smalllm_plugin_demo:CountOnes", "slashed": "smalllm_plugin_demo:Slashed"}
    other = {
        "count_ones": "smalllm_plugin_other:Clash",
        "broken": "smalllm_plugin_other:DoesNotExist",
        "bad_name": "smalllm_plugin_other:BadName",
    }
    return pip_install(
        tmp_path_factory.mktemp("plugins"),
        {"smalllm-plugin-demo": (PLUGIN, demo), "smalllm-plugin-other": (BROKEN, other)},
    )


@pytest.fixture(scope="module")
def troubled_listing(troubled_site) -> subprocess.CompletedProcess:
    return smalllm_cli(troubled_site, "tasks", "list")


CLASH = "task 'count_ones' is registered by 'smalllm-plugin-demo 0.0.1' and 'smalllm-plugin-other 0.0.1'"


def test_broken_plugins_are_named_and_the_other_tasks_still_list(troubled_listing):
    assert troubled_listing.returncode == 0, troubled_listing.stderr[-2000:]
    lines = troubled_listing.stdout.splitlines()[2:]
    names = {line.split()[0] for line in lines if line and not line[0].isspace()}
    assert {"t_cmp", "copy", "fact_lookup", "slashed"} <= names
    assert not names & {"count_ones", "broken", "bad/name"}
    err = troubled_listing.stderr
    assert "task plug-in 'broken' (smalllm_plugin_other:DoesNotExist) of smalllm-plugin-other 0.0.1" in err
    assert "has no attribute 'DoesNotExist'" in err
    assert "task plug-in 'bad_name' (smalllm_plugin_other:BadName)" in err
    assert "task name 'bad/name': must be non-empty and contain no '/'" in err


def test_two_distributions_with_one_task_name_is_an_error_naming_both(troubled_site, troubled_listing):
    assert CLASH in troubled_listing.stderr
    shown = smalllm_cli(troubled_site, "tasks", "show", "count_ones")
    assert shown.returncode == 2
    last = shown.stderr.strip().splitlines()[-1]
    assert last.startswith("smalllm: error: ") and last.endswith(f"{CLASH}; uninstall all but one to use it")
