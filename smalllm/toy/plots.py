"""PNG figures of the toy experiments (the only toy module that imports matplotlib).

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas, so no display and no
global pyplot state are involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from smalllm.figures import new_figure, save_figure


def _figure(width: float, height: float) -> Figure:
    return new_figure(width, height, dpi=80)


def plot_heatmaps(results: list[dict], path: Path) -> None:
    """(a) one panel per beta: normalised loss (task x width) and the staircase N*_k(m), m = 1, 2, 3."""
    fig = _figure(4.2 * len(results), 3.8)
    for ax, res in zip(fig.subplots(1, len(results), squeeze=False)[0], results, strict=True):
        widths = res["widths"]
        loss = np.array(res["loss_norm"]).T  # (K, n_widths)
        image = ax.imshow(loss, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        theory = np.array(res["critical_width_theory"], dtype=float)
        tasks = np.arange(loss.shape[0])
        for m, style in zip(range(3), ["-", "--", ":"], strict=True):
            # A width N sits at the fractional column of its place on the (log-spaced) grid.
            cols = np.interp(
                np.log(theory[:, m]),
                np.log(widths),
                np.arange(len(widths)),
                left=-0.5,
                right=len(widths) - 0.5,
            )
            ax.step(cols, tasks, where="mid", color="white", linestyle=style, label=f"N*_k({m + 1})")
        ax.set_xticks(range(len(widths)), [str(w) for w in widths], fontsize=7)
        ax.set_yticks(tasks[::2], [str(k + 1) for k in tasks[::2]], fontsize=7)
        ax.set_xlabel("width N")
        ax.set_ylabel("task k (by frequency)")
        ax.set_title(f"beta = {res['beta']:g}: loss / baseline")
        ax.legend(fontsize=6, loc="upper left")
        fig.colorbar(image, ax=ax, shrink=0.8)
    save_figure(fig, path)


def plot_signal(results: list[dict], grids: list[dict], path: Path) -> None:
    """(b) rare-task signal against delta_F (trajectories per width, kink line), and ||G_F|| vs bound."""
    fig = _figure(8.5, 3.6 * len(results))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (ax, ax_g), res, grid in zip(axes, results, grids, strict=True):
        traj = grid["trajectory"]
        widths = sorted({r["width"] for r in traj})
        colours = [f"C{i % 10}" for i in range(len(widths))]
        rare = grid["rare"]
        for width, colour in zip(widths, colours, strict=True):
            rows = [r for r in traj if r["width"] == width]
            delta = [r["delta_F"] for r in rows]
            if rare is not None:
                ax.plot(delta, [r["signal_corrected"][rare] for r in rows], color=colour, alpha=0.6, lw=1)
                ax.plot(delta[-1], rows[-1]["signal_corrected"][rare], "o", color=colour, label=f"N={width}")
            ax_g.plot(delta, [r["grad_F"] for r in rows], color=colour, lw=1)
            ax_g.plot(delta, [r["grad_F_bound"] for r in rows], color=colour, lw=1, ls="--")
        if "delta_F_kink" in res:
            ax.axvline(
                res["delta_F_kink"],
                color="k",
                ls=":",
                label=f"delta*_F(N_crit={res['prop6_critical_width']})",
            )
        ax.set_xscale("log")
        ax.set_xlabel("delta_F")
        ax.set_ylabel(f"s~ of task {res.get('rare_task')}")
        ax.set_title(f"beta = {res['beta']:g}, F = tasks {res['frequent_set'][0]}..{res['frequent_set'][-1]}")
        ax.legend(fontsize=6, ncol=2)
        ax_g.set_xscale("log")
        ax_g.set_yscale("log")
        ax_g.set_xlabel("delta_F")
        ax_g.set_ylabel("||G_F|| (solid), Thm. 4 bound (dashed)")
    save_figure(fig, path)


def plot_retention(res: dict, path: Path) -> None:
    """(c) s~_r before/after each injection, gain and decay per cycle, and cos(G_r, G_F), per width."""
    fig = _figure(12, 3.6)
    ax_t, ax_d, ax_c = fig.subplots(1, 3)
    gaps = [g["gap"] for g in res["per_gap"]]
    for i, width in enumerate(res["widths"]):
        colour = f"C{i % 10}"
        xs, ys = [], []
        for g in res["per_gap"]:
            for b, a in zip(g["rare_signal_before"], g["rare_signal_after"], strict=True):
                ys += [b[i], a[i]]
        xs = np.arange(len(ys)) / 2
        ax_t.plot(xs, ys, color=colour, lw=1, label=f"N={width}")
        ax_d.plot(gaps, [g["gain"][i] for g in res["per_gap"]], "o-", color=colour, label=f"gain N={width}")
        ax_d.plot(gaps, [g["decay"][i] for g in res["per_gap"]], "x--", color=colour)
        ax_c.plot(gaps, [g["cos_rare_F"][i] for g in res["per_gap"]], "o-", color=colour, label=f"N={width}")
    ax_t.set_xlabel("injection cycle (all gaps in order)")
    ax_t.set_ylabel(f"s~_r (task {res['rare_task']})")
    ax_t.legend(fontsize=6)
    for ax in (ax_d, ax_c):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gap G (steps)")
    ax_d.set_ylabel("gain (o) / decay (x) of s~_r per cycle")
    ax_c.set_ylabel("cos(G_r, G_F) before injection")
    ax_c.legend(fontsize=6)
    fig.suptitle(
        f"beta = {res['beta']:g}, rho_r = {res['rho_r']:.2e}, N_r^crit = "
        f"{res['prop6_critical_width_all_competitors']} (all competitors)",
        fontsize=9,
    )
    save_figure(fig, path)


def plot_rank1(res: dict, path: Path) -> None:
    """(d) captured signal per (width, task) and N_emp(k) against N_crit(k) = k."""
    fig = _figure(9, 3.8)
    ax_h, ax_n = fig.subplots(1, 2)
    s = np.array(res["signal"]).T
    widths = res["widths"]
    # One column per grid width (the grid may have gaps), labelled with the width; at most ~16 labels.
    image = ax_h.imshow(
        s,
        aspect="auto",
        origin="lower",
        vmin=0,
        vmax=1,
        cmap="viridis",
        extent=(-0.5, len(widths) - 0.5, 0.5, s.shape[0] + 0.5),
    )
    columns = np.arange(0, len(widths), int(np.ceil(len(widths) / 16)))
    ax_h.set_xticks(columns, [str(widths[c]) for c in columns], fontsize=7)
    fig.colorbar(image, ax=ax_h, shrink=0.8)
    ax_h.set_xlabel("width N")
    ax_h.set_ylabel("task k")
    ax_h.set_title("captured signal s_k")
    tasks = np.arange(1, len(res["n_emp"]) + 1)
    ax_n.plot(tasks, res["n_crit_thm3"], "k-", label="N_crit(k) (Thm. 3)")
    ax_n.plot(tasks, res["n_crit_prop6"], "k:", label="Prop. 6")
    emp = [np.nan if n is None else n for n in res["n_emp"]]
    ax_n.plot(tasks, emp, "o", color="C3", label="N_emp(k)")
    ax_n.set_xlabel("task k")
    ax_n.set_ylabel("critical width")
    ax_n.set_title(f"match {res['match_fraction']:.0%} (beta = {res['beta']:g})")
    ax_n.legend(fontsize=7)
    save_figure(fig, path)
