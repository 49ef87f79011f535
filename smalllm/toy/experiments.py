"""Experiments (a)-(d) of the linear-mixture toy, each a function of a :class:`ToyConfig`.

(a) ``heatmap``: normalised loss per (width, task) with the Thm. 3 staircase N*_k(m), m = 1, 2, 3.
(b) ``signal``: captured signal of a rare task against the frequent-set residual delta_F, with the
    predicted kink, and the common-task gradient norm beside its Thm. 4 bound.
(c) ``retention``: matched-frequency injection of the rarest task; gain and decay of s~_r per cycle.
(d) ``rank1``: rank-1 tasks, N_emp(k) = min{N : s_k > threshold} against N_crit(k) = k.

Each returns a JSON-ready result dict and logs one metrics record per (step, width) through ``log``.
(a) and (b) read the same trained grid, so ``all`` trains it once per beta.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from smalllm.errors import ConfigError
from smalllm.toy import theory as th
from smalllm.toy.config import ToyConfig
from smalllm.toy.model import Trainer, WidthStack, zipf_sampler

Log = Callable[[dict], None]


@dataclass
class Mixture:
    """One task mixture: priors, spectra and the diagonal covariances on R^D."""

    pi: np.ndarray
    lam: np.ndarray
    cov: np.ndarray

    @classmethod
    def from_config(cls, cfg: ToyConfig, beta: float) -> Mixture:
        t = cfg.tasks
        lam = (
            np.array(t.spectra, dtype=float) if t.spectra else th.power_spectra(t.num_tasks, t.block, t.alpha)
        )
        return cls(th.zipf_priors(t.num_tasks, beta), lam, th.diagonal_covariances(lam, t.dim))


def subspace_metrics(weight: np.ndarray, mix: Mixture, frequent: np.ndarray, rare: int | None) -> dict:
    """The subspace metrics of one width: s_k, s~_k, delta_F, ||G_F|| with its Thm. 4 bound, and
    (given a rare task) cos(G_r, G_F)."""
    basis = th.orthonormal_basis(weight)
    width, dim = weight.shape
    signal = th.captured_signal(basis, mix.cov)
    residual = th.frequent_residual(basis, mix.pi, mix.cov, frequent)
    grad_f = th.riemannian_gradient(basis, mix.pi[frequent] @ mix.cov[frequent])
    out = {
        "signal": signal.tolist(),
        "signal_corrected": th.corrected_signal(signal, width, dim).tolist(),
        "delta_F": residual,
        "grad_F": float(np.linalg.norm(grad_f)),
        "grad_F_bound": th.thm4_bound(mix.pi, mix.cov, frequent, residual),
    }
    if rare is not None:
        out["cos_rare_F"] = th.gradient_cosine(th.riemannian_gradient(basis, mix.cov[rare]), grad_f)
    return out


def _trainer(cfg: ToyConfig, stack: WidthStack) -> Trainer:
    t = cfg.train
    return Trainer(stack, t.lr, t.warmup, t.weight_decay, t.clip, t.cpu_threads)


def frequent_tasks(cfg: ToyConfig, pi: np.ndarray) -> np.ndarray:
    """The frequent set F (0-based task indices) as ``cfg.metrics`` defines it."""
    return th.frequent_set(pi, cfg.metrics.frequent_mass, cfg.metrics.frequent_count)


def train_grid(cfg: ToyConfig, beta: float, device: torch.device, log: Log) -> dict:
    """Train every width of ``cfg.widths`` on the beta mixture; the data of experiments (a) and (b)."""
    mix = Mixture.from_config(cfg, beta)
    frequent = frequent_tasks(cfg, mix.pi)
    outside = [k for k in range(len(mix.pi)) if k not in set(frequent.tolist())]
    rare = outside[0] if outside else None  # the most frequent task outside F: Fig. 3's "rare" task
    stack = WidthStack(cfg.widths, mix.lam, cfg.tasks.dim, cfg.train.seed, device)
    trajectory: list[dict] = []

    def on_eval(step: int) -> None:
        losses = stack.normalised_loss()
        for i, width in enumerate(cfg.widths):
            record = {"experiment": "grid", "beta": beta, "width": width, "step": step}
            record["loss_norm"] = losses[i].tolist()
            record.update(subspace_metrics(stack.bottleneck(i), mix, frequent, rare))
            log(record)
            trajectory.append(record)

    _trainer(cfg, stack).run(
        cfg.train.steps,
        zipf_sampler(mix.pi, cfg.train.batch_size, stack.device),
        cfg.train.eval_every,
        on_eval,
    )
    final = [r for r in trajectory if r["step"] == trajectory[-1]["step"]]
    return {
        "beta": beta,
        "mix": mix,
        "frequent": frequent,
        "rare": rare,
        "trajectory": trajectory,
        "final": final,
    }


def empirical_critical_widths(
    loss_norm: np.ndarray, lam: np.ndarray, widths: list[int], learned: float, features: int = 3
) -> np.ndarray:
    """Smallest grid width at which task k has gained its m-th direction (NaN if none does).

    Gained means the normalised loss fell below ``1 - (sum_{j<m} lambda_j + learned * lambda_m) / Tr C_k``:
    past ``learned`` of the way from the (m-1)-feature optimum to the m-feature one.
    """
    energy = lam.sum(axis=1)
    out = np.full((lam.shape[0], features), np.nan)
    for k in range(lam.shape[0]):
        for m in range(min(features, lam.shape[1])):
            if lam[k, m] <= 0:
                continue
            level = 1.0 - (lam[k, :m].sum() + learned * lam[k, m]) / energy[k]
            hits = np.flatnonzero(loss_norm[:, k] <= level)
            if hits.size:
                out[k, m] = widths[hits[0]]
    return out


def rung_index(widths: list[int], value: float) -> int:
    """Index of the smallest grid width >= ``value`` (``len(widths)`` when beyond the grid or NaN)."""
    if np.isnan(value):
        return len(widths)
    return int(np.searchsorted(np.asarray(widths), value, side="left"))


def heatmap_result(cfg: ToyConfig, grid: dict) -> dict:
    """Experiment (a): theory staircase against the trained grid, with each task's rung error."""
    mix = grid["mix"]
    loss = np.array([r["loss_norm"] for r in grid["final"]])
    theory = th.critical_widths(mix.pi, mix.lam, 3)
    empirical = empirical_critical_widths(loss, mix.lam, cfg.widths, cfg.metrics.learned)
    errors = [
        rung_index(cfg.widths, empirical[k, 0]) - rung_index(cfg.widths, theory[k, 0])
        for k in range(len(mix.pi))
    ]
    predicted = np.array([th.predicted_normalised_loss(mix.pi, mix.lam, n) for n in cfg.widths])
    return {
        "beta": grid["beta"],
        "widths": cfg.widths,
        "loss_norm": loss.tolist(),
        "predicted_loss_norm": predicted.tolist(),
        "critical_width_theory": _nan_to_none(theory),
        "critical_width_empirical": _nan_to_none(empirical),
        "first_feature_rung_error": errors,
        "max_abs_rung_error": int(np.max(np.abs(errors))),
        "mean_abs_loss_gap": float(np.mean(np.abs(loss - predicted))),
    }


def signal_result(cfg: ToyConfig, grid: dict) -> dict:
    """Experiment (b): the rare task's signal against delta_F, the Prop. 6 kink, and the Thm. 4 check."""
    mix, frequent, rare = grid["mix"], grid["frequent"], grid["rare"]
    out = {
        "beta": grid["beta"],
        "frequent_set": (frequent + 1).tolist(),
        "rare_task": None if rare is None else rare + 1,
    }
    bound_ok = [r["grad_F"] <= r["grad_F_bound"] * (1 + 1e-9) + 1e-12 for r in grid["trajectory"]]
    out["thm4_bound_holds_fraction"] = float(np.mean(bound_ok))
    if rare is not None:
        mu_f = th.mixture_eigenvalues(mix.pi, mix.lam, frequent)
        n_crit = th.prop6_critical_width(mu_f, mix.pi[rare] * mix.lam[rare, 0])
        out["prop6_critical_width"] = n_crit
        out["thm3_critical_width"] = float(th.critical_widths(mix.pi, mix.lam, 1)[rare, 0])
        out["delta_F_kink"] = th.frequent_residual_at_optimum(mu_f, n_crit)
        out["final_delta_F"] = [r["delta_F"] for r in grid["final"]]
        out["final_rare_signal_corrected"] = [r["signal_corrected"][rare] for r in grid["final"]]
    return out


def injection_counts(gap: int, batch_size: int, rho: float) -> list[int]:
    """Rare samples in each of the k injection steps that follow a gap of ``gap`` withheld steps.

    Frequency-matched means one cycle of G + k steps of B samples gives the rare task what i.i.d.
    sampling at frequency rho would: m = round((G + k) * B * rho) samples in all. The loss is a batch
    mean, so a sample weighs 1/B whatever its step, and an injection larger than one batch is spread
    over k = ceil(m / B) steps, never packed into one (there m samples would carry one batch's weight,
    not m / B batches'). The frequent tasks then get (G + k) * B - m samples, also their i.i.d. share.
    k and m depend on each other; the smallest consistent k is found by iterating from k = 1 (it only
    grows, and stops because rho < 1). The m samples are spread evenly over the k steps.
    """
    if not 0 < rho < 1:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    steps = 1
    while True:
        total = max(1, round((gap + steps) * batch_size * rho))
        needed = math.ceil(total / batch_size)
        if needed <= steps:
            break
        steps = needed
    return [total // steps + (i < total % steps) for i in range(steps)]


def run_retention(cfg: ToyConfig, device: torch.device, log: Log) -> dict:
    """Experiment (c): after ``train.steps`` ordinary steps, for each gap G (one after another on the
    same models) ``cycles`` times: withhold the rarest task for G steps, then inject it over k steps
    holding m rare samples in all and frequent ones to fill each batch of B (:func:`injection_counts`:
    m = round((G + k) * B * rho_r) with rho_r = pi_K, k = ceil(m / B), so both the rare task's long-run
    frequency and its weight in the summed batch-mean losses equal those of i.i.d. sampling)."""
    rc = cfg.retention
    if cfg.tasks.num_tasks < 2:
        raise ConfigError("toy.tasks.num_tasks: the retention experiment needs at least 2 tasks")
    mix = Mixture.from_config(cfg, rc.beta)
    rare = len(mix.pi) - 1
    frequent = frequent_tasks(cfg, mix.pi)
    others = np.delete(np.arange(len(mix.pi)), rare)
    withheld = np.where(np.arange(len(mix.pi)) == rare, 0.0, mix.pi)
    withheld /= withheld.sum()
    stack = WidthStack(rc.widths, mix.lam, cfg.tasks.dim, cfg.train.seed, device)
    trainer = _trainer(cfg, stack)
    trainer.run(cfg.train.steps, zipf_sampler(mix.pi, rc.batch_size, stack.device), cfg.train.steps)
    frequent_sampler = zipf_sampler(withheld, rc.batch_size, stack.device)
    other_tasks = torch.as_tensor(others, device=stack.device)
    other_probs = torch.as_tensor(withheld[others], dtype=torch.float32, device=stack.device)
    rho = float(mix.pi[rare])

    def injection_batch(rare_count: int) -> torch.Tensor:
        """``rare_count`` rare samples, then frequent ones (drawn from the withheld mixture) up to B."""
        rare_part = torch.full((rare_count,), rare, device=stack.device)
        if rare_count == rc.batch_size:  # torch.multinomial refuses to draw zero samples
            return rare_part
        fill = torch.multinomial(
            other_probs, rc.batch_size - rare_count, replacement=True, generator=stack.generator
        )
        return torch.cat([rare_part, other_tasks[fill]])

    def measure(gap: int, cycle: int, phase: str) -> list[dict]:
        rows = []
        for i, width in enumerate(rc.widths):
            m = subspace_metrics(stack.bottleneck(i), mix, frequent, rare)
            row = {
                "experiment": "retention",
                "gap": gap,
                "cycle": cycle,
                "phase": phase,
                "width": width,
                "step": trainer.step,
                "rare_signal_corrected": m["signal_corrected"][rare],
                "cos_rare_F": m["cos_rare_F"],
                "delta_F": m["delta_F"],
            }
            log(row)
            rows.append(row)
        return rows

    per_gap = []
    for gap in rc.gaps:
        counts = injection_counts(gap, rc.batch_size, rho)
        before, after, cosines = [], [], []
        for cycle in range(rc.cycles):
            trainer.run(gap, frequent_sampler, gap)
            rows = measure(gap, cycle, "before")
            before.append([r["rare_signal_corrected"] for r in rows])
            cosines.append([r["cos_rare_F"] for r in rows])
            for count in counts:
                tasks = injection_batch(count)
                trainer.run(1, lambda step, generator, batch=tasks: batch, 1)
            after.append([r["rare_signal_corrected"] for r in measure(gap, cycle, "after")])
        b, a = np.array(before), np.array(after)
        per_gap.append(
            {
                "gap": gap,
                "injected_samples": sum(counts),
                "injection_steps": len(counts),
                "gain": (a - b).mean(axis=0).tolist(),  # per width: jump at an injection
                "decay": (a[:-1] - b[1:]).mean(axis=0).tolist(),  # per width: loss over the next gap
                "rare_signal_before": b.tolist(),
                "rare_signal_after": a.tolist(),
                "cos_rare_F": np.nanmean(np.array(cosines, dtype=float), axis=0).tolist(),
            }
        )
    competitors = th.mixture_eigenvalues(mix.pi[others], mix.lam[others])
    return {
        "beta": rc.beta,
        "widths": rc.widths,
        "rare_task": rare + 1,
        "rho_r": rho,
        "prop6_critical_width_all_competitors": th.prop6_critical_width(competitors, rho * mix.lam[rare, 0]),
        "prop6_critical_width_F": th.prop6_critical_width(
            th.mixture_eigenvalues(mix.pi, mix.lam, frequent), rho * mix.lam[rare, 0]
        ),
        "per_gap": per_gap,
    }


def rank1_matches(widths: list[int], empirical: list[int | None], theory: list[int]) -> list[bool]:
    """For each task whose N_crit is inside the grid: is N_emp on N_crit's rung?

    Rungs as in :func:`heatmap_result` (:func:`rung_index`): on a grid with gaps, N_crit = 3 and
    N_emp = 4 on widths (1, 2, 4) agree, since 4 is the smallest grid width that can hold 3 features.
    """
    return [
        rung_index(widths, float("nan") if emp is None else emp) == rung_index(widths, crit)
        for emp, crit in zip(empirical, theory, strict=True)
        if crit <= widths[-1]
    ]


def run_rank1(cfg: ToyConfig, device: torch.device, log: Log) -> dict:
    """Experiment (d): rank-1 tasks; N_emp(k) = min{N : s_k > threshold} against Thm. 3 / Prop. 6."""
    r1 = cfg.rank1
    lam = th.rank1_spectra(r1.num_tasks, 1)
    pi = th.zipf_priors(r1.num_tasks, r1.beta)
    mix = Mixture(pi, lam, th.diagonal_covariances(lam, cfg.tasks.dim))
    frequent = frequent_tasks(cfg, pi)
    stack = WidthStack(r1.widths, lam, cfg.tasks.dim, cfg.train.seed, device)
    signals: list[list[float]] = []

    def on_eval(step: int) -> None:
        signals.clear()
        for i, width in enumerate(r1.widths):
            m = subspace_metrics(stack.bottleneck(i), mix, frequent, None)
            log({"experiment": "rank1", "width": width, "step": step, **m})
            signals.append(m["signal"])

    _trainer(cfg, stack).run(
        r1.steps, zipf_sampler(pi, cfg.train.batch_size, stack.device), cfg.train.eval_every, on_eval
    )
    s = np.array(signals)  # (n_widths, K)
    empirical = [
        next((w for w, row in zip(r1.widths, s, strict=True) if row[k] > r1.threshold), None)
        for k in range(r1.num_tasks)
    ]
    thm3 = th.critical_widths(pi, lam, 1)[:, 0].astype(int).tolist()
    prop6 = [
        th.prop6_critical_width(th.mixture_eigenvalues(np.delete(pi, k), np.delete(lam, k, 0)), pi[k])
        for k in range(r1.num_tasks)
    ]
    matches = rank1_matches(r1.widths, empirical, thm3)
    return {
        "beta": r1.beta,
        "widths": r1.widths,
        "signal": s.tolist(),
        "n_emp": empirical,
        "n_crit_thm3": thm3,
        "n_crit_prop6": prop6,
        "match_fraction": float(np.mean(matches)) if matches else float("nan"),
    }


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(x) else float(x) for x in row] for row in a]
