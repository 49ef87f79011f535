"""``smalllm sweep``: validate every cell of a sweep, then dry-run it, emit launch scripts, or run it.

The work is done by the modules of the package, each owning one concern:

* :mod:`smalllm.sweep.grid`: the sweep file, its grids and cells;
* :mod:`smalllm.sweep.records`: the sweep directory, each cell's record, and whether a cell is done;
* :mod:`smalllm.sweep.estimates`: size and time of each cell (``--dry-run``);
* :mod:`smalllm.sweep.execution`: cells as resumable subprocesses, ``--workers`` at a time;
* :mod:`smalllm.sweep.emit`: Slurm / shell scripts instead (``--emit``);
* :mod:`smalllm.sweep.report`: the table and plots written when the sweep ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from smalllm.errors import SmalllmError
from smalllm.sweep import records
from smalllm.sweep.estimates import dry_run_table, format_duration
from smalllm.sweep.grid import expand, load_sweep, validate_cells


class SweepFailed(SmalllmError):
    """Some cells failed or stopped early; the others ran. Raised after the sweep (non-zero exit)."""


def run_sweep(
    config: str | Path,
    dry_run: bool = False,
    workers: int = 1,
    emit: str | None = None,
    retry_failed: bool = False,
    sweep_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    report: bool = True,
) -> dict[str, dict] | None:
    """Validate every cell of the sweep file ``config``, then dry-run, emit a script, or run it.

    Running writes the aggregate table and plots at the end (``report=True``) and raises
    :class:`SweepFailed` when some cells failed (after all the others ran). Returns the status
    record of each cell (None for ``dry_run`` and ``emit``).
    """
    if workers < 1:
        raise SmalllmError(f"--workers: must be >= 1, got {workers}")
    spec = load_sweep(config, sweep_dir=sweep_dir)
    cells = expand(spec)
    configs = validate_cells(spec, cells)
    # Before any mode, --dry-run included: a directory the sweep may not write into is refused up front.
    records.check_sweep_dir(spec.sweep_dir)
    if emit:
        from smalllm.sweep.emit import emit_script

        log(str(emit_script(spec, cells, emit, configs)))
        return None
    if dry_run:
        log(f"sweep {spec.name}: {len(cells)} cells -> {spec.sweep_dir}")
        if spec.seeds is not None:
            log(spec.seeds.describe())
        log(dry_run_table(spec, cells, configs, workers))
        return None
    from smalllm.sweep.execution import execute

    t0 = time.perf_counter()
    results = execute(spec, cells, workers=workers, retry_failed=retry_failed, log=log, configs=configs)
    wall = time.perf_counter() - t0
    counts = {s: sum(r.get("state") == s for r in results.values()) for s in ("done", "failed")}
    log(
        f"sweep {spec.name}: {counts['done']}/{len(cells)} cells done, {counts['failed']} failed "
        f"({format_duration(wall)} this run)"
    )
    if report and counts["done"]:
        from smalllm.sweep.report import write_sweep_report

        write_sweep_report(spec.sweep_dir, log=log)
    logs = f"logs in {spec.sweep_dir / records.CELLS_DIR}/<cell>/{records.CELL_LOG_FILE}"
    failed = [name for name, r in results.items() if r.get("state") == "failed"]
    if failed:
        first = results[failed[0]]
        raise SweepFailed(
            f"{len(failed)} of {len(cells)} cells failed (first: {failed[0]}: {first.get('error', '?')}); "
            f"{logs}; rerun with --retry-failed"
        )
    # A cell whose process died under a run that can continue (killed by the OOM killer, say) is not
    # failed, but the sweep did not finish either.
    broken = [n for n, r in results.items() if r.get("state") == "interrupted" and r.get("error")]
    if broken:
        raise SweepFailed(
            f"{len(broken)} of {len(cells)} cells stopped early (first: {broken[0]}: "
            f"{results[broken[0]]['error']}); {logs}; rerun to continue them"
        )
    return results
