"""``smalllm demo`` (``make demo``): the rare-skill effect on a laptop CPU, end to end, no downloads.

It runs the packaged sweep ``smalllm/configs/demo_sweep.yaml`` (a cut of
``configs/experiments/cpu_frontier.yaml``: two micro model widths x two frequencies of T_CMP) into
``runs/demo-sweep`` under the current directory, then prints the learned frontier and the path of the
accuracy heatmap. The sweep is resumable: running the demo again skips the finished cells (and
continues a cell that was interrupted from its checkpoint), so the second run only re-draws the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from smalllm.errors import SmalllmError

DEMO_SWEEP = Path(__file__).parent / "configs" / "demo_sweep.yaml"
DEMO_DIR = Path("runs") / "demo-sweep"


def run_demo(
    sweep_dir: str | Path = DEMO_DIR,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or finish) the demo sweep and report it; return the accuracy heatmap's path.

    ``workers`` defaults to one cell per CPU core (each cell single-threaded), at most one per cell:
    micro models use one core well and several poorly, so on two cores two cells at a time finish
    the grid about twice as fast as one two-threaded cell at a time.
    """
    from smalllm.sweep.estimates import available_cpus
    from smalllm.sweep.grid import expand, load_sweep
    from smalllm.sweep.records import cell_run, cells_root
    from smalllm.sweep.report import heatmap_paths
    from smalllm.sweep.runner import SweepFailed, run_sweep

    spec = load_sweep(DEMO_SWEEP, sweep_dir=sweep_dir)
    cells = expand(spec)
    if workers is None:
        workers = max(1, min(len(cells), available_cpus()))
    sizes = list(dict.fromkeys(str(c.params.get(spec.size_key)) for c in cells))
    freqs = list(dict.fromkeys(c.params.get("data.tasks.0.frequency") for c in cells))
    log(
        f"smalllm demo: Huang et al.'s T_CMP task injected into the built-in synthetic corpus at "
        f"{len(freqs)} frequencies x {len(sizes)} model sizes ({', '.join(sizes)}): {len(cells)} runs, "
        f"{workers} at a time, into {Path(sweep_dir)}/ (resumable: run it again to continue or re-draw)."
    )
    t0 = time.perf_counter()
    try:
        run_sweep(DEMO_SWEEP, workers=workers, sweep_dir=sweep_dir, log=log)
    except SweepFailed as exc:
        log(f"note: {exc}")
    from smalllm.eval.report import write_report

    # Each run also gets its own report: per-task curves against tokens with the emergence marker.
    runs = [cell_run(Path(sweep_dir), cell.name) for cell in cells]
    for run in runs:
        if run.has_metrics():
            write_report(run.path)
    from smalllm.sweep.aggregate import collect

    for line in size_verdicts(collect(sweep_dir)[1]):
        log(line)
    heatmaps = heatmap_paths(sweep_dir)
    if not heatmaps:
        raise SmalllmError(
            f"demo: no finished cells in {sweep_dir}; see the logs in {cells_root(Path(sweep_dir))}"
        )
    log(
        f"\ndemo finished in {time.perf_counter() - t0:.0f} s; full report: {Path(sweep_dir) / 'report' / 'summary.md'}"
    )
    reports = sorted(run.report_dir for run in runs if run.report_dir.is_dir())
    if reports:
        log(f"per-run reports with emergence markers: {reports[0]}/ and {len(reports) - 1} more")
    log(f"heatmap: {heatmaps[0]}")
    return heatmaps[0]


def size_verdicts(rows: list[dict]) -> list[str]:
    """One line per task frequency: the smallest and the largest model's final choice accuracy with
    their 95% intervals over held-out instances, and whether those intervals separate.

    With one task table this says nothing about other tables (the full grid's f* intervals do); it
    says whether the demo's own cells show a size effect beyond instance noise, or plainly that they
    do not.
    """
    done = [r for r in rows if r.get("final_choice_acc") is not None and r.get("params")]
    if not done:
        return []
    lines = ["", "size effect in these cells (choice accuracy, 95% CI over the held-out pairs):"]
    for freq in sorted({float(r["frequency"]) for r in done}):
        at = sorted((r for r in done if float(r["frequency"]) == freq), key=lambda r: int(r["params"]))
        small, large = at[0], at[-1]
        if small is large:
            continue
        apart = float(large["choice_acc_lo"]) > float(small["choice_acc_hi"])
        verdict = (
            "the larger model is ahead beyond instance noise"
            if apart
            else "no size effect beyond instance noise at this budget"
        )
        lines.append(
            f"  {freq:g}: {small['size']} {float(small['final_choice_acc']):.3f} "
            f"[{float(small['choice_acc_lo']):.3f}, {float(small['choice_acc_hi']):.3f}] vs {large['size']} "
            f"{float(large['final_choice_acc']):.3f} [{float(large['choice_acc_lo']):.3f}, "
            f"{float(large['choice_acc_hi']):.3f}] (best one-position rule {float(large['rule_acc']):.3f}): {verdict}"
        )
    return lines
