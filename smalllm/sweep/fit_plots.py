"""Plots of ``smalllm fit``: the data and the fitted laws, log-log (report path only: imports matplotlib).

Drawn from ``fits.json``'s content alone, so a report can redraw them without refitting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from smalllm.figures import new_figure, save_figure
from smalllm.sweep.fits import FLOPS_PER_PARAM_TOKEN

DPI = 110


def _figure() -> tuple[Figure, Any]:
    fig = new_figure(6.0, 4.2, DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _save(fig: Figure, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _law(p: dict[str, float], x: np.ndarray, exponent: str) -> np.ndarray:
    return p.get("E", 0.0) + p["A"] * x ** -p[exponent]


def plot_fits(fits: dict[str, Any], out_dir: Path) -> list[Path]:
    """``fit_loss_vs_params.png``, ``fit_loss_vs_tokens.png``, ``fit_loss_vs_compute.png`` and one
    ``fit_task_<task>.png`` per task with fits; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = fits["runs"]
    written = []

    fig, ax = _figure()
    ax.scatter(
        [r["N"] for r in runs], [r["loss"][-1] for r in runs], color="k", s=14, label="final loss per run"
    )
    if "params" in fits["L_N"]:
        n = np.geomspace(min(r["N"] for r in runs), max(r["N"] for r in runs), 100)
        p = fits["L_N"]["params"]
        ax.plot(n, _law(p, n, "alpha"), label=f"E + A·N^-α, α = {p['alpha']:.3g}")
    written.append(
        _save(
            fig,
            ax,
            out_dir / "fit_loss_vs_params.png",
            "non-embedding parameters N",
            "background loss",
            "L(N)",
        )
    )

    fig, ax = _figure()
    nd = fits["L_ND"].get("params")
    sizes = sorted({r["N"] for r in runs})
    for k, n_val in enumerate(sizes):
        color = f"C{k % 10}"
        for r in (r for r in runs if r["N"] == n_val):
            ax.plot(r["tokens"], r["loss"], "o", ms=3, color=color)
        if nd:
            d = np.geomspace(
                min(t for r in runs for t in r["tokens"]), max(t for r in runs for t in r["tokens"]), 100
            )
            pred = nd["E"] + nd["A"] * n_val ** -nd["alpha"] + nd["B"] * d ** -nd["beta"]
            ax.plot(d, pred, "-", color=color, lw=1, label=f"N = {n_val:,}")
    title = "L(N, D)" + (f": α = {nd['alpha']:.3g}, β = {nd['beta']:.3g}" if nd else "")
    written.append(_save(fig, ax, out_dir / "fit_loss_vs_tokens.png", "tokens D", "background loss", title))

    fig, ax = _figure()
    for k, n_val in enumerate(sizes):
        for r in (r for r in runs if r["N"] == n_val):
            c = [FLOPS_PER_PARAM_TOKEN * n_val * t for t in r["tokens"]]
            ax.plot(c, r["loss"], "-", color=f"C{k % 10}", lw=0.8, alpha=0.7)
    env = fits["frontier"]["points"]
    ax.plot([e["C"] for e in env], [e["loss"] for e in env], "ko", ms=4, label="lower envelope")
    lc = fits["frontier"]["L_C"].get("params")
    if lc and env:
        c = np.geomspace(env[0]["C"], env[-1]["C"], 100)
        ax.plot(c, _law(lc, c, "gamma"), "k--", label=f"E + A·C^-γ, γ = {lc['gamma']:.3g}")
    written.append(
        _save(
            fig,
            ax,
            out_dir / "fit_loss_vs_compute.png",
            "compute C = 6·N·D (FLOPs)",
            "background loss",
            "L(C)",
        )
    )

    for task in sorted({t["task"] for t in fits.get("tasks", [])}):
        fig = new_figure(10.0, 4.2, DPI)
        axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
        for ax, vs, xlabel in zip(
            axes, ("size", "frequency"), ("non-embedding parameters N", "task frequency")
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            fits_here = [t for t in fits["tasks"] if t["task"] == task and t["vs"] == vs]
            for k, t in enumerate(fits_here):
                color = f"C{k % 10}"
                at = f"f = {t['frequency']:.3g}" if vs == "size" else f"N = {t['non_embedding_params']:,}"
                ax.plot(t["x"], t["y"], "o", ms=3, color=color)
                if "params" in t:
                    x = np.geomspace(min(t["x"]), max(t["x"]), 50)
                    exp = "alpha_N" if vs == "size" else "alpha_f"
                    ax.plot(
                        x,
                        _law(t["params"], x, exp),
                        "-",
                        color=color,
                        label=f"{at}: α = {t['params'][exp]:.3g}",
                    )
            ax.set_xlabel(xlabel)
            ax.set_ylabel(fits_here[0]["metric"] if fits_here else "loss")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.suptitle(f"{task}: loss vs size at fixed frequency, and vs frequency at fixed size", fontsize=10)
        written.append(save_figure(fig, out_dir / f"fit_task_{task}.png"))
    return written
