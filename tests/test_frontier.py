"""The frontier estimate: crossing interpolation, bounds, the seed bootstrap, and exchange rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smalllm.sweep.frontier import (
    ABOVE,
    BELOW,
    bootstrap_mean_ci,
    crossing_frequency,
    estimate_frontier,
    seed_means,
)

FREQS = [1e-3, 2e-3, 4e-3, 8e-3]


def test_crossing_interpolates_on_log_frequency():
    # Highest miss at 2e-3 (0.7), met at 4e-3 (0.95): 0.9 is 0.8 of the way, on log f.
    c = crossing_frequency(FREQS, [0.5, 0.7, 0.95, 0.99], 0.9)
    assert c.value == pytest.approx(2e-3 * 2**0.8) and c.bracket == (2e-3, 4e-3) and c.bound is None
    # Lower is better (loss ratio): highest frequency still above 0.6 is 2e-3 (0.8); 0.5 at 4e-3.
    c = crossing_frequency(FREQS, [1.0, 0.8, 0.5, 0.3], 0.6, higher_is_better=False)
    assert c.value == pytest.approx(2e-3 * 2 ** (2 / 3)) and c.bracket == (2e-3, 4e-3)
    # A value exactly at the threshold meets it.
    assert crossing_frequency(FREQS, [0.1, 0.2, 0.5, 1.0], 0.5).value == pytest.approx(4e-3)


def test_non_monotone_curves_cross_above_the_last_miss():
    # Met at 1e-3 by luck, missed at 2e-3: f* is read above the highest miss, never at 1e-3.
    c = crossing_frequency(FREQS, [0.95, 0.5, 0.95, 0.99], 0.9)
    assert c.bracket == (2e-3, 4e-3) and c.value == pytest.approx(2e-3 * 2 ** (0.4 / 0.45))
    # Missing cells (NaN) are left out of the curve.
    c = crossing_frequency(FREQS, [0.5, math.nan, 0.95, 0.99], 0.9)
    assert c.bracket == (1e-3, 4e-3) and c.value == pytest.approx(1e-3 * 4 ** (0.4 / 0.45))


def test_outside_the_swept_range_only_a_bound_is_reported():
    always = crossing_frequency(FREQS, [0.95, 0.96, 0.97, 0.99], 0.9)
    assert always.value is None and always.bound == BELOW and always.text() == "<= 0.001"
    never = crossing_frequency(FREQS, [0.1, 0.2, 0.3, 0.89], 0.9)
    assert never.value is None and never.bound == ABOVE and never.text() == "> 0.008"
    assert crossing_frequency(FREQS, [math.nan] * 4, 0.9).text() == "n/a"


def test_seed_means_weight_by_multiplicity_and_skip_missing():
    values = np.array([[1.0, 3.0, math.nan]])
    means = seed_means(values, np.array([[2.0, 1.0, 5.0], [0.0, 0.0, 3.0]]))
    assert means.shape == (2, 1) and means[0, 0] == pytest.approx(5 / 3) and math.isnan(means[1, 0])


def _sigmoid_sweep(midpoints, n_seeds=8, slope=3.0, jitter=0.15, seed=0):
    """Accuracy 0.5 + 0.5 * sigmoid(slope * log(f / f0)) per size; each data seed shifts log f0."""
    freqs = np.geomspace(1e-3, 1.6e-2, 9)
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0.0, jitter, size=n_seeds)
    shifts -= shifts.mean()  # the seed population is centred on the true midpoint
    values = np.empty((len(midpoints), len(freqs), n_seeds))
    for k, f0 in enumerate(midpoints):
        x = slope * (np.log(freqs)[:, None] - (math.log(f0) + shifts[None, :]))
        values[k] = 0.5 + 0.5 / (1.0 + np.exp(-x))
    return freqs, values


def test_bootstrap_recovers_a_known_crossing_and_exchange_rate():
    # The curves reach 0.75 at their midpoints: 6e-3 for the small model, 2e-3 for the large one.
    freqs, values = _sigmoid_sweep([6e-3, 2e-3])
    fronts, rates = estimate_frontier(["small", "large"], [10, 100], freqs, values, 0.75, resamples=500)
    for front, truth in zip(fronts, [6e-3, 2e-3]):
        assert front.crossing.value == pytest.approx(truth, rel=0.05)
        assert front.ci_lo < truth < front.ci_hi and front.ci_hi / front.ci_lo < 1.5
        assert front.no_crossing == 0
        lo, hi = front.crossing.bracket
        assert lo < truth < hi and hi / lo == pytest.approx(freqs[1] / freqs[0])
    (rate,) = rates
    assert (rate.smaller, rate.larger, rate.undefined) == ("small", "large", 0)
    assert rate.value == pytest.approx(3.0, rel=0.08) and rate.ci_lo < 3.0 < rate.ci_hi


def test_identical_seeds_give_a_point_ci_and_the_exact_rate():
    small = [0.1, 0.2, 0.5, 1.0]  # f* = 4e-3
    large = [0.2, 0.5, 0.9, 1.0]  # f* = 2e-3
    values = np.repeat(np.array([small, large])[:, :, None], 3, axis=2)
    fronts, (rate,) = estimate_frontier(["s", "l"], [1, 2], FREQS, values, 0.5, resamples=50)
    assert [f.crossing.value for f in fronts] == pytest.approx([4e-3, 2e-3])
    assert (fronts[0].ci_lo, fronts[0].ci_hi) == pytest.approx((4e-3, 4e-3))
    assert rate.value == pytest.approx(2.0) and (rate.ci_lo, rate.ci_hi) == pytest.approx((2.0, 2.0))


def test_one_data_seed_gives_no_interval():
    values = np.array([[0.1, 0.2, 0.5, 1.0], [0.2, 0.5, 0.9, 1.0]])[:, :, None]
    fronts, (rate,) = estimate_frontier(["s", "l"], [1, 2], FREQS, values, 0.5)
    assert fronts[0].crossing.value == pytest.approx(4e-3) and fronts[0].resamples == 0
    assert (fronts[0].ci_lo, fronts[0].ci_lo_text, fronts[0].ci_hi_text) == (None, "n/a", "n/a")
    assert rate.value == pytest.approx(2.0) and (rate.ci_lo, rate.undefined) == (None, 0)


def test_bounds_when_never_or_always_learned():
    never = np.zeros((1, 4, 3))
    (front,), _ = estimate_frontier(["s"], [1], FREQS, never, 0.5, resamples=40)
    assert front.crossing.text() == "> 0.008" and front.no_crossing == 40
    assert (front.ci_lo, front.ci_lo_text, front.ci_hi_text) == (None, "> 0.008", "> 0.008")
    # Small never learns in range, large always: the rate is only bounded, by f_max / f_min = 8.
    values = np.stack([np.zeros((4, 3)), np.ones((4, 3))])
    fronts, (rate,) = estimate_frontier(["s", "l"], [1, 2], FREQS, values, 0.5, resamples=40)
    assert fronts[1].crossing.text() == "<= 0.001" and fronts[1].ci_hi_text == "<= 0.001"
    assert rate.value is None and rate.text == "> 8" and rate.ci_lo is None
    # Every resample bounds the rate from below (small above the range): all unbounded, none dropped.
    assert (rate.unbounded, rate.undefined, rate.ci_lo_text, rate.ci_hi_text) == (
        40,
        0,
        "unbounded",
        "unbounded",
    )


def test_exchange_rate_ci_keeps_resamples_where_the_smaller_model_never_crosses():
    # Large crosses at 2e-3 in every seed; small at 4e-3 in seeds 0 and 1 and never in seed 2. A
    # resample drawing only seed 2 (1/27 = 3.7% > 2.5%) has no small crossing: an infinite rate,
    # which must open the upper end rather than be dropped (that would narrow the CI to 2).
    small_learns, small_never = [0.1, 0.2, 0.9, 1.0], [0.1, 0.1, 0.1, 0.1]
    small = np.array([small_learns, small_learns, small_never]).T
    large = np.repeat(np.array([0.2, 0.9, 1.0, 1.0])[:, None], 3, axis=1)
    fronts, (rate,) = estimate_frontier(
        ["s", "l"], [1, 2], FREQS, np.stack([small, large]), 0.5, resamples=2000
    )
    assert fronts[1].crossing.value == pytest.approx(1e-3 * 2 ** (3 / 7))
    assert rate.unbounded > 0 and rate.undefined == 0
    assert rate.ci_hi_text == "unbounded" and rate.ci_hi is None
    assert rate.ci_lo == pytest.approx(fronts[0].ci_lo / fronts[1].crossing.value, rel=1e-6)


def test_the_ci_counts_resamples_without_a_crossing():
    # One of three data seeds never learns at the top frequency: some resamples miss it everywhere.
    seeds = np.array(
        [
            [[0.0, 0.0, 0.0]] * 2 + [[1.0, 1.0, 0.0]] * 2,
        ]
    )
    (front,), _ = estimate_frontier(["s"], [1], FREQS, seeds, 0.5, resamples=400)
    # Point: the mean at 4e-3 is 2/3 >= 0.5, so f* interpolates between 2e-3 (0) and 4e-3 (2/3).
    assert front.crossing.value == pytest.approx(2e-3 * 2**0.75)
    # P(a resample draws the failing seed at least twice of three) = 7/27: no crossing then.
    assert front.no_crossing / 400 == pytest.approx(7 / 27, abs=0.07)
    assert front.ci_hi is None and front.ci_hi_text == "> 0.008"


# ---------------------------------------------------------------------------------------------- the report


def _fake_sweep(tmp_path):
    """A finished 2 sizes x 3 frequencies x 2 data seeds sweep, written as runs would leave it.

    Accuracy is 0 then 1 along each curve: micro-w32 meets the criterion from 4e-3, micro-w48 from
    2e-3. Only micro-w48 reports choice metrics (micro-w32 stands for runs older than them).
    """
    import yaml
    from conftest import TINY_OVERRIDES, TINY_TASKS

    from smalllm.config import save_config
    from smalllm.run_record import RunDir, atomic_write_json
    from smalllm.sweep.grid import cell_config, expand, parse_sweep, sweep_manifest
    from smalllm.sweep.records import cell_run, write_sweep_file

    raw = {
        "name": "fake",
        "sweep_dir": str(tmp_path / "sweep"),
        "overrides": [*TINY_OVERRIDES, *TINY_TASKS],
        "grids": [{"model.preset": ["micro-w32", "micro-w48"], "data.tasks.0.frequency": FREQS[:3]}],
        "seeds": {"data": [0, 1], "init": "data"},
    }
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump(raw))
    spec = parse_sweep(raw, source=tmp_path / "fake.yaml")
    cells = expand(spec)
    spec.sweep_dir.mkdir()
    write_sweep_file(spec.sweep_dir, sweep_manifest(spec, cells))
    for cell in cells:
        large = cell.params["model.preset"] == "micro-w48"
        freq = cell.params["data.tasks.0.frequency"]
        acc = 1.0 if freq >= (2e-3 if large else 4e-3) else 0.0
        run = cell_run(spec.sweep_dir, cell.name)
        RunDir.create(run)
        save_config(cell_config(spec, cell), run.config_file)
        run.write_summary({"status": "completed", "params": 2000 if large else 1000})
        atomic_write_json(
            run.baselines_file, {"version": 1, "labels": {"t_cmp": {"chance_acc": 0.5, "rule_acc": 0.75}}}
        )
        for step in (10, 20, 30):
            rec = {
                "kind": "eval",
                "step": step,
                "tokens": 100 * step,
                "eval/background/loss": 6.0 - step / 10,
            }
            rec |= {
                "eval/t_cmp/acc": acc,
                "eval/t_cmp/loss": 2.0 - acc,
                "eval/t_cmp/loss_ratio": 1.0 - acc / 2,
            }
            if large:
                rec |= {"eval/t_cmp/choice_acc": acc, "eval/t_cmp/choice_loss": 0.7 * (1 - acc)}
                rec |= {
                    "eval/t_cmp/choice_acc_lo": acc * 0.9,
                    "eval/t_cmp/choice_acc_hi": min(1.0, acc + 0.1),
                }
            run.append_metrics(rec)
    return spec.sweep_dir


def test_sweep_report_writes_the_frontier_estimate(tmp_path):
    import csv
    import json

    from smalllm.run_record import frontier_csv_file, frontier_json_file
    from smalllm.sweep.report import write_sweep_report

    sweep_dir = _fake_sweep(tmp_path)
    written = write_sweep_report(sweep_dir, log=None)
    names = {p.name for p in written}
    for stem in ("heatmap_acc", "crossing", "curves", "task_vs_background"):
        assert f"{stem}_t_cmp.png" in names
    with open(sweep_dir / "results.csv") as fh:
        rows = {(r["cell"], r["task"]): r for r in csv.DictReader(fh)}
    row = rows[("micro-w48_frequency-0.002_dseed-1_iseed-1", "t_cmp")]
    assert (row["data_seed"], row["init_seed"], row["final_choice_acc"], row["chance_acc"]) == (
        "1",
        "1",
        "1.0",
        "0.5",
    )
    small = rows[("micro-w32_frequency-0.002_dseed-1_iseed-1", "t_cmp")]
    assert small["final_choice_acc"] == "" and small["value_metric"] == small["metric"].replace("choice_", "")

    est = json.loads(frontier_json_file(sweep_dir).read_text())
    final = next(p for p in est["panels"] if p["task"] == "t_cmp" and p["basis"] == "final")
    threshold = float(row["threshold"])
    w32, w48 = final["sizes"]
    # 0 at f_j, 1 at f_{j+1}: f* lies the threshold's fraction of the way along log f.
    assert w32["f_star"] == pytest.approx(2e-3 * 2**threshold)
    assert w48["f_star"] == pytest.approx(1e-3 * 2**threshold)
    assert (w32["bracket_lo"], w32["bracket_hi"], w32["resamples_no_crossing"]) == (2e-3, 4e-3, 0)
    assert w32["bracket_cells"] == [
        f"micro-w32_frequency-{f}_dseed-{d}_iseed-{d}" for f in ("0.002", "0.004") for d in (0, 1)
    ]
    assert final["data_seeds"] == [0, 1]
    (rate,) = final["exchange"]
    assert rate["rate"] == pytest.approx(2.0) and (rate["ci_lo"], rate["ci_hi"]) == pytest.approx((2.0, 2.0))
    learned = next(p for p in est["panels"] if p["task"] == "t_cmp" and p["basis"] == "learned")
    assert learned["sizes"][0]["f_star"] == pytest.approx(2e-3 * 2**0.5)
    with open(frontier_csv_file(sweep_dir)) as fh:
        table = [r for r in csv.DictReader(fh) if r["task"] == "t_cmp" and r["basis"] == "final"]
    assert [r["size"] for r in table] == ["micro-w32", "micro-w48"]
    assert table[0]["exchange_with"] == "micro-w48" and float(table[0]["exchange_rate"]) == pytest.approx(2.0)
    summary = (sweep_dir / "report" / "summary.md").read_text()
    assert "crossing frequency f*" in summary and "upweighting exchange rate" in summary
    # Older runs (micro-w32) have no choice accuracy: the heatmap says it used accuracy for them.
    assert "heatmap: final choice_acc, acc where missing" in summary
    assert "baselines: chance 0.50, best one-position rule 0.75" in summary


def test_bootstrap_mean_ci_brackets_the_mean():
    mean, lo, hi = bootstrap_mean_ci([0.6, 0.8, 1.0], resamples=2000)
    assert mean == pytest.approx(0.8) and 0.6 <= lo < 0.8 < hi <= 1.0
    # All three draws are the first seed (mean 0.6) with p = 1/27 > 2.5%: the CI reaches 0.6 (and 1.0).
    assert (lo, hi) == pytest.approx((0.6, 1.0))
    assert bootstrap_mean_ci([0.7]) == (0.7, 0.7, 0.7)
