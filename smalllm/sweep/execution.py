"""Running a sweep's cells on this machine: one ``smalllm train`` subprocess per cell, ``workers`` at a time.

Cells are independent subprocesses (``python -m smalllm.cli train BASE OVERRIDES run_dir=...``): one
that crashes cannot take the others down, and its log says why. Which cells run, and how each one
starts (fresh, ``--resume`` from its checkpoint, ``--overwrite`` of what a crash left), is decided by
:mod:`smalllm.sweep.records`; this module starts, watches and stops the processes, and holds the
sweep directory's lock while they run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from smalllm.config import RunConfig
from smalllm.errors import SmalllmError
from smalllm.run_record import pid_alive
from smalllm.sweep import records
from smalllm.sweep.estimates import cell_threads, estimate_cell, format_duration
from smalllm.sweep.grid import Cell, SweepSpec, sweep_manifest

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- locking


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path, log: Log = print, wait_s: float = 300.0) -> Iterator[int]:
    """Hold an exclusive lock on the sweep directory for the duration of the sweep.

    Cell processes inherit the locked file descriptor, so the lock outlives a killed sweep until its
    last orphaned cell has exited (they are told to stop when the sweep dies; see ``_die_with_parent``).
    A rerun therefore waits for those cells to write their checkpoints instead of racing them, while a
    second live sweep on the same directory is refused at once.
    """
    path = records.lock_path(sweep_dir)
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
    return pid != os.getpid() and pid_alive(pid)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the sweep process dies.

    The trainer treats SIGTERM as "checkpoint and stop", so a sweep killed with SIGKILL leaves
    resumable cells instead of orphans that keep training unsupervised. No-op elsewhere.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


# ---------------------------------------------------------------------------------------------- one cell


@dataclass
class _Running:
    cell: Cell
    proc: subprocess.Popen
    log: IO[str]
    mode: records.LaunchMode | None


class _Stop(Exception):
    """SIGTERM to the sweep: stop the cells (they checkpoint) and exit."""


def cell_command(spec: SweepSpec, cell: Cell, mode: records.LaunchMode | None, extra: list[str]) -> list[str]:
    """The ``smalllm train`` command of a cell: base config, overrides, run_dir, then --resume/--overwrite."""
    cmd = [sys.executable, "-m", "smalllm.cli", "train"]
    if spec.base is not None:
        cmd.append(str(spec.base))
    cmd += [*cell.overrides, *extra, f"run_dir={records.run_dir_of(spec.sweep_dir, cell.name).resolve()}"]
    if mode:
        cmd.append(f"--{mode}")
    return cmd


def _start(spec: SweepSpec, cell: Cell, extra: list[str], lock_fd: int) -> _Running:
    mode = records.launch_mode(spec.sweep_dir, cell.name)
    cmd = cell_command(spec, cell, mode, extra)
    attempt = records.begin_attempt(spec.sweep_dir, cell.name, mode, shlex.join(cmd))
    log = open(records.cell_log(spec.sweep_dir, cell.name), "a")  # noqa: SIM115 - closed in _finish
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        pass_fds=(lock_fd,),
        # Safe here: the sweep is single-threaded (cells are polled, not waited on by threads).
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    records.mark_running(spec.sweep_dir, cell.name, attempt, mode, pid=proc.pid, overrides=cell.overrides)
    return _Running(cell, proc, log, mode)


def _finish(spec: SweepSpec, r: _Running, returncode: int, stopped: bool = False) -> dict:
    r.log.close()
    return records.finish_attempt(spec.sweep_dir, r.cell.name, returncode, stopped=stopped)


def _stop_all(spec: SweepSpec, running: list[_Running], log: Log) -> None:
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
        _finish(spec, r, rc, stopped=True)


def prebuild_corpora(
    spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig], log: Log = print
) -> None:
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
        log_path = records.corpus_build_log(spec.sweep_dir, path.name)
        with open(log_path, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            raise SmalllmError(
                f"building the background corpus failed: {records.last_error_line(log_path, rc)} (log: {log_path})"
            )


# ---------------------------------------------------------------------------------------------- the sweep


def _plan(
    spec: SweepSpec, cells: list[Cell], retry_failed: bool, log: Log
) -> tuple[deque[Cell], dict[str, dict]]:
    """The cells to run, and the records of those to skip (done, or failed without ``retry_failed``)."""
    sweep_dir = spec.sweep_dir
    skipped: dict[str, dict] = {}
    todo: deque[Cell] = deque()
    for cell in cells:
        state = records.cell_state(sweep_dir, cell.name)
        status = records.read_status(sweep_dir, cell.name)
        if state == "done":
            if status.get("overrides") not in (None, cell.overrides):
                log(
                    f"note: {cell.name} finished with other overrides than the sweep file has now; "
                    f"delete {records.cell_dir(sweep_dir, cell.name)} to rerun it"
                )
            skipped[cell.name] = {**status, "state": "done"}
        elif state == "failed" and not retry_failed:
            skipped[cell.name] = {
                **status,
                "state": "failed",
                "error": records.failure_reason(sweep_dir, cell.name),
            }
        else:
            todo.append(cell)
    return todo, skipped


def execute(
    spec: SweepSpec,
    cells: list[Cell],
    workers: int = 1,
    retry_failed: bool = False,
    log: Log = print,
    configs: dict[str, RunConfig] | None = None,
) -> dict[str, dict]:
    """Run the unfinished cells, ``workers`` at a time; return each cell's final status record."""
    sweep_dir = spec.sweep_dir
    records.prepare_sweep_dir(sweep_dir)
    workers = max(1, workers)
    threads = cell_threads(workers)
    # Parallel cells share the CPU: give each its slice instead of letting N processes each use all cores.
    extra = [f"train.num_threads={threads}"] if threads is not None else []
    todo, results = _plan(spec, cells, retry_failed, log)
    skipped_done = sum(r.get("state") == "done" for r in results.values())
    skipped_failed = len(results) - skipped_done
    log(
        f"sweep {spec.name}: {len(cells)} cells in {sweep_dir}; {skipped_done} done, "
        f"{skipped_failed} failed before (skipped{'' if skipped_failed == 0 else ', use --retry-failed'}), "
        f"{len(todo)} to run" + (f" with {workers} workers" if workers > 1 else "")
    )
    with sweep_lock(sweep_dir, log=log) as lock_fd:
        # The report reads the cell list from here; rewrite it so it follows the sweep file's current
        # grid, under the lock, so a refused second sweep cannot replace a running sweep's cells.
        records.write_sweep_file(sweep_dir, sweep_manifest(spec, cells))
        if not todo:
            return results
        # Cells of a killed sweep may have finished while we waited for the lock.
        for cell in [c for c in todo if records.cell_state(sweep_dir, c.name) == "done"]:
            todo.remove(cell)
            results[cell.name] = {**records.read_status(sweep_dir, cell.name), "state": "done"}
        if workers > 1 and configs is not None:
            # Longest cells first, so the sweep does not end on one long cell running alone (the
            # dry run's wall time assumes this order).
            todo = deque(sorted(todo, key=lambda c: -_estimated_seconds(spec, configs[c.name], threads)))
            prebuild_corpora(spec, list(todo), configs, log=log)
        _run_cells(spec, todo, workers, extra, lock_fd, results, log)
    return results


def _estimated_seconds(spec: SweepSpec, cfg: RunConfig, threads: int | None) -> float:
    """A cell's estimated time, for ordering only: a cell whose estimate fails still runs (last), and
    its own run reports what is wrong with it."""
    try:
        return estimate_cell(spec, cfg, threads).seconds
    except Exception:
        return 0.0


def _run_cells(
    spec: SweepSpec,
    todo: deque[Cell],
    workers: int,
    extra: list[str],
    lock_fd: int,
    results: dict[str, dict],
    log: Log,
) -> None:
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
                log(f"[{finished}/{total}] {r.cell.name} {what} ({format_duration(rec.get('seconds', 0.0))})")
    except (KeyboardInterrupt, _Stop):
        _stop_all(spec, running, log)
        raise KeyboardInterrupt from None
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)
