"""The arms page: named grids of a sweep compared per sub-skill at equal steps, paired on seeds."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import TINY_OVERRIDES

from smalllm.cli import main
from smalllm.labels import Label
from smalllm.sweep.aggregate import load_sweep_dir
from smalllm.sweep.arms import ArmRun, arm_runs, compare_arms
from smalllm.sweep.runner import run_sweep

LEGO = (
    "data.tasks=[{name: lego, frequency: 1.0, unit: example_fraction, placement: prefix,"
    " params: {num_vars: 2}, eval_size: 16}]"
)


def _run(arm: str, seed: int, finals: list[float]) -> ArmRun:
    skills = [Label("t", f"s{i}") for i in range(len(finals))]
    curves = {s: [(0, 0.5), (10, v)] for s, v in zip(skills, finals)}
    return ArmRun(arm, f"{arm}-{seed}", seed, skills, curves, {s: 1.0 for s in skills})


def test_comparison_by_hand() -> None:
    runs = [
        _run("random", 0, [0.5, 0.7]),
        _run("random", 1, [0.6, 0.6]),
        _run("skillit", 0, [0.9, 0.7]),
        _run("skillit", 1, [0.5, 0.5]),
    ]
    result = compare_arms(runs)
    assert result["baseline"] == "random"
    skillit = result["arms"]["skillit"]
    assert skillit["mean"] == pytest.approx({0: 0.8, 1: 0.5})
    assert skillit["vs_baseline"] == pytest.approx({0: 0.2, 1: -0.1})  # paired on the seed
    assert result["arms"]["random"]["per_skill"]["t/s0"] == pytest.approx([0.5, 0.6])


def test_sweep_of_two_arms_gets_an_arms_page(tmp_path) -> None:
    spec = {
        "name": "arms",
        "sweep_dir": str(tmp_path / "sweep"),
        "overrides": [*TINY_OVERRIDES, LEGO, "train.max_tokens=2048", "eval.samples=0"],
        "grids": [
            {
                "name": "random",
                "overrides": ["data.tasks.0.skill_weights=[1, 3]"],
                "data.mixture.policy": ["static"],
            },
            {
                "name": "stratified",
                "overrides": ["data.mixture.task=lego"],
                "data.mixture.policy": ["stratified"],
            },
        ],
        "seeds": {"data": [0, 1], "init": "data"},
    }
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = run_sweep(path, workers=1, report=False)
    assert results is not None and {r["state"] for r in results.values()} == {"done"}
    runs = arm_runs(load_sweep_dir(tmp_path / "sweep"))
    assert sorted((r.arm, r.seed) for r in runs) == [
        ("random", 0),
        ("random", 1),
        ("stratified", 0),
        ("stratified", 1),
    ]
    assert all(len(r.skills) == 2 and all(math.isfinite(r.curves[s][-1][1]) for s in r.skills) for r in runs)
    assert main(["report", str(tmp_path / "sweep")]) == 0
    page = (tmp_path / "sweep" / "report" / "arms.md").read_text()
    assert "| random | 2 |" in page and "| stratified |" in page and "Against `random`" in page
    assert (tmp_path / "sweep" / "report" / "arms_curves.png").is_file()
    assert (tmp_path / "sweep" / "report" / "arms_mixture.png").is_file()  # stratified logs its rounds
