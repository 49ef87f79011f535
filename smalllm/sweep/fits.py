"""Scaling-law fits of a sweep: L(N), L(N, D), the compute frontier L(C) and N_opt(C), per-task power laws.

Pure numpy/scipy (no matplotlib: plots are drawn by :mod:`smalllm.sweep.fit_plots`, in the report path).

**Forms.** Every law here is a sum of power-law terms, optionally plus an irreducible floor ``E``:

* ``L(N)    = E + A·N^-α``               final held-out background loss per run vs non-embedding params N;
* ``L(N, D) = E + A·N^-α + B·D^-β``      every evaluation of every run, D = tokens seen at that evaluation;
* ``L(C)    = E + A·C^-γ``               the lower envelope of loss over compute C = 6·N·D;
* ``y(x)    = A·x^-α``                   a task's loss vs size or vs frequency (no floor: with 3–5 points a
  floor is not identifiable, and a task loss need not approach one inside the swept range).

**Fitting (Chinchilla-style, Hoffmann et al. 2022 App. D.2).** Parameters are ``log A``, ``log B``,
``log E`` and the exponents; the prediction is computed as a log-sum-exp of the terms, and the
objective is ``Σ Huber_δ(log L_pred − log L_obs)`` with δ = 1e-3, minimised by
``scipy.optimize.minimize(method="L-BFGS-B")`` with its analytic gradient from a grid of starting
points; the best end point wins. Fitting log loss weighs every point by its relative error, and the
Huber loss keeps a diverged or mis-logged point from dragging the exponents.

**Intervals.** Runs (cells), not evaluation points, are resampled with replacement — the points of one
run share its initialisation and data order, so they are not independent draws. Each resample is
refitted (from the point estimate and a few grid starts) and the CI is the 2.5/97.5 percentiles of
every exponent (and of E). Resamples with fewer distinct x values than the law has parameters are
skipped and counted.

**C-optimal N.** Minimising the fitted L(N, D) at fixed C = 6·N·D gives
``N_opt(C) = G·(C/6)^a`` with ``a = β/(α+β)`` and ``G = (αA/(βB))^(1/(α+β))``; ``a`` gets its CI from
the same resamples. The empirical envelope (the runs and evaluations that reach the lowest loss so
far in compute order) is reported beside it.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from smalllm.errors import SmalllmError
from smalllm.eval.emergence import eval_records
from smalllm.labels import BACKGROUND
from smalllm.run_record import atomic_write_json, atomic_write_text, fits_json_file, fits_md_file
from smalllm.sweep import records
from smalllm.sweep.aggregate import SweepInfo, collect

HUBER_DELTA = 1e-3
"""Huber threshold on log-loss residuals (Chinchilla's): ~L1 beyond 0.1% relative error."""
RESAMPLES = 400
"""Bootstrap resamples of runs per fit (percentile ends of a 95% CI move by ~1–2% of its width)."""
CI_LEVEL = 0.95
FLOPS_PER_PARAM_TOKEN = 6
"""C = 6·N·D (Kaplan et al.): forward + backward matmul FLOPs per non-embedding parameter and token."""
MIN_POINTS = 3
"""Fewest distinct x values a law is fitted to."""


# ---------------------------------------------------------------------------------------------- fitting


@dataclass
class PowerLawFit:
    """One fitted law: parameters, their bootstrap CIs, and how it was fitted."""

    form: str
    """The law as text, e.g. ``E + A*N^-alpha``."""
    params: dict[str, float]
    """A, alpha, (B, beta), (E): coefficients in natural scale."""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Bootstrap percentile CI per exponent (and E)."""
    points: int = 0
    runs: int = 0
    resamples: int = 0
    skipped_resamples: int = 0
    """Resamples with too few distinct x values to fit, left out of the CI."""
    objective: float = math.nan
    rms_log_residual: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "params": self.params,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "ci_level": CI_LEVEL,
            "points": self.points,
            "runs": self.runs,
            "resamples": self.resamples,
            "skipped_resamples": self.skipped_resamples,
            "huber_delta": HUBER_DELTA,
            "rms_log_residual": self.rms_log_residual,
        }


def _lse(comps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Σ exp over axis 0, and the softmax weights (plain numpy: scipy.special's costs ~50x more
    per call at these sizes, and the optimiser calls it thousands of times)."""
    top = comps.max(axis=0)
    e = np.exp(comps - top)
    total = e.sum(axis=0)
    return top + np.log(total), e / total


@dataclass
class _Law:
    """A sum of power-law terms in the given variables, plus a floor when ``floor``.

    Parameter vector: ``[log c_1, exponent_1, …, log c_k, exponent_k, (log E)]``.
    """

    names: list[tuple[str, str]]
    """(coefficient name, exponent name) per term, e.g. [("A", "alpha"), ("B", "beta")]."""
    floor: bool
    exponent_bounds: tuple[float, float]

    @property
    def size(self) -> int:
        return 2 * len(self.names) + int(self.floor)

    def log_predict(self, theta: np.ndarray, logx: np.ndarray) -> np.ndarray:
        """log L_pred per point; ``logx`` is (terms, points)."""
        return _lse(self._components(theta, logx))[0]

    def _components(self, theta: np.ndarray, logx: np.ndarray) -> np.ndarray:
        k = len(self.names)
        comps = [theta[2 * i] - theta[2 * i + 1] * logx[i] for i in range(k)]
        if self.floor:
            comps.append(np.full(logx.shape[1], theta[2 * k]))
        return np.stack(comps)

    def objective(self, theta: np.ndarray, logx: np.ndarray, logy: np.ndarray) -> tuple[float, np.ndarray]:
        """Σ Huber(log L_pred − log L_obs) and its gradient."""
        comps = self._components(theta, logx)
        log_pred, weights = _lse(comps)
        r = log_pred - logy
        small = np.abs(r) <= HUBER_DELTA
        loss = np.where(small, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum()
        dr = np.where(small, r, HUBER_DELTA * np.sign(r))
        w = weights * dr  # d log L_pred / d component (softmax weights), times dHuber/dr
        grad = np.empty_like(theta)
        for i in range(len(self.names)):
            grad[2 * i] = w[i].sum()
            grad[2 * i + 1] = -(w[i] * logx[i]).sum()
        if self.floor:
            grad[-1] = w[-1].sum()
        return float(loss), grad

    def starts(self, logx: np.ndarray, logy: np.ndarray) -> list[np.ndarray]:
        """Starting points: a grid of exponents and floors, coefficients matched to the data's middle."""
        y = np.exp(logy)
        k = len(self.names)
        lo, hi = self.exponent_bounds
        exps = [e for e in (-0.5, 0.1, 0.4, 1.0) if lo <= e <= hi]
        floors = (0.5, 0.9) if self.floor else (0.0,)
        out = []
        for combo in itertools.product(exps, repeat=k):
            for frac in floors:
                e_val = frac * float(y.min())
                excess = max(float(np.median(y)) - e_val, 1e-12) / k
                theta = []
                for i, ex in enumerate(combo):
                    theta += [math.log(excess) + ex * float(np.median(logx[i])), ex]
                if self.floor:
                    theta.append(math.log(e_val))
                out.append(np.array(theta))
        return out

    def fit(
        self, logx: np.ndarray, logy: np.ndarray, starts: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, float]:
        """The best L-BFGS-B end point over ``starts`` (default: the grid) and its objective."""
        bounds = []
        for _ in self.names:
            bounds += [(None, None), self.exponent_bounds]
        if self.floor:
            bounds.append((None, None))
        best, best_f = None, math.inf
        for x0 in starts or self.starts(logx, logy):
            res = minimize(self.objective, x0, args=(logx, logy), jac=True, method="L-BFGS-B", bounds=bounds)
            if np.all(np.isfinite(res.x)) and res.fun < best_f:
                best, best_f = res.x, float(res.fun)
        if best is None:
            raise SmalllmError("fit: the optimiser found no finite solution")
        return best, best_f

    def named(self, theta: np.ndarray, centre: np.ndarray) -> dict[str, float]:
        """The parameters in natural scale, for x uncentred (``centre``: the mean log x per term)."""
        out = {}
        for i, (coef, exp) in enumerate(self.names):
            out[coef] = math.exp(theta[2 * i] + theta[2 * i + 1] * centre[i])
            out[exp] = float(theta[2 * i + 1])
        if self.floor:
            out["E"] = math.exp(theta[-1])
        return out


def fit_law(*args: Any, **kwargs: Any) -> PowerLawFit:
    """:func:`_fit_law` with numpy's BLAS held to one thread.

    L-BFGS-B calls BLAS on 5-vectors thousands of times; a multi-threaded OpenBLAS spins up its
    threads for each, which on a busy 2-core machine made one fit ~50x slower (250 ms instead of 5).
    """
    with threadpool_limits(limits=1):
        return _fit_law(*args, **kwargs)


def _fit_law(
    xs: Sequence[Sequence[float]],
    y: Sequence[float],
    groups: Sequence[Any],
    names: list[tuple[str, str]],
    floor: bool = True,
    exponent_bounds: tuple[float, float] = (0.0, 3.0),
    resamples: int = RESAMPLES,
    rng_seed: int = 0,
    derived: dict[str, Any] | None = None,
) -> PowerLawFit:
    """Fit ``[E +] Σ_i c_i·x_i^-e_i`` to ``y`` (positive); bootstrap over ``groups`` (one id per point: its run).

    ``xs`` holds one sequence per term (all positive). ``derived`` maps extra names to functions of the
    named parameters (e.g. the C-optimal exponent), which get CIs from the same resamples.
    """
    law = _Law(names, floor, exponent_bounds)
    raw_logx = np.log(np.asarray(xs, dtype=float).reshape(len(names), -1))
    # Fit in centred log x: the coefficient is then the term's value at the data's middle, nearly
    # uncorrelated with its exponent (uncentred, log A and the exponent move together and L-BFGS-B
    # needs several times the iterations). ``law.named`` gets the parameters back at x = 1.
    centre = raw_logx.mean(axis=1)
    logx = raw_logx - centre[:, None]
    logy = np.log(np.asarray(y, dtype=float))
    group_arr = np.asarray([str(g) for g in groups])
    distinct = len({tuple(col) for col in logx.T})
    if distinct < distinct_needed(law):
        raise SmalllmError(f"fit: {distinct} distinct points, need at least {distinct_needed(law)}")
    theta, fval = law.fit(logx, logy)
    params = law.named(theta, centre)
    derived = derived or {}
    for name, fn in derived.items():
        params[name] = float(fn(params))
    resid = law.log_predict(theta, logx) - logy
    ids = sorted(set(group_arr))
    index = {g: np.flatnonzero(group_arr == g) for g in ids}
    rng = np.random.default_rng(rng_seed)
    keys = [e for _, e in names] + (["E"] if floor else []) + list(derived)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    skipped = 0
    # Bootstrap starts: the point estimate and a couple of grid points (a full grid per resample costs
    # ~20x more and moves nothing once the point estimate is a basin of the resampled objective).
    grid = law.starts(logx, logy)
    boot_starts = [theta, grid[len(grid) // 2]]
    for _ in range(resamples if len(ids) >= 2 else 0):
        pick = rng.integers(0, len(ids), size=len(ids))
        rows = np.concatenate([index[ids[j]] for j in pick])
        if len({tuple(col) for col in logx[:, rows].T}) < distinct_needed(law):
            skipped += 1
            continue
        th, _ = law.fit(logx[:, rows], logy[rows], boot_starts)
        named = law.named(th, centre)
        for name, fn in derived.items():
            named[name] = float(fn(named))
        for k in keys:
            draws[k].append(named[k])
    alpha = (1.0 - CI_LEVEL) / 2.0
    ci = {k: (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) for k, v in draws.items() if v}
    form = ("E + " if floor else "") + " + ".join(f"{c}*{x}^-{e}" for (c, e), x in zip(names, _VARS(names)))
    return PowerLawFit(
        form=form,
        params=params,
        ci=ci,
        points=int(logy.size),
        runs=len(ids),
        resamples=resamples if len(ids) >= 2 else 0,
        skipped_resamples=skipped,
        objective=fval,
        rms_log_residual=float(np.sqrt(np.mean(resid**2))),
    )


def distinct_needed(law: _Law) -> int:
    """Distinct x values a resample needs: as many as the law has parameters, and at least 3."""
    return max(MIN_POINTS, law.size - 1) if law.floor else MIN_POINTS


def _VARS(names: list[tuple[str, str]]) -> list[str]:  # noqa: N802 - the variable letters of the form
    letters = {"alpha": "N", "beta": "D", "gamma": "C"}
    return [letters.get(e, "x") for _, e in names]


def optimal_n_exponent(p: dict[str, float]) -> float:
    """a in N_opt(C) ∝ C^a for L = E + A·N^-α + B·D^-β at fixed C = 6·N·D: a = β/(α+β)."""
    return p["beta"] / (p["alpha"] + p["beta"])


def optimal_n(p: dict[str, float], compute: float) -> float:
    """N_opt(C) = G·(C/6)^a, G = (αA/(βB))^(1/(α+β)) (Hoffmann et al. eq. 4)."""
    a, b = p["alpha"], p["beta"]
    g = (a * p["A"] / (b * p["B"])) ** (1.0 / (a + b))
    return g * (compute / FLOPS_PER_PARAM_TOKEN) ** (b / (a + b))


def lower_envelope(compute: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Indices of the points that reach a lower loss than every point of less (or equal) compute."""
    order = sorted(range(len(compute)), key=lambda i: (compute[i], loss[i]))
    out, best = [], math.inf
    for i in order:
        if loss[i] < best:
            out.append(i)
            best = loss[i]
    return out


# ---------------------------------------------------------------------------------------------- a sweep


@dataclass
class RunCurve:
    """One run's held-out background loss along training."""

    cell: str
    size: str
    n: int
    """Non-embedding parameters."""
    tokens: list[int]
    loss: list[float]


def _non_embedding(info: SweepInfo, row: dict) -> int | None:
    if row.get("non_embedding_params"):
        return int(row["non_embedding_params"])
    cell = next((c for c in info.cells if c.name == row["cell"]), None)
    if cell is None:  # a row of a cell the sweep file no longer lists: no config to count from
        return None
    from smalllm.sweep.aggregate import cell_run_config
    from smalllm.train.plan import make_plan

    cfg = cell_run_config(info, cell)
    return make_plan(cfg).shape.non_embedding_params() if cfg is not None else None


def background_curves(info: SweepInfo, rows: list[dict]) -> list[RunCurve]:
    """Every run's (tokens, background loss) evaluations; runs without any are left out."""
    key = BACKGROUND.key("loss")
    seen: dict[str, dict] = {}
    for r in rows:
        seen.setdefault(r["cell"], r)
    out = []
    for cell, row in seen.items():
        pts = [
            (int(rec["tokens"]), float(rec[key]))
            for rec in eval_records(records.cell_run(info.sweep_dir, cell).read_metrics())
            if rec.get(key) is not None and rec.get("tokens") and math.isfinite(float(rec[key]))
        ]
        pts = [(t, v) for t, v in pts if t > 0 and v > 0]
        n = _non_embedding(info, row) if pts else None
        if pts and n:
            out.append(RunCurve(cell, str(row.get("size")), n, [t for t, _ in pts], [v for _, v in pts]))
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _fit_or_note(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return fn(*args, **kwargs).to_json()
    except SmalllmError as exc:
        return {"skipped": str(exc).removeprefix("fit: ")}


def task_fits(rows: list[dict], resamples: int, rng_seed: int) -> list[dict[str, Any]]:
    """Per task: loss vs size at each fixed frequency, and vs frequency at each fixed size (≥3 x values).

    The loss is the choice loss when every run of the task reports one, else the full-vocabulary loss.
    """
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("task") and not r.get("skill") and r.get("frequency") and r.get("_n"):
            by_task[r["task"]].append(r)
    out = []
    for task, trs in sorted(by_task.items()):
        column = "final_choice_loss" if all(r.get("final_choice_loss") for r in trs) else "final_loss"
        trs = [r for r in trs if r.get(column) and float(r[column]) > 0]
        for axis, fixed, vary, name in (
            ("size", "frequency", "_n", "alpha_N"),
            ("frequency", "_n", "frequency", "alpha_f"),
        ):
            groups: dict[Any, list[dict]] = defaultdict(list)
            for r in trs:
                groups[r[fixed]].append(r)
            for value, grs in sorted(groups.items()):
                if len({r[vary] for r in grs}) < MIN_POINTS:
                    continue
                fit = _fit_or_note(
                    fit_law,
                    [[float(r[vary]) for r in grs]],
                    [float(r[column]) for r in grs],
                    [r["cell"] for r in grs],
                    [("A", name)],
                    floor=False,
                    exponent_bounds=(-3.0, 3.0),
                    resamples=resamples,
                    rng_seed=rng_seed,
                )
                fit["x"] = [float(r[vary]) for r in grs]
                fit["y"] = [float(r[column]) for r in grs]
                fixed_name = "frequency" if fixed == "frequency" else "non_embedding_params"
                out.append(
                    {
                        "task": task,
                        "metric": column.removeprefix("final_"),
                        "vs": axis,
                        fixed_name: value,
                        **fit,
                    }
                )
    return out


def fit_sweep(sweep_dir: str | Path, resamples: int = RESAMPLES, rng_seed: int = 0) -> dict[str, Any]:
    """All fits of a sweep as ``fits.json`` holds them (see the module docstring)."""
    if not records.is_sweep_dir(Path(sweep_dir)):
        raise SmalllmError(
            f"{sweep_dir}: not a sweep directory (no {records.SWEEP_FILE} nor {records.CELLS_DIR}/)"
        )
    info, rows = collect(sweep_dir)
    curves = background_curves(info, rows)
    sizes = {c.n for c in curves}
    if len(sizes) < MIN_POINTS:
        raise SmalllmError(
            f"{sweep_dir}: {len(sizes)} model size(s) with background evaluations; fitting needs at least "
            f"{MIN_POINTS} (run more cells, or a sweep over model sizes)"
        )
    out: dict[str, Any] = {
        "sweep": info.name,
        "definition": "see smalllm.sweep.fits: Huber(delta=1e-3) on log loss, L-BFGS-B from a grid of "
        "starts, 95% percentile bootstrap over runs; N = non-embedding parameters, D = tokens, C = 6*N*D",
        "runs": [
            {"cell": c.cell, "size": c.size, "N": c.n, "tokens": c.tokens, "loss": c.loss} for c in curves
        ],
    }
    # L(N): each run's final loss, among the runs trained longest (a shorter budget would mix D into N).
    longest = max(c.tokens[-1] for c in curves)
    final = [c for c in curves if c.tokens[-1] >= 0.99 * longest]
    note = f"final loss of the runs at the longest budget ({longest:,} tokens)"
    if len({c.n for c in final}) < MIN_POINTS:
        final, note = curves, "final loss of every run (budgets differ across sizes)"
    out["L_N"] = _fit_or_note(
        fit_law,
        [[c.n for c in final]],
        [c.loss[-1] for c in final],
        [c.cell for c in final],
        [("A", "alpha")],
        resamples=resamples,
        rng_seed=rng_seed,
    ) | {"points_from": note}
    n_pts = [c.n for c in curves for _ in c.tokens]
    d_pts = [t for c in curves for t in c.tokens]
    l_pts = [v for c in curves for v in c.loss]
    g_pts = [c.cell for c in curves for _ in c.tokens]
    out["L_ND"] = _fit_or_note(
        fit_law,
        [n_pts, d_pts],
        l_pts,
        g_pts,
        [("A", "alpha"), ("B", "beta")],
        resamples=resamples,
        rng_seed=rng_seed,
        derived={"a_opt": optimal_n_exponent},
    )
    compute = [FLOPS_PER_PARAM_TOKEN * n * d for n, d in zip(n_pts, d_pts, strict=True)]
    env = lower_envelope(compute, l_pts)
    out["frontier"] = {
        "points": [
            {"C": compute[i], "N": n_pts[i], "D": d_pts[i], "loss": l_pts[i], "cell": g_pts[i]} for i in env
        ],
        "L_C": _fit_or_note(
            fit_law,
            [[compute[i] for i in env]],
            [l_pts[i] for i in env],
            [g_pts[i] for i in env],
            [("A", "gamma")],
            resamples=resamples,
            rng_seed=rng_seed,
        ),
    }
    nd = out["L_ND"]
    if "params" in nd and nd["params"]["alpha"] + nd["params"]["beta"] > 0:
        out["frontier"]["N_opt"] = {
            "form": "N_opt(C) = G*(C/6)^a from L(N, D)",
            "a": nd["params"]["a_opt"],
            "a_ci": nd["ci"].get("a_opt"),
            "at": [{"C": c, "N_opt": optimal_n(nd["params"], c)} for c in sorted({compute[i] for i in env})],
        }
    n_of = {c.cell: c.n for c in curves}
    task_rows = [{**r, "_n": n_of.get(r["cell"])} for r in rows if r.get("state") == "done"]
    out["tasks"] = task_fits(task_rows, resamples, rng_seed)
    return out


# ---------------------------------------------------------------------------------------------- output


def _ci(fit: dict[str, Any], key: str) -> str:
    ci = fit.get("ci", {}).get(key)
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "n/a"


def fits_markdown(fits: dict[str, Any]) -> str:
    """The fits as a markdown table (what ``fits.md`` and the sweep report show)."""
    lines = [
        "| law | points (runs) | exponent | 95% CI | E | 95% CI | RMS log residual |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, fit: dict[str, Any], exponent: str) -> None:
        if "params" not in fit:
            lines.append(f"| {name} | – | skipped: {fit.get('skipped', 'n/a')} | | | | |")
            return
        p = fit["params"]
        e = _fmt(p["E"]) if "E" in p else "–"
        lines.append(
            f"| {name} | {fit['points']} ({fit['runs']}) | {exponent} = {_fmt(p[exponent])} | "
            f"{_ci(fit, exponent)} | {e} | {_ci(fit, 'E') if 'E' in p else '–'} | {_fmt(fit['rms_log_residual'])} |"
        )

    row("L(N) = E + A·N^-α", fits["L_N"], "alpha")
    row("L(N, D) = E + A·N^-α + B·D^-β", fits["L_ND"], "alpha")
    if "params" in fits["L_ND"]:
        row("  (same fit)", fits["L_ND"], "beta")
        row("  N_opt(C) ∝ C^a, a = β/(α+β)", fits["L_ND"], "a_opt")
    row("L(C) = E + A·C^-γ (lower envelope)", fits["frontier"]["L_C"], "gamma")
    for t in fits.get("tasks", []):
        at = f"f = {_fmt(t['frequency'])}" if t["vs"] == "size" else f"N = {t['non_embedding_params']:,}"
        exp = "alpha_N" if t["vs"] == "size" else "alpha_f"
        row(f"{t['task']} {t['metric']} = A·{'N' if t['vs'] == 'size' else 'f'}^-α at {at}", t, exp)
    lines += [
        "",
        "N: non-embedding parameters; D: tokens; C = 6·N·D. Huber(δ = 1e-3) on log loss, L-BFGS-B from a grid "
        "of starts; CIs: percentile bootstrap over runs (see `smalllm/sweep/fits.py`).",
    ]
    return "\n".join(lines)


def write_fits(fits: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``fits.json`` and ``fits.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(fits_json_file(out_dir), fits)
    atomic_write_text(fits_md_file(out_dir), f"# Scaling fits: {fits['sweep']}\n\n{fits_markdown(fits)}\n")
    return [fits_json_file(out_dir), fits_md_file(out_dir)]
