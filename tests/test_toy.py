"""The linear-mixture toy: its theory against closed forms, the batched student, and the experiments."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from smalllm.cli import main
from smalllm.errors import ConfigError
from smalllm.run_record import RunDir
from smalllm.toy import experiments as ex
from smalllm.toy import run as toy_run
from smalllm.toy import theory as th
from smalllm.toy.config import ToyConfig, config_from_dict, quick_preset
from smalllm.toy.model import Trainer, WidthStack, zipf_sampler
from smalllm.toy.run import load_toy_config

# ----------------------------------------------------------------------------------- theory


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_rank1_tasks_have_critical_width_k(beta):
    K = 12
    pi, lam = th.zipf_priors(K, beta), th.rank1_spectra(K, 3)
    assert th.critical_widths(pi, lam, 1)[:, 0].tolist() == list(range(1, K + 1))
    for k in range(K):
        others = th.mixture_eigenvalues(np.delete(pi, k), np.delete(lam, k, 0))
        more_frequent = th.mixture_eigenvalues(pi[:k], lam[:k])
        assert th.prop6_critical_width(others, pi[k]) == k + 1
        assert th.prop6_critical_width(more_frequent, pi[k]) == k + 1


def test_two_tasks_by_hand():
    # pi = (2/3, 1/3) (beta = 1), lambda = (1, 1/4) (alpha = 2): utilities 2/3, 1/6 | 1/3, 1/12,
    # so the order is (1,1), (2,1), (1,2), (2,2).
    pi, lam = th.zipf_priors(2, 1.0), th.power_spectra(2, 2, 2.0)
    assert np.allclose(pi, [2 / 3, 1 / 3]) and np.allclose(lam, [[1, 0.25], [1, 0.25]])
    assert th.feature_order(pi, lam).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert th.critical_widths(pi, lam, 2).tolist() == [[1, 3], [2, 4]]
    assert th.optimal_counts(pi, lam, 3).tolist() == [2, 1]
    assert th.predicted_loss(pi, lam, 1).tolist() == [0.25, 1.25]
    assert th.predicted_loss(pi, lam, 3).tolist() == [0.0, 0.25]
    assert np.allclose(th.predicted_normalised_loss(pi, lam, 2), [0.2, 0.2])
    # Prop. 6 for task 2's leading feature against F = {task 1}: mu^F = (2/3, 1/6), pi_2 = 1/3.
    mu = th.mixture_eigenvalues(pi, lam, np.array([0]))
    assert np.allclose(mu, [2 / 3, 1 / 6])
    assert th.prop6_critical_width(mu, 1 / 3) == 2
    assert th.frequent_residual_at_optimum(mu, 2) == pytest.approx(1 / 6)


def test_ties_go_to_the_more_frequent_task():
    pi, lam = th.zipf_priors(2, 2.0), th.power_spectra(2, 2, 2.0)  # u_{1,2} = u_{2,1}
    assert th.feature_order(pi, lam).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_frequent_set_definitions():
    # The note's recomputation for K = 32 and mass 0.8: |F| = 22, 14, 6, 3.
    sizes = [len(th.frequent_set(th.zipf_priors(32, b), 0.8)) for b in (0.5, 1.0, 1.5, 2.0)]
    assert sizes == [22, 14, 6, 3]
    assert th.frequent_set(th.zipf_priors(32, 1.0), count=6).tolist() == list(range(6))
    assert th.frequent_set(th.zipf_priors(4, 0.0), 1.0).tolist() == [0, 1, 2, 3]


def test_captured_signal_and_residual_closed_forms():
    D, K, d = 12, 3, 4
    pi, lam = th.zipf_priors(K, 1.0), th.power_spectra(K, d, 1.0)
    cov = th.diagonal_covariances(lam, D)
    basis = np.eye(D)[:, [0, 1, 4]]  # task 1's two leading directions and task 2's first
    s = th.captured_signal(basis, cov)
    energy = 1 + 1 / 2 + 1 / 3 + 1 / 4
    assert np.allclose(s, [1.5 / energy, 1 / energy, 0])
    assert np.allclose(th.corrected_signal(np.array([3 / 12, 1.0]), 3, 12), [0, 1])
    residual = th.frequent_residual(basis, pi, cov, np.array([0, 1]))
    assert residual == pytest.approx(pi[0] * (energy - 1.5) + pi[1] * (energy - 1))


@pytest.mark.parametrize("width", [1, 3, 8, 20])
def test_thm4_bound_holds_on_random_subspaces(width):
    rng = np.random.default_rng(width)
    D, K, d = 40, 6, 5
    pi = rng.dirichlet(np.ones(K))
    lam = np.sort(rng.uniform(0.01, 2.0, (K, d)), axis=1)[:, ::-1]
    cov = th.diagonal_covariances(lam, D)
    frequent = np.array([0, 2, 3])
    m_f = np.diag(pi[frequent] @ cov[frequent])
    for _ in range(20):
        basis = th.orthonormal_basis(rng.standard_normal((width, D)))
        residual = th.frequent_residual(basis, pi, cov, frequent)
        project = np.eye(D) - basis @ basis.T
        assert residual == pytest.approx(np.trace(project @ m_f))
        grad = th.riemannian_gradient(basis, np.diag(m_f))
        assert np.allclose(grad, 2 * project @ m_f @ basis)
        assert np.linalg.norm(grad) <= th.thm4_bound(pi, cov, frequent, residual) + 1e-12


def test_one_neuron_decay_matches_riemannian_steps():
    # One neuron u on the sphere, common task C = lam e1 e1^T, rare alignment theta along e2.
    eta, lam, theta0 = 0.01, 1.5, 1e-3
    u = np.array([1.0, theta0, 0.0])
    u /= np.linalg.norm(u)
    cov = np.array([lam, 0.0, 0.0])
    thetas = []
    for _ in range(200):
        u = u + eta * th.riemannian_gradient(u[:, None], cov)[:, 0]
        u /= np.linalg.norm(u)
        thetas.append(u[1] / u[0])
    predicted = th.one_neuron_decay(eta, np.arange(1, 201), lam) * theta0
    assert np.allclose(thetas, predicted, rtol=1e-4)
    assert th.one_neuron_decay_exponential(eta, 200, lam) == pytest.approx(np.exp(-6.0))


def test_empirical_critical_width_and_rungs_by_hand():
    # One task, lambda = (1, 1/4), Tr C = 5/4. Feature 1 is gained below 1 - 0.5 * 1 / 1.25 = 0.6,
    # feature 2 below 1 - (1 + 0.5 / 4) / 1.25 = 0.1.
    lam = np.array([[1.0, 0.25]])
    loss = np.array([[1.0], [0.5], [0.09]])
    got = ex.empirical_critical_widths(loss, lam, [1, 2, 4], learned=0.5)
    assert got[0, :2].tolist() == [2.0, 4.0] and np.isnan(got[0, 2])
    assert [ex.rung_index([1, 2, 4], v) for v in (1, 3, 4, 5, float("nan"))] == [0, 2, 2, 3, 3]


def test_rank1_match_compares_grid_rungs():
    # Grid (1, 2, 4): N_crit = 3 is first reachable at width 4, so N_emp = 4 is on its rung; task 2
    # learned only at width 4 is a rung late; task 5 (N_crit = 5) lies beyond the grid and is left out.
    matches = ex.rank1_matches([1, 2, 4], [1, 4, 4, 4, None], [1, 2, 3, 4, 5])
    assert matches == [True, False, True, True]
    assert ex.rank1_matches([1, 2, 3], [1, None, 3], [1, 2, 3]) == [True, False, True]


def test_injection_counts_match_the_iid_frequency():
    # G = 3, B = 4, rho = 1/2: k = 1 asks for round(4 * 4 / 2) = 8 samples, two batches; k = 2 asks
    # for 10, three batches; k = 3 asks for round(6 * 4 / 2) = 12 = 3 full batches: consistent.
    assert ex.injection_counts(3, 4, 0.5) == [4, 4, 4]
    # One batch is enough: round((16 + 1) * 256 * 0.01) = round(43.52) = 44 rare samples.
    assert ex.injection_counts(16, 256, 0.01) == [44]
    # The quick preset's G = 256 (rho = pi_8 at beta = 2, B = 256): round(259 * 256 * rho) = 678 over
    # 3 steps, so the rare share of the 259-step cycle is rho up to rounding.
    rho = float(th.zipf_priors(8, 2.0)[-1])
    counts = ex.injection_counts(256, 256, rho)
    assert counts == [226, 226, 226]
    assert abs(sum(counts) / (259 * 256) - rho) <= 0.5 / (259 * 256)
    with pytest.raises(ValueError, match="rho"):
        ex.injection_counts(4, 8, 1.0)


def test_retention_spreads_a_large_injection_over_full_batches(monkeypatch):
    # Uniform priors over 4 tasks (rho = 1/4), G = 8, B = 64: k = 3 steps carrying
    # round(11 * 64 / 4) = 176 = 59 + 59 + 58 rare samples (task 4) among 64 each.
    cfg = config_from_dict(tiny_config(), quick_preset(), "tiny")
    cfg.retention = dataclasses.replace(cfg.retention, beta=0.0, gaps=[8], widths=[2])
    batches: list[torch.Tensor] = []
    original = Trainer.train_step

    def spy(self, tasks):
        batches.append(tasks.clone())
        return original(self, tasks)

    monkeypatch.setattr(Trainer, "train_step", spy)
    records: list[dict] = []
    result = ex.run_retention(cfg, torch.device("cpu"), records.append)
    gap = result["per_gap"][0]
    assert (gap["injected_samples"], gap["injection_steps"]) == (176, 3)
    steps = {(r["cycle"], r["phase"]): r["step"] for r in records}
    assert [steps[(c, "after")] - steps[(c, "before")] for c in range(2)] == [3, 3]
    warmup, cycle = cfg.train.steps, 8 + 3
    for c in range(2):
        withheld = batches[warmup + c * cycle : warmup + c * cycle + 8]
        assert all((b != 3).all() for b in withheld)
        injected = batches[warmup + c * cycle + 8 : warmup + (c + 1) * cycle]
        assert [len(b) for b in injected] == [64, 64, 64]
        assert [int((b == 3).sum()) for b in injected] == [59, 59, 58]
    one_task = dataclasses.replace(cfg, tasks=dataclasses.replace(cfg.tasks, num_tasks=1))
    with pytest.raises(ConfigError, match="^toy.tasks.num_tasks: the retention experiment needs"):
        ex.run_retention(one_task, torch.device("cpu"), records.append)


# ---------------------------------------------------------------------------------- student


def test_population_loss_of_a_planted_optimum_is_the_theory():
    D, K, d = 16, 3, 4
    pi, lam = th.zipf_priors(K, 1.0), th.power_spectra(K, d, 2.0)
    stack = WidthStack([3, 5], lam, D, seed=0)
    with torch.no_grad():
        stack.weight.zero_()
        stack.decoder.zero_()
        for i, width in enumerate(stack.widths):
            for n, (k, j) in enumerate(th.feature_order(pi, lam)[:width]):
                row = stack.offsets[i] + n
                stack.weight[row, k * d + j] = 1.0
                stack.decoder[k, j, row] = float(np.sqrt(lam[k, j]))
    exact = stack.normalised_loss()
    for i, width in enumerate(stack.widths):
        assert np.allclose(exact[i], th.predicted_normalised_loss(pi, lam, width))
    # The Monte-Carlo batch loss agrees with the exact one (mixture-weighted, 1e5 samples).
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, D, generator=gen)
    tasks = torch.multinomial(torch.as_tensor(pi, dtype=torch.float32), 100_000, True, generator=gen)
    sampled = stack.loss_per_width(x, tasks).detach().numpy()
    expected = [(pi * exact[i] * lam.sum(1)).sum() for i in range(2)]
    assert np.allclose(sampled, expected, rtol=0.03)


def test_widths_train_independently_and_repeat_exactly():
    D, K, d = 24, 4, 3
    pi, lam = th.zipf_priors(K, 1.0), th.power_spectra(K, d, 2.0)

    def train(widths):
        stack = WidthStack(widths, lam, D, seed=3)
        Trainer(stack, 1e-2, 5, 0.01, 1.0).run(30, zipf_sampler(pi, 64, stack.device), 30)
        return stack

    both, alone, again = train([2, 5]), train([2]), train([2, 5])
    assert torch.allclose(both.weight[:2], alone.weight, atol=1e-5)
    assert torch.allclose(both.decoder[:, :, :2], alone.decoder, atol=1e-5)
    assert torch.equal(both.weight, again.weight) and torch.equal(both.decoder, again.decoder)


def test_clipping_is_per_width():
    lam = th.power_spectra(2, 2, 2.0)
    stack = WidthStack([1, 2], lam, 8, seed=0)
    stack.weight.grad = torch.zeros_like(stack.weight)
    stack.decoder.grad = torch.zeros_like(stack.decoder)
    stack.weight.grad[0, 0] = 3.0  # width 1: norm 5 -> clipped to 1
    stack.decoder.grad[0, 0, 0] = 4.0
    stack.weight.grad[1, 0] = 0.5  # width 2: norm 0.5, left alone
    norms = stack.clip_per_width_(1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5])
    assert stack.weight.grad[0, 0].item() == pytest.approx(0.6, rel=1e-5)
    assert stack.decoder.grad[0, 0, 0].item() == pytest.approx(0.8, rel=1e-5)
    assert stack.weight.grad[1, 0].item() == 0.5


# ---------------------------------------------------------------------------- config and CLI


def test_config_errors_name_the_field(tmp_path):
    cfg = quick_preset()
    cfg.tasks.block = 32
    with pytest.raises(ConfigError, match=r"^toy.tasks.block: num_tasks \* block = 256 exceeds dim = 128$"):
        cfg.validate()
    cfg = quick_preset()
    cfg.widths = [4, 2]
    with pytest.raises(ConfigError, match="toy.widths: must be strictly increasing"):
        cfg.validate()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"toy.train.stpes: unknown field.*steps"):
        load_toy_config("quick", str(bad))


def test_cli_refuses_a_bad_config_in_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metrics:\n  frequent_mass: 1.5\n")
    out = tmp_path / "run"
    assert main(["toy", "rank1", "--config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "smalllm: error: toy.metrics.frequent_mass: must be in (0, 1], got 1.5"
    assert main(["toy", "rank1", "--device", "gpu0", "--out", str(out)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "smalllm: error: --device: 'gpu0' is not a torch device (try cpu or cuda)"
    )
    assert not out.exists()
    # --overwrite replaces toy runs only: a language-model run in the wrong --out is left alone.
    lm_run = RunDir(tmp_path / "lm")
    lm_run.create()
    lm_run.write_summary({"status": "completed"})
    before = sorted(p.name for p in lm_run.path.iterdir())
    assert main(["toy", "rank1", "--out", str(lm_run.path), "--overwrite"]) == 2
    assert "not a toy run" in capsys.readouterr().err
    assert sorted(p.name for p in lm_run.path.iterdir()) == before


def tiny_config() -> dict:
    return {
        "tasks": {"dim": 32, "num_tasks": 4, "block": 4, "betas": [1.0]},
        "widths": [1, 2, 4, 8],
        "train": {"steps": 40, "batch_size": 64, "eval_every": 20},
        "retention": {"widths": [2, 8], "gaps": [4, 8], "cycles": 2, "batch_size": 64},
        "rank1": {"num_tasks": 4, "widths": [1, 2, 4], "steps": 40},  # a grid with a gap
    }


def test_cli_all_writes_a_run_directory(tmp_path, capsys):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "run"
    assert main(["toy", "all", "--config", str(config), "--out", str(out), "--no-tensorboard"]) == 0
    run = RunDir(out)
    summary = run.read_summary()
    assert summary["status"] == "completed" and summary["kind"] == "toy"
    assert sorted(p.name for p in run.report_dir.iterdir()) == [
        "a_heatmap.png",
        "b_signal.png",
        "c_retention.png",
        "d_rank1.png",
    ]
    results = summary["results"]
    assert results["heatmap"][0]["critical_width_theory"][0] == [1.0, 4.0, 7.0]
    assert results["rank1"]["n_crit_thm3"] == [1, 2, 3, 4]
    # G = 8, B = 64, rho = pi_4 at beta = 2: round((8 + 1) * 64 * rho) = round(25.3) in one step.
    assert results["retention"]["per_gap"][1]["injected_samples"] == round(
        (8 + 1) * 64 * (1 / 16) / (1 + 1 / 4 + 1 / 9 + 1 / 16)
    )
    assert results["retention"]["per_gap"][1]["injection_steps"] == 1
    records = run.read_metrics()
    grid = [r for r in records if r["experiment"] == "grid"]
    assert {r["step"] for r in grid} == {0, 20, 40} and len(grid) == 3 * 4
    assert all(r["grad_F"] <= r["grad_F_bound"] + 1e-9 for r in grid)
    saved = yaml.safe_load(run.config_file.read_text())
    assert saved["tasks"]["dim"] == 32 and saved["train"]["lr"] == quick_preset().train.lr
    # A second run into the same directory needs --overwrite.
    assert main(["toy", "rank1", "--config", str(config), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["toy", "rank1", "--config", str(config), "--out", str(out), "--overwrite"]) == 0
    assert run.read_summary()["experiment"] == "rank1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.yaml"]  # the old run is gone
    assert [p.name.startswith("events.out.tfevents") for p in run.tracker_dir.iterdir()] == [True]
    assert sorted(p.name for p in run.report_dir.iterdir()) == ["d_rank1.png"]


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_to_start(tmp_path, monkeypatch):
    old = RunDir(tmp_path / "run")
    old.create()
    old.write_summary({"status": "completed", "kind": "toy", "experiment": "rank1"})
    old.append_metrics({"experiment": "rank1", "step": 40})
    before = {p.name: p.read_bytes() for p in old.path.iterdir() if p.is_file()}

    def broken_logger(run, tensorboard):
        raise OSError(28, "No space left on device")

    # The logger is the last thing set up: by then the new run has its config and status written.
    monkeypatch.setattr(toy_run, "_Logger", broken_logger)
    cfg = config_from_dict(tiny_config(), quick_preset(), "tiny")
    with pytest.raises(OSError, match="No space left"):
        toy_run.run_toy("rank1", cfg, old.path, overwrite=True, tensorboard=False)
    after = {p.name: p.read_bytes() for p in old.path.iterdir() if p.is_file()}
    assert after == {**before, ".lock": b""}  # the old run, plus the lock file its replacement took
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing left aside
    assert old.lock_holder() is None
    assert old.read_metrics() == [{"experiment": "rank1", "step": 40}]


# ------------------------------------------------------------------------ acceptance (slow)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_quick_critical_widths_within_one_rung(beta):
    cfg = quick_preset()
    grid = ex.train_grid(cfg, beta, torch.device("cpu"), lambda record: None)
    result = ex.heatmap_result(cfg, grid)
    assert result["max_abs_rung_error"] <= 1, result["first_feature_rung_error"]


def test_quick_rank1_matches_theory():
    cfg = quick_preset()
    result = ex.run_rank1(cfg, torch.device("cpu"), lambda record: None)
    assert result["n_crit_thm3"] == list(range(1, cfg.rank1.num_tasks + 1))
    assert result["match_fraction"] >= 0.9, result["n_emp"]


def test_default_config_is_the_papers():
    cfg = ToyConfig()
    assert (cfg.tasks.dim, cfg.tasks.num_tasks, cfg.tasks.alpha, cfg.train.batch_size) == (
        1024,
        32,
        2.0,
        1024,
    )
    assert cfg.tasks.betas == [0.5, 1.0, 1.5, 2.0]
    assert dataclasses.asdict(load_toy_config("paper")) == dataclasses.asdict(cfg)
    json.dumps(dataclasses.asdict(cfg))  # the config is plain data (it is saved with the run)
