"""Representation probes: the Fourier-mode count and the linear probe on planted structure, and
``smalllm probe`` end to end on a tiny run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error, tiny_config

from smalllm.cli import main
from smalllm.eval.probes import (
    class_means,
    control_r2,
    fourier_mode_count,
    linear_probe_r2,
    shuffled_target,
)
from smalllm.run_record import RunDir, refuse_foreign
from smalllm.train.trainer import train


def _modular_embedding(p: int, freqs: tuple[int, ...], d: int, noise: float, seed: int) -> np.ndarray:
    """P classes embedded as cos/sin(2πk·a/P) for each k in ``freqs``, mixed into d dims, plus noise."""
    rng = np.random.default_rng(seed)
    a = np.arange(p)
    waves = np.stack([f(2 * np.pi * k * a / p) for k in freqs for f in (np.cos, np.sin)], axis=1)
    return waves @ rng.normal(size=(waves.shape[1], d)) + noise * rng.normal(size=(p, d))


def test_fourier_mode_count_finds_the_planted_modes() -> None:
    modes = fourier_mode_count(_modular_embedding(23, (3, 7), d=64, noise=0.1, seed=0))
    assert modes.modes == [3, 7]
    assert modes.count == 2
    assert len(modes.fractions) == 11  # k = 1 .. (P-1)/2
    assert math.isclose(sum(modes.fractions), 1.0)
    assert modes.p_null == pytest.approx(2 / 22) and modes.threshold == pytest.approx(4 / 22)
    # The planted modes carry nearly all the variance, the others nearly none.
    assert modes.fractions[2] + modes.fractions[6] > 0.95


def test_fourier_mode_count_of_noise_and_of_an_unpaired_nyquist_mode() -> None:
    noise = np.random.default_rng(1).normal(size=(23, 64))
    assert fourier_mode_count(noise).count == 0
    # At even P the frequency P/2 has no partner: (-1)^a is one mode on its own.
    a = np.arange(12)
    alternating = np.outer((-1.0) ** a, np.ones(8)) + 0.01 * np.random.default_rng(2).normal(size=(12, 8))
    modes = fourier_mode_count(alternating)
    assert modes.modes == [6] and len(modes.fractions) == 6
    # Means that do not vary: no spectrum, no mode.
    assert fourier_mode_count(np.ones((7, 4))).count == 0


def test_class_means_names_the_missing_classes() -> None:
    x = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    means, missing = class_means(x, np.array([0, 0, 2]), 4)
    assert np.allclose(means[0], [2.0, 1.0]) and np.allclose(means[2], [5.0, 5.0])
    assert missing == [1, 3]


def _token_features(tokens: int, per_token: int, d: int, seed: int) -> tuple[np.ndarray, ...]:
    """Features of ``tokens`` tokens (``per_token`` noisy samples each) holding a planted linear
    feature: the token's value along one direction, beside a random token identity."""
    rng = np.random.default_rng(seed)
    value = rng.permutation(tokens).astype(float)
    groups = np.repeat(np.arange(tokens), per_token)
    direction = rng.normal(size=d)
    identity = 0.3 * rng.normal(size=(tokens, d))
    scaled = (value - value.mean()) / value.std()
    x = np.outer(scaled, direction)[groups] + identity[groups] + 0.05 * rng.normal(size=(len(groups), d))
    return x, value[groups], groups


def test_linear_probe_recovers_a_planted_feature_and_not_a_random_one() -> None:
    x, y, groups = _token_features(tokens=60, per_token=3, d=48, seed=0)
    r2 = linear_probe_r2(x, y, groups)
    assert r2 > 0.95
    # Folds over tokens: the probe is scored on tokens it never saw, and still finds the direction.
    unrelated = np.random.default_rng(5).permutation(60).astype(float)[groups]
    assert linear_probe_r2(x, unrelated, groups) < 0.2
    assert control_r2(x, y, groups, repeats=3) < 0.2
    # Samples without groups (each its own) and a target of pure noise.
    noise = np.random.default_rng(6).normal(size=len(y))
    assert linear_probe_r2(x, noise) < 0.2
    # Deterministic for a seed.
    assert linear_probe_r2(x, y, groups, seed=3) == linear_probe_r2(x, y, groups, seed=3)


def test_linear_probe_uses_at_most_the_requested_components() -> None:
    x, y, groups = _token_features(tokens=60, per_token=2, d=48, seed=1)
    # The feature lies along one direction, so one component is enough to find it.
    assert linear_probe_r2(x, y, groups, n_components=1) > 0.9
    with pytest.raises(ValueError, match="groups"):
        linear_probe_r2(x, y, np.zeros(len(y)))
    with pytest.raises(ValueError, match="constant"):
        linear_probe_r2(x, np.ones(len(y)), groups)


def test_shuffled_target_keeps_one_value_per_group() -> None:
    groups = np.array([0, 0, 1, 2, 2, 2])
    y = np.array([5.0, 5.0, 7.0, 9.0, 9.0, 9.0])
    z = shuffled_target(y, groups, np.random.default_rng(0))
    assert sorted(set(z)) == [5.0, 7.0, 9.0]
    assert z[0] == z[1] and z[3] == z[4] == z[5]


PROBE_TASKS = (
    "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32},"
    " {name: t_add, frequency: 0.01, params: {num_values: 11}, eval_size: 32},"
    " {name: copy, frequency: 0.05, unit: example_fraction, placement: document, params: {length: 4}, eval_size: 16}]"
)


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, corpus_cache) -> Path:
    """A tiny run with T_CMP, T_ADD and copy, checkpointed twice (steps 16 and 32)."""
    run_dir = tmp_path_factory.mktemp("probes") / "run"
    cfg = tiny_config(run_dir, "train.device=cpu", "train.checkpoint_every=16", PROBE_TASKS)
    assert train(cfg, log=lambda _m: None)["status"] == "completed"
    return run_dir


def test_smalllm_probe_end_to_end(probed_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(probed_run, run)
    capsys.readouterr()
    assert main(["probe", str(run)]) == 0
    out = capsys.readouterr().out
    assert "t_cmp step 32: R² by layer" in out
    result = json.loads(RunDir(run).probes_file.read_text())
    layers = 4 + 1  # micro-w32: 4 blocks, and the embeddings as layer 0
    assert set(result["tasks"]) == {"t_cmp", "t_add"}
    assert "held-out" in result["instances"]

    cmp_ = result["tasks"]["t_cmp"]
    assert cmp_["probe"] == "linear" and cmp_["num_values"] == 20
    assert [c["step"] for c in cmp_["steps"]] == [16, 32]
    for record in cmp_["steps"]:
        assert [e["layer"] for e in record["layers"]] == list(range(layers))
        for e in record["layers"]:
            assert math.isfinite(e["r2"]) and math.isfinite(e["r2_control"])
            assert e["r2"] <= 1.0 and e["r2_control"] < 0.5
            # Both operands of every held-out instance read (190 = half of 20·19 pairs).
            assert e["n"] == 2 * 190 and e["tokens"] == 20

    add = result["tasks"]["t_add"]
    assert add["probe"] == "fourier" and add["modulus"] == 11
    assert add["p_null"] == pytest.approx(0.2)
    for record in add["steps"]:
        assert len(record["layers"]) == layers
        assert all(isinstance(e["modes"], int) and len(e["fractions"]) == 5 for e in record["layers"])
        assert record["modes_total"] == sum(e["modes"] for e in record["layers"])

    report = RunDir(run).report_dir
    for name in ("t_cmp_r2_by_layer", "t_cmp_r2_by_step", "t_add_modes_by_layer", "t_add_modes_by_step"):
        assert (report / f"probe_{name}.png").stat().st_size > 0
    refuse_foreign(run, "run", "run_dir")  # everything it wrote is the run's own: still replaceable

    # One checkpoint, one task, results elsewhere; the same numbers as the full pass at that step.
    out_dir = tmp_path / "probes"
    assert main(["probe", str(run), "--checkpoints", "16", "--task", "t_cmp", "--out", str(out_dir)]) == 0
    alone = json.loads((out_dir / "probes.json").read_text())
    assert list(alone["tasks"]) == ["t_cmp"]
    assert alone["tasks"]["t_cmp"]["steps"] == cmp_["steps"][:1]
    assert (out_dir / "probe_t_cmp_r2_by_layer.png").is_file()


def test_smalllm_probe_refuses_with_one_line(probed_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(probed_run, run)

    def refused(args: list[str], expect: str) -> None:
        capsys.readouterr()
        rc = main(["probe", *args])
        out, err = capsys.readouterr()
        assert_one_line_error(rc, out, err, expect)

    refused([str(run), "--task", "copy"], "--task: 'copy' has no probe")
    refused([str(run), "--task", "t_cpm"], "did you mean 't_cmp'?")
    refused([str(run), "--checkpoints", "7"], "no checkpoint at step 7 (it has 16, 32)")
    refused([str(run), "--checkpoints", "first"], "--checkpoints: expected all, last or steps")
    refused([str(tmp_path / "nowhere")], "is not a directory")
    assert not RunDir(run).probes_file.exists()

    # A run being written (trained, evaluated, probed) by another process is not written into.
    writer = RunDir(run)
    writer.acquire()
    try:
        refused([str(run)], f"run_dir: '{run}' is in use by pid ")
    finally:
        writer.release()
    assert not RunDir(run).probes_file.exists()

    # A run that trains neither probed task.
    config = yaml.safe_load(RunDir(run).config_file.read_text())
    config["data"]["tasks"] = [t for t in config["data"]["tasks"] if t["name"] == "copy"]
    RunDir(run).config_file.write_text(yaml.safe_dump(config))
    refused([str(run)], "trains no task a probe reads (t_add, t_cmp)")

    # A run without checkpoints.
    shutil.rmtree(RunDir(run).checkpoints_dir)
    refused([str(run)], "has no complete checkpoint to probe")
    assert not RunDir(run).probes_file.exists()
