"""The scale-vs-frequency frontier as an estimate: f*(size) with bootstrap CIs, and exchange rates.

Pure functions on arrays (numpy); :mod:`smalllm.sweep.report` feeds them the tidy rows of a sweep and
writes the results. Definitions:

**Crossing frequency.** For one model size, take the swept frequencies ``f_1 < … < f_n`` and at each
the mean over data seeds of a per-run *criterion value* ``m_j``: either the final value of the
pre-registered criterion metric (threshold ``t``), or the run's ``learned`` flag (threshold 0.5:
learned in at least half of the seeds). A frequency *meets* the criterion when ``m_j >= t``
(``<= t`` for metrics where lower is better: losses, loss ratios). Let ``j`` be the highest
frequency that does not meet it. Then

* ``j`` exists and ``j < n``: ``f*`` is the log-linear interpolation between ``f_j`` and ``f_{j+1}``,
  ``log f* = log f_j + (t - m_j) / (m_{j+1} - m_j) · (log f_{j+1} - log f_j)``; those two cells
  *bound* it. A non-monotone curve (met at a low frequency, missed at a higher one) is read
  conservatively: ``f*`` is where the criterion holds from there on up, so isolated low-frequency
  successes do not count.
* ``j = n`` (not met at the highest frequency): only the bound ``f* > f_max`` is reported.
* no ``j`` (met everywhere): only the bound ``f* <= f_min`` is reported. No number is invented
  outside the swept range.

Frequencies whose cells have no value are left out.

**Confidence interval.** Data seeds (the task table, pool split and placement, which decide a cell far
more than the initialisation) are resampled with replacement, each resample recomputes every
``m_j`` as a weighted mean over the drawn seeds and then ``f*``; the CI is the 2.5% and 97.5%
percentiles of the resampled ``log f*``, where a resample with no crossing counts as below ``f_min``
or above ``f_max``. A CI end that falls on such a resample is reported as the bound, and the number
of resamples without a crossing is reported beside the CI. Init seeds of one data seed are averaged
first, so they are never treated as independent draws of the task.

**Exchange rate.** For adjacent sizes (by parameter count) the upweighting exchange rate is
``f*(smaller) / f*(larger)``: the factor by which the smaller model's task frequency must rise to
match the larger one. Its CI comes from the same resamples (both sizes see the same drawn data seeds,
so the comparison is paired); resamples where either size has no crossing are left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

RESAMPLES = 2000
"""Bootstrap resamples per panel (the percentile CI of a 95% interval is stable to ~1% at 2000)."""
CI_LEVEL = 0.95
LEARNED_THRESHOLD = 0.5
"""Threshold on the fraction of seeds that learned, for the ``learned`` basis."""
BELOW = "below"
"""Bound: the criterion is met already at the lowest swept frequency (f* <= f_min)."""
ABOVE = "above"
"""Bound: the criterion is not met at the highest swept frequency (f* > f_max)."""


@dataclass
class Crossing:
    """Where one size's mean curve crosses the threshold."""

    value: float | None
    """f* (None when only a bound is known, or there is no data)."""
    bound: str | None = None
    """``below`` (f* <= ``bracket[0]`` = f_min), ``above`` (f* > ``bracket[1]`` = f_max), or None."""
    bracket: tuple[float, float] | None = None
    """The two swept frequencies around f* (for a bound: (f_min, f_min) or (f_max, f_max))."""

    @property
    def log_value(self) -> float:
        """log f*, -inf below the swept range, +inf above it, NaN with no data."""
        if self.value is not None:
            return math.log(self.value)
        return {BELOW: -math.inf, ABOVE: math.inf}.get(self.bound or "", math.nan)

    def text(self) -> str:
        if self.value is not None:
            return fmt_freq(self.value)
        if self.bound == BELOW and self.bracket:
            return f"<= {fmt_freq(self.bracket[0])}"
        if self.bound == ABOVE and self.bracket:
            return f"> {fmt_freq(self.bracket[1])}"
        return "n/a"


def fmt_freq(f: float) -> str:
    """A frequency as the frontier tables show it (3 significant digits)."""
    return f"{f:.3g}"


def crossing_frequency(
    freqs: Sequence[float], means: Sequence[float], threshold: float, higher_is_better: bool = True
) -> Crossing:
    """f* of one size from its per-frequency means (see the module docstring for the definition)."""
    pairs = sorted((float(f), float(m)) for f, m in zip(freqs, means, strict=True) if math.isfinite(m))
    if not pairs:
        return Crossing(None)
    f = np.array([p[0] for p in pairs])
    # Work with "higher is better" values: a loss criterion is a negated accuracy-like one.
    sign = 1.0 if higher_is_better else -1.0
    m = sign * np.array([p[1] for p in pairs])
    t = sign * threshold
    missed = np.flatnonzero(m < t)
    if missed.size == 0:
        return Crossing(None, BELOW, (f[0], f[0]))
    j = int(missed[-1])
    if j == len(f) - 1:
        return Crossing(None, ABOVE, (f[-1], f[-1]))
    # m[j] < t <= m[j + 1], so the slope is positive and the fraction lies in (0, 1].
    frac = (t - m[j]) / (m[j + 1] - m[j])
    log_f = math.log(f[j]) + frac * (math.log(f[j + 1]) - math.log(f[j]))
    return Crossing(math.exp(log_f), None, (float(f[j]), float(f[j + 1])))


def seed_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Weighted means over the last axis (seeds) of ``values`` (NaN = missing), one per row of ``counts``.

    ``values``: (..., seeds); ``counts``: (resamples, seeds) multiplicities. Returns (resamples, ...).
    """
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    total = np.einsum("...s,bs->b...", filled, counts)
    weight = np.einsum("...s,bs->b...", present.astype(float), counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def bootstrap_mean_ci(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = CI_LEVEL, rng_seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of per-seed ``values`` and its percentile bootstrap CI over the seeds.

    The same resampling as the f* interval, so a heatmap cell's interval and f*'s come from one rule.
    With one value the interval is that value (nothing to resample).
    """
    vals = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if vals.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(rng_seed)
    counts = rng.multinomial(vals.size, np.full(vals.size, 1.0 / vals.size), size=resamples).astype(float)
    means = seed_means(vals, counts)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(vals.mean()), float(lo), float(hi)


def seed_mean_text(values: Sequence[float]) -> str:
    """``mean [lo, hi]`` of per-seed ``values`` (:func:`bootstrap_mean_ci`), the lone value when there
    is one, ``–`` when none is finite: how the report pages print a mean over seeds."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    mean, lo, hi = bootstrap_mean_ci(finite)
    return f"{mean:.3f}" if len(finite) == 1 else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


@dataclass
class SizeFrontier:
    """f* of one size, its bootstrap CI, and the cells that bound it."""

    size: str
    params: int | None
    crossing: Crossing
    ci_lo: float | None
    """Lower CI end (None: the interval reaches below f_min)."""
    ci_hi: float | None
    """Upper CI end (None: the interval reaches above f_max)."""
    ci_lo_text: str
    ci_hi_text: str
    resamples: int
    no_crossing: int
    """Resamples in which this size had no crossing inside the swept range."""
    means: list[float] = field(default_factory=list)
    """The per-frequency means f* was read from (NaN: no cell)."""
    per_seed: list[str] = field(default_factory=list)
    """f* of each data seed's own curve, as text (a number or a bound), in data-seed order: with a
    handful of seeds the reader should see the draws the interval is made of."""


def nominal_coverage(n_seeds: int) -> float:
    """Best coverage a percentile bootstrap over ``n_seeds`` draws can have for their mean.

    The resampled means never leave the range of the draws, and the truth lies outside that range
    with probability ``2 · 2^-n`` for a continuous symmetric spread, so the interval covers at most
    ``1 − 2^(1−n)``: 75% with 3 data seeds, 94% with 5, whatever level is asked for.
    """
    return 1.0 - 2.0 ** (1 - n_seeds) if n_seeds >= 2 else 0.0


@dataclass
class ExchangeRate:
    """f*(smaller) / f*(larger) for two adjacent sizes, with its paired bootstrap CI."""

    smaller: str
    larger: str
    value: float | None
    text: str
    ci_lo: float | None
    ci_hi: float | None
    ci_lo_text: str
    """The lower CI end as printed: a number, ``unbounded`` or ``n/a``."""
    ci_hi_text: str
    resamples: int
    undefined: int
    """Resamples that say nothing about the rate (both sizes above, or both below, the swept range);
    left out of the CI."""
    unbounded: int = 0
    """Resamples in which one size crossed outside the swept range, counted as an infinite rate
    (the smaller model above f_max, or the larger one at or below f_min) or a zero one (the smaller
    one at or below f_min while the larger one crossed inside)."""


def _log_rate(small: Crossing, large: Crossing) -> float:
    """log(f*(smaller) / f*(larger)) of one resample; ±inf when a crossing lies outside the swept
    range in the direction that bounds the rate, NaN when the resample bounds nothing."""
    if small.value is not None and large.value is not None:
        return math.log(small.value / large.value)
    if small.bound == ABOVE and large.bound != ABOVE:
        return math.inf
    if large.bound == BELOW and small.bound != BELOW:
        return math.inf
    if small.bound == BELOW and large.value is not None:
        return -math.inf
    return math.nan


def _rate_end_text(log_end: float) -> str:
    if math.isnan(log_end):
        return "n/a"
    if math.isinf(log_end):
        return "0" if log_end < 0 else "unbounded"
    return f"{math.exp(log_end):.3g}"


def _ci_text(log_end: float, freqs: np.ndarray) -> tuple[float | None, str]:
    if log_end == -math.inf:
        return None, f"<= {fmt_freq(float(freqs.min()))}"
    if log_end == math.inf:
        return None, f"> {fmt_freq(float(freqs.max()))}"
    if math.isnan(log_end):
        return None, "n/a"
    return math.exp(log_end), fmt_freq(math.exp(log_end))


def _rate_point(small: Crossing, large: Crossing, freqs: np.ndarray) -> tuple[float | None, str]:
    """The exchange rate, or the bound it is known to exceed when a crossing lies outside the range."""
    if small.value is not None and large.value is not None:
        rate = small.value / large.value
        return rate, f"{rate:.3g}"
    # A smaller model that needs more than f_max puts a strict lower bound on the rate, a larger one
    # that needs no more than f_min a non-strict one; any other combination says nothing.
    hi = float(freqs.max()) if small.bound == ABOVE else small.value
    lo = float(freqs.min()) if large.bound == BELOW else large.value
    if hi is not None and lo is not None and (small.bound == ABOVE or large.bound == BELOW):
        return None, f"{'>' if small.bound == ABOVE else '>='} {hi / lo:.3g}"
    return None, "n/a"


def estimate_frontier(
    sizes: Sequence[str],
    params: Sequence[int | None],
    freqs: Sequence[float],
    values: np.ndarray,
    threshold: float,
    higher_is_better: bool = True,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
    rng_seed: int = 0,
) -> tuple[list[SizeFrontier], list[ExchangeRate]]:
    """f* per size with its bootstrap CI, and the exchange rate between each pair of adjacent sizes.

    ``values`` has shape (sizes, freqs, data seeds), NaN where a cell is missing; sizes come smallest
    first. The seed axis is shared by all sizes, which is what pairs the exchange-rate bootstrap.
    With a single data seed there is no interval: CI ends are None (text ``n/a``), 0 resamples.
    """
    values = np.asarray(values, dtype=float)
    freq_arr = np.asarray(freqs, dtype=float)
    n_seeds = values.shape[2]
    # One data seed has no spread to resample: f* is reported without an interval ("n/a").
    resamples = resamples if n_seeds >= 2 else 0
    rng = np.random.default_rng(rng_seed)
    # One row of seed multiplicities per resample (multinomial = drawing n seeds with replacement).
    counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples).astype(float)
    point_means = seed_means(values, np.ones((1, n_seeds)))[0]
    boot_means = seed_means(values, counts)
    alpha = (1.0 - level) / 2.0
    out: list[SizeFrontier] = []
    boot_cross: list[list[Crossing]] = []
    for k, size in enumerate(sizes):
        point = crossing_frequency(freq_arr, point_means[k], threshold, higher_is_better)
        boot = [
            crossing_frequency(freq_arr, boot_means[b, k], threshold, higher_is_better)
            for b in range(resamples)
        ]
        boot_cross.append(boot)
        logs = np.array([c.log_value for c in boot])
        logs = logs[~np.isnan(logs)]
        if logs.size:
            # Order statistics, not interpolation: an end may be an infinite "no crossing" resample.
            lo, hi = np.quantile(logs, [alpha, 1.0 - alpha], method="inverted_cdf")
        else:
            lo = hi = math.nan
        ci_lo, ci_lo_text = _ci_text(float(lo), freq_arr)
        ci_hi, ci_hi_text = _ci_text(float(hi), freq_arr)
        out.append(
            SizeFrontier(
                size=size,
                params=params[k],
                crossing=point,
                ci_lo=ci_lo,
                ci_hi=ci_hi,
                ci_lo_text=ci_lo_text,
                ci_hi_text=ci_hi_text,
                resamples=resamples,
                no_crossing=sum(c.value is None for c in boot),
                means=[float(v) for v in point_means[k]],
                per_seed=[
                    crossing_frequency(freq_arr, values[k, :, s], threshold, higher_is_better).text()
                    for s in range(n_seeds)
                ],
            )
        )
    rates = []
    for k in range(len(sizes) - 1):
        value, text = _rate_point(out[k].crossing, out[k + 1].crossing, freq_arr)
        logs = np.array(
            [_log_rate(a, b) for a, b in zip(boot_cross[k], boot_cross[k + 1], strict=True)], dtype=np.float64
        )
        defined = logs[~np.isnan(logs)]
        if defined.size:
            # Order statistics over all informative resamples, the unbounded ones included, so the
            # interval is not conditioned on both sizes crossing inside the swept range.
            lo_r, hi_r = (float(x) for x in np.quantile(defined, [alpha, 1.0 - alpha], method="inverted_cdf"))
        else:
            lo_r = hi_r = math.nan
        rates.append(
            ExchangeRate(
                smaller=sizes[k],
                larger=sizes[k + 1],
                value=value,
                text=text,
                ci_lo=math.exp(lo_r) if math.isfinite(lo_r) else None,
                ci_hi=math.exp(hi_r) if math.isfinite(hi_r) else None,
                ci_lo_text=_rate_end_text(lo_r),
                ci_hi_text=_rate_end_text(hi_r),
                resamples=resamples,
                undefined=int(np.isnan(logs).sum()),
                unbounded=int(np.isinf(defined).sum()),
            )
        )
    return out, rates
