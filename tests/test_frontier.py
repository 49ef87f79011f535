"""The frontier estimate: crossing interpolation, bounds, the seed bootstrap, and exchange rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smalllm.sweep.frontier import ABOVE, BELOW, crossing_frequency, estimate_frontier, seed_means

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


def test_bounds_when_never_or_always_learned():
    never = np.zeros((1, 4, 3))
    (front,), _ = estimate_frontier(["s"], [1], FREQS, never, 0.5, resamples=40)
    assert front.crossing.text() == "> 0.008" and front.no_crossing == 40
    assert (front.ci_lo, front.ci_lo_text, front.ci_hi_text) == (None, "> 0.008", "> 0.008")
    # Small never learns in range, large always: the rate is only bounded, by f_max / f_min = 8.
    values = np.stack([np.zeros((4, 3)), np.ones((4, 3))])
    fronts, (rate,) = estimate_frontier(["s", "l"], [1, 2], FREQS, values, 0.5, resamples=40)
    assert fronts[1].crossing.text() == "<= 0.001" and fronts[1].ci_hi_text == "<= 0.001"
    assert rate.value is None and rate.text == "> 8" and rate.undefined == 40 and rate.ci_lo is None


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
