"""``smalllm sweep``: run every cell of a sweep as its own ``smalllm train`` process, resumably.

Layout of a sweep directory::

    sweep.json                 # the expanded sweep: name, base, every cell's name, grid values, overrides
    cells/<cell>/status.json   # done | failed (with the last error line) | running | interrupted
    cells/<cell>/train.log     # stdout+stderr of every attempt, each after a '=== attempt' header
    cells/<cell>/run/          # the run directory (config.yaml, metrics.jsonl, summary.json, checkpoints)
    results.csv, report/       # written by smalllm.sweep.report when the sweep ends

Cells are independent subprocesses (``python -m smalllm.cli train BASE OVERRIDES run_dir=...``): one
that crashes cannot take the others down, and its log says why. The run directory is the source of
truth: a cell is finished when its ``summary.json`` says ``completed``; a cell whose run directory has a
``config.yaml`` but no completed summary (a killed sweep, Ctrl-C) continues with ``--resume`` from its
latest checkpoint. Failed cells are skipped on a rerun unless ``--retry-failed``.

The bookkeeping (status file, log) lives next to the run directory rather than in it, because
``smalllm train`` refuses to start in a non-empty directory and ``--overwrite`` deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalllm.config import RunConfig
from smalllm.errors import SmalllmError
from smalllm.sweep.grid import Cell, SweepSpec, expand, load_sweep, validate_cells

SWEEP_FILE = "sweep.json"
STATUS_FILE = "status.json"
LOG_FILE = "train.log"
LOCK_FILE = ".sweep.lock"

# Time estimates: seconds = FLOPs / (peak FLOP/s x MFU) + a fixed start-up per cell.
# CPU: measured on the 2-core AMD EPYC dev machine (shared with other jobs) with the cpu_frontier grid
# (micro presets, V=512, L=64, batch 32, one thread per cell): whole-cell wall time, evaluation
# included, gave 0.26 of plan.peak_flops (100 GFLOP/s per thread) for micro-w48 and 0.36-0.42 for
# micro-w96 (small models are overhead-bound); 0.35 is the working assumption.
CPU_MFU = 0.35
CPU_OVERHEAD_S = 8.0  # interpreter + torch/transformers imports + opening the cached corpus (~6-7 s measured)
# GPU: 0.4 of the dense bf16 peak is what well-tuned data-parallel LM training of 0.1-4B models
# reaches; tiny models (4m, 20m) reach far less, so their GPU hours are a lower bound.
GPU_MFU = 0.4
GPU_OVERHEAD_S = 60.0


class SweepFailed(SmalllmError):
    """Some cells failed; the others ran. Raised after the sweep so the command exits non-zero."""


# ---------------------------------------------------------------------------------------------- paths


def cell_dir(sweep_dir: Path, name: str) -> Path:
    return sweep_dir / "cells" / name


def run_dir_of(sweep_dir: Path, name: str) -> Path:
    return cell_dir(sweep_dir, name) / "run"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    # Write-then-rename: a sweep killed mid-write must not leave a half status file behind.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_status(sweep_dir: Path, name: str) -> dict:
    """The cell's status file (empty dict when it never started)."""
    return read_json(cell_dir(sweep_dir, name) / STATUS_FILE)


def cell_state(sweep_dir: Path, name: str) -> str:
    """done, failed, partial (a run to resume), or pending.

    ``summary.json`` decides "done" (a sweep killed right after a cell finished never updated its status
    file); the status file decides "failed"; a saved ``config.yaml`` means training started.
    """
    run = run_dir_of(sweep_dir, name)
    if read_json(run / "summary.json").get("status") == "completed":
        return "done"
    if read_status(sweep_dir, name).get("state") == "failed":
        return "failed"
    if (run / "config.yaml").is_file():
        return "partial"
    return "pending"


def last_error_line(log_path: Path, returncode: int | None = None) -> str:
    """The line of a cell's log that best says why it failed (the CLI's one-line error, else the
    exception line of a traceback, else the last line)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            text = fh.read().decode(errors="replace")
    except OSError:
        text = ""
    # Only the last attempt counts; progress bars use carriage returns.
    text = text.rsplit("\n=== attempt", 1)[-1]
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    for line in reversed(lines):
        if line.startswith("smalllm: error:"):
            return line[len("smalllm: error:") :].strip()
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", line):
            return line
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return lines[-1] if lines else f"exit status {returncode}"


# ---------------------------------------------------------------------------------------------- locking


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path, log=print, wait_s: float = 300.0):
    """Hold an exclusive lock on the sweep directory for the duration of the sweep.

    Cell processes inherit the locked file descriptor, so the lock outlives a killed sweep until its
    last orphaned cell has exited (they are told to stop when the sweep dies; see ``_die_with_parent``).
    A rerun therefore waits for those cells to write their checkpoints instead of racing them, while a
    second live sweep on the same directory is refused at once.
    """
    path = sweep_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            holder = _lock_holder(path)
            if holder is not None and _alive(holder):
                raise SmalllmError(f"sweep_dir: '{sweep_dir}' is used by a running sweep (pid {holder})")
            if time.monotonic() > deadline:
                raise SmalllmError(
                    f"sweep_dir: '{sweep_dir}' is still locked by cells of an earlier sweep after {wait_s:.0f} s"
                )
            if not announced:
                log("waiting for the cells of an earlier, interrupted sweep to save their checkpoints ...")
                announced = True
            time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield fd
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed but not reaped by its parent) is not a running sweep.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the sweep process dies.

    The trainer treats SIGTERM as "checkpoint and stop", so a sweep killed with SIGKILL leaves
    resumable cells instead of orphans that keep training unsupervised. No-op elsewhere.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


# ---------------------------------------------------------------------------------------------- estimates


@dataclass
class Estimate:
    """Size and cost of one cell, as ``--dry-run`` prints it."""

    params: int
    tokens: int
    flops: float
    seconds: float
    gpu_hours: float | None
    device: str


def estimate_cell(spec: SweepSpec, cfg: RunConfig, threads: int | None = None) -> Estimate:
    """Tokens, training FLOPs and estimated time of a cell on the sweep's target.

    Time is ``FLOPs / (peak x MFU)`` plus a start-up overhead; see :data:`CPU_MFU` and
    :data:`GPU_MFU` for the assumed utilisation. For a GPU target (``target.device: gpu``) the peak is
    that of ``target.gpu`` times ``target.gpus_per_cell``, and GPU hours are reported. ``threads``
    replaces the cell's CPU thread count (as ``--workers`` does).
    """
    from smalllm.train.plan import _GPU_PEAKS, default_peak_flops, make_plan

    plan = make_plan(cfg)
    flops = float(plan.flops_per_token) * plan.total_tokens
    t = spec.target
    gpu = t.device == "gpu" or (t.device == "current" and plan.device == "cuda")
    if t.device == "gpu":
        peak = t.peak_flops or _GPU_PEAKS.get(t.gpu.upper(), 100e12)
        devices = t.gpus_per_cell
        label = f"{devices}x{t.gpu}"
    elif gpu:
        peak, devices, label = plan.peak_flops, t.gpus_per_cell, "cuda"
    else:
        import torch

        threads = threads or cfg.train.num_threads or torch.get_num_threads()
        # plan.peak_flops counts this process's threads; the cell runs with its own thread count.
        peak = (
            t.peak_flops
            or cfg.train.peak_flops
            or default_peak_flops("cpu") / torch.get_num_threads() * threads
        )
        devices, label = 1, f"cpu x{threads}"
    mfu = t.mfu or (GPU_MFU if gpu else CPU_MFU)
    overhead = t.overhead_s if t.overhead_s is not None else (GPU_OVERHEAD_S if gpu else CPU_OVERHEAD_S)
    seconds = flops / (peak * devices * mfu) + overhead
    return Estimate(
        params=plan.params,
        tokens=plan.total_tokens,
        flops=flops,
        seconds=seconds,
        gpu_hours=seconds * devices / 3600 if gpu else None,
        device=label,
    )


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def dry_run_table(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig], workers: int = 1) -> str:
    """One line per cell (state, size, tokens, FLOPs, time) and the totals (wall time over ``workers``)."""
    rows, total_s, total_gpu_h, total_flops, total_tokens = [], 0.0, 0.0, 0.0, 0
    any_gpu = False
    threads = max(1, _cpus() // workers) if workers > 1 else None
    for cell in cells:
        est = estimate_cell(spec, configs[cell.name], threads)
        state = cell_state(spec.sweep_dir, cell.name) if spec.sweep_dir.is_dir() else "pending"
        gpu_h = "-" if est.gpu_hours is None else f"{est.gpu_hours:,.1f}"
        any_gpu |= est.gpu_hours is not None
        rows.append(
            [
                cell.name,
                state,
                _count(est.params),
                _count(est.tokens),
                f"{est.flops:.2e}",
                format_duration(est.seconds),
                gpu_h,
            ]
        )
        total_s += est.seconds
        total_gpu_h += est.gpu_hours or 0.0
        total_flops += est.flops
        total_tokens += est.tokens
    header = ["cell", "state", "params", "tokens", "FLOPs", "est. time", "GPU h"]
    if not any_gpu:
        header, rows = header[:-1], [r[:-1] for r in rows]
    totals = [
        "total",
        f"{len(cells)} cells",
        "",
        _count(total_tokens),
        f"{total_flops:.2e}",
        format_duration(total_s),
    ]
    if any_gpu:
        totals.append(f"{total_gpu_h:,.0f}")
    table = [header, *rows, totals]
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    lines = []
    for k, r in enumerate(table):
        if k == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append(
            "  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip()
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    t = spec.target
    est0 = estimate_cell(spec, configs[cells[0].name], threads) if cells else None
    gpu = est0 is not None and est0.gpu_hours is not None
    mfu = t.mfu or (GPU_MFU if gpu else CPU_MFU)
    where = est0.device if est0 else "?"
    lines.append(
        f"estimates: time = FLOPs / (peak FLOP/s x MFU {mfu:g}) + start-up, on {where}"
        + (" (GPU hours = time x GPUs per cell)" if gpu else "")
        + (
            "; total = sum of cells"
            if workers == 1 or gpu
            else f"; {workers} workers: about {format_duration(total_s / workers)} wall"
        )
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- running


@dataclass
class _Running:
    cell: Cell
    proc: subprocess.Popen
    log: Any
    started: float
    attempt: int
    mode: str | None


class _Stop(Exception):
    """SIGTERM to the sweep: stop the cells (they checkpoint) and exit."""


def cell_command(spec: SweepSpec, cell: Cell, mode: str | None, extra: list[str]) -> list[str]:
    """The ``smalllm train`` command of a cell: base config, overrides, run_dir, then --resume/--overwrite."""
    cmd = [sys.executable, "-m", "smalllm.cli", "train"]
    if spec.base is not None:
        cmd.append(str(spec.base))
    cmd += [*cell.overrides, *extra, f"run_dir={run_dir_of(spec.sweep_dir, cell.name).resolve()}"]
    if mode:
        cmd.append(f"--{mode}")
    return cmd


def _launch_mode(sweep_dir: Path, name: str) -> str | None:
    """resume when a saved run exists, overwrite when the run dir holds only debris, else nothing."""
    run = run_dir_of(sweep_dir, name)
    if (run / "config.yaml").is_file():
        return "resume"
    if run.is_dir() and any(run.iterdir()):
        return "overwrite"  # crashed before saving its config: nothing worth keeping
    return None


def _start(spec: SweepSpec, cell: Cell, extra: list[str], lock_fd: int) -> _Running:
    cdir = cell_dir(spec.sweep_dir, cell.name)
    cdir.mkdir(parents=True, exist_ok=True)
    mode = _launch_mode(spec.sweep_dir, cell.name)
    cmd = cell_command(spec, cell, mode, extra)
    status = read_status(spec.sweep_dir, cell.name)
    attempt = int(status.get("attempts", 0)) + 1
    log = open(cdir / LOG_FILE, "a")  # noqa: SIM115 - closed in _finish, after the process exits
    log.write(
        f"=== attempt {attempt} {time.strftime('%Y-%m-%d %H:%M:%S')} ({mode or 'start'}): {shlex.join(cmd)}\n"
    )
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        pass_fds=(lock_fd,),
        # Safe here: the sweep is single-threaded (cells are polled, not waited on by threads).
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    now = time.time()
    _write_json(
        cdir / STATUS_FILE,
        {
            "state": "running",
            "attempts": attempt,
            "pid": proc.pid,
            "started": now,
            "mode": mode or "start",
            "overrides": cell.overrides,
        },
    )
    return _Running(cell, proc, log, now, attempt, mode)


def _finish(spec: SweepSpec, r: _Running, returncode: int) -> dict:
    r.log.close()
    run = run_dir_of(spec.sweep_dir, r.cell.name)
    summary = read_json(run / "summary.json")
    status = summary.get("status")
    elapsed = time.time() - r.started
    record: dict[str, Any] = {
        "attempts": r.attempt,
        "returncode": returncode,
        "started": r.started,
        "finished": time.time(),
        "seconds": elapsed,
        "overrides": r.cell.overrides,
    }
    if status == "completed":
        record["state"] = "done"
    elif returncode == 0 and status == "interrupted":
        record["state"] = "interrupted"
    else:
        record["state"] = "failed"
        record["error"] = last_error_line(cell_dir(spec.sweep_dir, r.cell.name) / LOG_FILE, returncode)
    _write_json(cell_dir(spec.sweep_dir, r.cell.name) / STATUS_FILE, record)
    return record


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _write_sweep_file(spec: SweepSpec, cells: list[Cell]) -> None:
    data = {
        "name": spec.name,
        "description": spec.description,
        "source": str(spec.source) if spec.source else None,
        "base": str(spec.base) if spec.base else None,
        "size_key": spec.size_key,
        "tasks": spec.tasks,
        "grid_keys": list(dict.fromkeys(k for c in cells for k in c.params)),
        "cells": [c.to_json() for c in cells],
    }
    _write_json(spec.sweep_dir / SWEEP_FILE, data)


def prebuild_corpora(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig], log=print) -> None:
    """Build each background corpus the cells need, once, before cells run in parallel.

    A cell builds its corpus on first use; two cells starting together on a cold cache would both
    build it and the later one replaces the directory under the earlier one's feet. Building first,
    one ``smalllm data build`` per distinct corpus, removes the race.
    """
    from smalllm.data.shards import INDEX, corpus_dir

    seen: dict[Path, Cell] = {}
    for cell in cells:
        path = corpus_dir(configs[cell.name].data)
        if path not in seen and not (path / INDEX).is_file():
            seen[path] = cell
    for path, cell in seen.items():
        log(f"building the background corpus {path.name} once for all cells ...")
        cmd = [sys.executable, "-m", "smalllm.cli", "data", "build"]
        cmd += ([str(spec.base)] if spec.base is not None else []) + cell.overrides
        log_path = spec.sweep_dir / f"{path.name}.build.log"
        with open(log_path, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            raise SmalllmError(
                f"building the background corpus failed: {last_error_line(log_path, rc)} (log: {log_path})"
            )


def execute(
    spec: SweepSpec,
    cells: list[Cell],
    workers: int = 1,
    retry_failed: bool = False,
    log=print,
    configs: dict[str, RunConfig] | None = None,
) -> dict[str, dict]:
    """Run the unfinished cells, ``workers`` at a time; return each cell's final status record."""
    sweep_dir = spec.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers)
    # Parallel cells share the CPU: give each its slice instead of letting N processes each use all cores.
    extra = [f"train.num_threads={max(1, _cpus() // workers)}"] if workers > 1 else []
    results: dict[str, dict] = {}
    todo: deque[Cell] = deque()
    for cell in cells:
        state = cell_state(sweep_dir, cell.name)
        status = read_status(sweep_dir, cell.name)
        if state == "done":
            if status.get("overrides") not in (None, cell.overrides):
                log(
                    f"note: {cell.name} finished with other overrides than the sweep file has now; "
                    f"delete {cell_dir(sweep_dir, cell.name)} to rerun it"
                )
            results[cell.name] = {**status, "state": "done"}
        elif state == "failed" and not retry_failed:
            results[cell.name] = status
        else:
            todo.append(cell)
    skipped_done = sum(r.get("state") == "done" for r in results.values())
    skipped_failed = len(results) - skipped_done
    log(
        f"sweep {spec.name}: {len(cells)} cells in {sweep_dir}; {skipped_done} done, "
        f"{skipped_failed} failed before (skipped{'' if skipped_failed == 0 else ', use --retry-failed'}), "
        f"{len(todo)} to run" + (f" with {workers} workers" if workers > 1 else "")
    )
    # The report reads the cell list from here; rewrite it so it follows the sweep file's current grid.
    _write_sweep_file(spec, cells)
    if not todo:
        return results

    with sweep_lock(sweep_dir, log=log) as lock_fd:
        # Cells of a killed sweep may have finished while we waited for the lock.
        for cell in [c for c in todo if cell_state(sweep_dir, c.name) == "done"]:
            todo.remove(cell)
            results[cell.name] = {**read_status(sweep_dir, cell.name), "state": "done"}
        if workers > 1 and configs is not None:
            prebuild_corpora(spec, list(todo), configs, log=log)
        running: list[_Running] = []
        total, finished = len(todo), 0
        previous = signal.getsignal(signal.SIGTERM)

        def _on_term(signum, frame):
            raise _Stop()

        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGTERM, _on_term)
        try:
            while todo or running:
                while todo and len(running) < workers:
                    cell = todo.popleft()
                    r = _start(spec, cell, extra, lock_fd)
                    mode = "resuming" if r.mode == "resume" else "starting"
                    log(f"[{finished + len(running) + 1}/{total}] {mode} {cell.name}")
                    running.append(r)
                time.sleep(0.2)
                for r in list(running):
                    rc = r.proc.poll()
                    if rc is None:
                        continue
                    running.remove(r)
                    finished += 1
                    rec = _finish(spec, r, rc)
                    results[r.cell.name] = rec
                    what = rec["state"] + (f": {rec['error']}" if rec.get("error") else "")
                    log(f"[{finished}/{total}] {r.cell.name} {what} ({format_duration(rec['seconds'])})")
        except (KeyboardInterrupt, _Stop):
            _stop_all(spec, running, log)
            raise KeyboardInterrupt from None
        finally:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)
    return results


def _stop_all(spec: SweepSpec, running: list[_Running], log) -> None:
    """Ask running cells to checkpoint and stop (SIGTERM), wait for them, record them as interrupted."""
    for r in running:
        with contextlib.suppress(ProcessLookupError):
            r.proc.send_signal(signal.SIGTERM)
    if running:
        log(f"stopping {len(running)} running cell(s); they save a checkpoint and resume on the next run")
    for r in running:
        try:
            rc = r.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            rc = r.proc.wait()
        rec = _finish(spec, r, rc)
        if rec["state"] == "failed" and rc in (-signal.SIGTERM, -signal.SIGINT, 130):
            rec = {**rec, "state": "interrupted"}
            rec.pop("error", None)
            _write_json(cell_dir(spec.sweep_dir, r.cell.name) / STATUS_FILE, rec)


def run_sweep(
    config: str | Path,
    dry_run: bool = False,
    workers: int = 1,
    emit: str | None = None,
    retry_failed: bool = False,
    sweep_dir: str | Path | None = None,
    log=print,
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
    if emit:
        from smalllm.sweep.emit import emit_script

        path = emit_script(spec, cells, emit, configs)
        log(str(path))
        return None
    if dry_run:
        log(f"sweep {spec.name}: {len(cells)} cells -> {spec.sweep_dir}")
        log(dry_run_table(spec, cells, configs, workers))
        return None
    t0 = time.perf_counter()
    results = execute(spec, cells, workers=workers, retry_failed=retry_failed, log=log, configs=configs)
    wall = time.perf_counter() - t0
    counts = {
        s: sum(r.get("state") == s for r in results.values()) for s in ("done", "failed", "interrupted")
    }
    log(
        f"sweep {spec.name}: {counts['done']}/{len(cells)} cells done, {counts['failed']} failed "
        f"({format_duration(wall)} this run)"
    )
    if report and counts["done"]:
        from smalllm.sweep.report import write_sweep_report

        write_sweep_report(spec.sweep_dir, log=log)
    failed = [name for name, r in results.items() if r.get("state") == "failed"]
    if failed:
        first = results[failed[0]]
        raise SweepFailed(
            f"{len(failed)} of {len(cells)} cells failed (first: {failed[0]}: {first.get('error', '?')}); "
            f"logs in {spec.sweep_dir / 'cells'}/<cell>/{LOG_FILE}; rerun with --retry-failed"
        )
    return results


def _mark_main(argv: list[str]) -> int:
    """``python -m smalllm.sweep.runner mark SWEEP_DIR CELL start|RC``: status files for emitted scripts.

    Launch scripts call it before a cell (``start``) and after it with the exit status, so a sweep run
    through Slurm leaves the same status files as one run by ``smalllm sweep``.
    """
    if len(argv) != 4 or argv[0] != "mark":
        print("usage: python -m smalllm.sweep.runner mark SWEEP_DIR CELL start|RETURNCODE", file=sys.stderr)
        return 2
    sweep_dir, name, what = Path(argv[1]), argv[2], argv[3]
    cdir = cell_dir(sweep_dir, name)
    cdir.mkdir(parents=True, exist_ok=True)
    status = read_status(sweep_dir, name)
    if what == "start":
        attempts = int(status.get("attempts", 0)) + 1
        _write_json(cdir / STATUS_FILE, {"state": "running", "attempts": attempts, "started": time.time()})
        return 0
    rc = int(what)
    summary = read_json(run_dir_of(sweep_dir, name) / "summary.json")
    rec: dict[str, Any] = {**status, "returncode": rc, "finished": time.time()}
    rec.pop("error", None)
    if summary.get("status") == "completed":
        rec["state"] = "done"
    elif rc == 0 and summary.get("status") == "interrupted":
        rec["state"] = "interrupted"
    else:
        rec.update(state="failed", error=last_error_line(cdir / LOG_FILE, rc))
    _write_json(cdir / STATUS_FILE, rec)
    return 0


if __name__ == "__main__":
    sys.exit(_mark_main(sys.argv[1:]))
