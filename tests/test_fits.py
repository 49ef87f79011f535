"""Scaling-law fits: known exponents recovered from noisy synthetic data, and `smalllm fit` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smalllm.sweep.fits import fit_law, lower_envelope, optimal_n, optimal_n_exponent

TRUE = {"E": 1.7, "A": 100.0, "alpha": 0.3, "B": 100.0, "beta": 0.25}
TOLERANCE = 0.05
"""Exponents and E are recovered within ±0.05 of the truth from data with 1% multiplicative noise."""


def _law(n, d=None):
    loss = TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"]
    return loss if d is None else loss + TRUE["B"] * d ** -TRUE["beta"]


def test_l_of_n_recovers_alpha_and_e_with_covering_intervals():
    rng = np.random.default_rng(1)
    sizes = np.repeat(np.geomspace(1e5, 1e8, 8), 2)  # 8 sizes x 2 seeds, one final loss per run
    loss = _law(sizes) * (1 + 0.01 * rng.standard_normal(sizes.size))
    fit = fit_law([sizes], loss, range(sizes.size), [("A", "alpha")], resamples=100, rng_seed=0)
    for key in ("alpha", "E"):
        assert fit.params[key] == pytest.approx(TRUE[key], abs=TOLERANCE)
        lo, hi = fit.ci[key]
        assert lo <= TRUE[key] <= hi
    assert fit.runs == 16 and fit.resamples == 100 and fit.rms_log_residual < 0.02


def test_l_of_n_d_recovers_both_exponents_from_all_evaluations():
    rng = np.random.default_rng(2)
    n, d, runs = [], [], []
    for size in np.geomspace(1e5, 1e7, 6):
        for budget in (1e7, 1e8, 1e9):
            for tokens in np.geomspace(budget / 30, budget, 6):  # the run's evaluations
                n.append(size)
                d.append(tokens)
                runs.append(f"{size:g}-{budget:g}")
    loss = _law(np.array(n), np.array(d)) * (1 + 0.01 * rng.standard_normal(len(n)))
    fit = fit_law(
        [n, d],
        loss,
        runs,
        [("A", "alpha"), ("B", "beta")],
        resamples=60,
        rng_seed=0,
        derived={"a_opt": optimal_n_exponent},
    )
    for key in ("alpha", "beta", "E"):
        assert fit.params[key] == pytest.approx(TRUE[key], abs=TOLERANCE)
        lo, hi = fit.ci[key]
        assert lo <= TRUE[key] <= hi
    true_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.params["a_opt"] == pytest.approx(true_a, abs=TOLERANCE)
    assert fit.ci["a_opt"][0] <= true_a <= fit.ci["a_opt"][1]
    assert fit.runs == 18 and fit.points == 108


def test_optimal_n_minimises_the_law_at_fixed_compute():
    compute = 1e15
    n_opt = optimal_n(TRUE, compute)
    grid = np.geomspace(n_opt / 10, n_opt * 10, 2001)
    losses = _law(grid, compute / (6 * grid))
    assert grid[np.argmin(losses)] == pytest.approx(n_opt, rel=0.01)


def test_lower_envelope_keeps_only_points_better_than_all_cheaper_ones():
    assert lower_envelope([1, 2, 3, 4, 5], [5.0, 4.0, 4.5, 3.0, 3.5]) == [0, 1, 3]


def test_too_few_points_are_refused():
    from smalllm.errors import SmalllmError

    with pytest.raises(SmalllmError, match="distinct points"):
        fit_law([[1e5, 1e6]], [3.0, 2.5], [0, 1], [("A", "alpha")])


# ---------------------------------------------------------------------------------------------- a sweep

SIZES = {"micro-w32": 65_536, "micro-w48": 147_456, "micro-w64": 262_144}
FREQS = [1e-3, 2e-3, 4e-3]


def _fake_scaling_sweep(tmp_path, presets=tuple(SIZES), freqs=tuple(FREQS)):
    """Sizes x frequencies, one seed, with background loss following L(N, D) and a task choice loss
    that falls as a power law in N and in frequency (written as runs would leave it)."""
    import yaml
    from conftest import TINY_OVERRIDES, TINY_TASKS

    from smalllm.config import save_config
    from smalllm.run_record import RunDir
    from smalllm.sweep.grid import cell_config, expand, parse_sweep, sweep_manifest
    from smalllm.sweep.records import cell_run, write_sweep_file

    raw = {
        "name": "scaling",
        "sweep_dir": str(tmp_path / "sweep"),
        "overrides": [*TINY_OVERRIDES, *TINY_TASKS],
        "grids": [{"model.preset": list(presets), "data.tasks.0.frequency": list(freqs)}],
        "seeds": {"data": [0], "init": "data"},
    }
    (tmp_path / "scaling.yaml").write_text(yaml.safe_dump(raw))
    spec = parse_sweep(raw, source=tmp_path / "scaling.yaml")
    cells = expand(spec)
    spec.sweep_dir.mkdir()
    write_sweep_file(spec.sweep_dir, sweep_manifest(spec, cells))
    rng = np.random.default_rng(0)
    for cell in cells:
        n = SIZES[cell.params["model.preset"]]
        freq = cell.params["data.tasks.0.frequency"]
        run = cell_run(spec.sweep_dir, cell.name)
        RunDir.create(run)
        save_config(cell_config(spec, cell), run.config_file)
        run.write_summary({"status": "completed", "params": 2 * n, "non_embedding_params": n})
        for tokens in (1e5, 3e5, 1e6, 3e6):
            noise = 1 + 0.005 * rng.standard_normal()
            run.append_metrics(
                {
                    "kind": "eval",
                    "step": int(tokens // 1000),
                    "tokens": int(tokens),
                    "eval/background/loss": float(_law(n, tokens) * noise),
                    "eval/t_cmp/acc": 0.5,
                    "eval/t_cmp/loss": 2.0,
                    "eval/t_cmp/choice_loss": float(50 * n**-0.3 * freq**-0.1 * noise),
                }
            )
    return spec.sweep_dir


def test_smalllm_fit_end_to_end(tmp_path, capsys):
    from smalllm.cli import main
    from smalllm.sweep.report import _fits_section

    sweep_dir = _fake_scaling_sweep(tmp_path)
    out = tmp_path / "fits"
    assert main(["fit", str(sweep_dir), "--out", str(out), "--resamples", "20"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"fits.json", "fits.md", "fit_loss_vs_params.png", "fit_loss_vs_compute.png"} <= names
    assert "fit_task_t_cmp.png" in names
    fits = json.loads((out / "fits.json").read_text())
    assert fits["L_N"]["runs"] == 9 and "alpha" in fits["L_N"]["ci"]
    assert fits["L_ND"]["points"] == 36 and math.isfinite(fits["L_ND"]["params"]["beta"])
    # The fake sweep follows the known law: its token exponent comes back end to end too.
    assert fits["L_ND"]["params"]["beta"] == pytest.approx(TRUE["beta"], abs=0.1)
    assert fits["frontier"]["points"] and "gamma" in fits["frontier"]["L_C"]["params"]
    by_size = [t for t in fits["tasks"] if t["vs"] == "size"]
    by_freq = [t for t in fits["tasks"] if t["vs"] == "frequency"]
    assert len(by_size) == 3 and len(by_freq) == 3 and by_size[0]["metric"] == "choice_loss"
    assert by_size[0]["params"]["alpha_N"] == pytest.approx(0.3, abs=0.05)
    assert by_freq[0]["params"]["alpha_f"] == pytest.approx(0.1, abs=0.05)
    assert "L(N, D)" in capsys.readouterr().out
    # The sweep report shows the table once fits.json sits in the sweep directory.
    assert _fits_section(sweep_dir) == []
    (sweep_dir / "fits.json").write_text((out / "fits.json").read_text())
    assert any("L(N) = E + A·N^-α" in line for line in _fits_section(sweep_dir))


def test_smalllm_fit_refuses_a_non_sweep_and_too_few_sizes(tmp_path, capsys):
    from smalllm.cli import main

    assert main(["fit", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smalllm: error:") and "not a sweep directory" in err and "\n" not in err
    sweep_dir = _fake_scaling_sweep(tmp_path, presets=("micro-w32", "micro-w48"), freqs=FREQS[:1])
    assert main(["fit", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 model size(s)" in err and "\n" not in err
