"""The sweep directory: its layout, its marker, each cell's record, and the one rule for a cell's state.

Layout of a sweep directory (every name in it is spelled here, and only here)::

    .smalllm                   marker (kind ``sweep``), written when smalllm creates the directory
    sweep.json                 the expanded sweep: name, base, every cell's name, grid values, overrides
    .sweep.lock                held by a running sweep (see :mod:`smalllm.sweep.execution`)
    cells/<cell>/status.json   the sweep's own record of the cell: attempts, return code, error line
    cells/<cell>/train.log     stdout+stderr of every attempt, each after a '=== attempt' header
    cells/<cell>/run/          the cell's run directory, read only through :class:`RunDir`
    <corpus>.build.log         output of building a background corpus before parallel cells start
    launch/                    scripts written by ``--emit``
    results.csv, report/       written by :mod:`smalllm.sweep.aggregate` and :mod:`smalllm.sweep.report`

The run directory is the source of truth for a cell (:func:`cell_state`). The cell record beside it
only adds what the run cannot say about itself: a cell that failed before its run recorded anything
(a bad argument, a refused lock, a crash while importing). It lives next to the run directory rather
than in it because the run directory belongs to the trainer, which replaces it on ``--overwrite``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Literal

from smalllm.errors import ConfigError, SmalllmError
from smalllm.run_record import RunDir, atomic_write_json, marker_kind, read_json, refuse_foreign, write_marker

SWEEP_FILE = "sweep.json"
CELLS_DIR = "cells"
CELL_RECORD_FILE = "status.json"
CELL_LOG_FILE = "train.log"
CELL_RUN_DIR = "run"
LOCK_FILE = ".sweep.lock"
LAUNCH_DIR = "launch"
LAUNCH_LOGS_DIR = "logs"

CellState = Literal["done", "failed", "partial", "pending"]
LaunchMode = Literal["resume", "overwrite"]

# Sweep, grid and cell names become directory names and words in emitted shell scripts: letters,
# digits and _.+- only, and a letter or digit first so that no name is '.', '..' or an option.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
SAFE_NAME_RULE = "use letters, digits and _.+- only, starting with a letter or digit"

_ERROR_PREFIX = "smalllm: error:"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None


def check_name(name: object, field: str) -> str:
    """Return ``name`` if it is safe as a directory name and a shell word, else raise naming ``field``."""
    if not is_safe_name(name):
        raise ConfigError(f"{field}: {SAFE_NAME_RULE}, got {name!r}")
    return str(name)


# ---------------------------------------------------------------------------------------------- the directory


def check_sweep_dir(sweep_dir: Path) -> None:
    """Raise unless ``sweep_dir`` is absent, empty, or a sweep directory smalllm made.

    A sweep directory written before sweeps carried a marker is recognised by its ``sweep.json``, so
    such a sweep can still be finished.
    """
    # A sweep only ever writes into its directory, so a link to scratch storage is followed and the
    # directory it points to is judged (run directories, which smalllm may replace, refuse links).
    target = sweep_dir.resolve() if sweep_dir.is_symlink() and sweep_dir.is_dir() else sweep_dir
    if _legacy_sweep_dir(target):
        return
    refuse_foreign(target, "sweep", "sweep_dir")


def prepare_sweep_dir(sweep_dir: Path) -> None:
    """Create ``sweep_dir`` (or reopen one smalllm made) and mark it as a sweep before writing into it."""
    check_sweep_dir(sweep_dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if marker_kind(sweep_dir) is None:
            write_marker(sweep_dir, "sweep")
    except OSError as exc:
        raise SmalllmError(f"sweep_dir: cannot write to '{sweep_dir}' ({exc.strerror})") from None


def _legacy_sweep_dir(path: Path) -> bool:
    return marker_kind(path) is None and isinstance(read_json(path / SWEEP_FILE).get("cells"), list)


def is_sweep_dir(path: Path) -> bool:
    """True for a directory holding a sweep (``smalllm report`` tells sweeps from runs with it)."""
    return marker_kind(path) == "sweep" or (path / SWEEP_FILE).is_file() or (path / CELLS_DIR).is_dir()


def read_sweep_file(sweep_dir: Path) -> dict | None:
    """The sweep's ``sweep.json`` (None when there is none); a corrupt one is an error naming it."""
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not data:
        raise SmalllmError(f"{path}: not a JSON object")
    return data


def write_sweep_file(sweep_dir: Path, data: dict) -> None:
    atomic_write_json(sweep_dir / SWEEP_FILE, data)


def cell_names_on_disk(sweep_dir: Path) -> list[str]:
    """Names of the cell directories present, for a sweep directory that lost its ``sweep.json``."""
    root = sweep_dir / CELLS_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_safe_name(p.name))


def lock_path(sweep_dir: Path) -> Path:
    return sweep_dir / LOCK_FILE


def launch_dir(sweep_dir: Path) -> Path:
    return sweep_dir / LAUNCH_DIR


def launch_logs_dir(sweep_dir: Path) -> Path:
    return launch_dir(sweep_dir) / LAUNCH_LOGS_DIR


def corpus_build_log(sweep_dir: Path, corpus: str) -> Path:
    return sweep_dir / f"{corpus}.build.log"


# ---------------------------------------------------------------------------------------------- one cell


def cells_root(sweep_dir: Path) -> Path:
    """The directory holding one sub-directory per cell."""
    return Path(sweep_dir) / CELLS_DIR


def cell_dir(sweep_dir: Path, name: str) -> Path:
    # Names also arrive from the command line of emitted scripts: never let one leave cells/.
    if not is_safe_name(name):
        raise SmalllmError(f"cell: {SAFE_NAME_RULE}, got {name!r}")
    return Path(sweep_dir) / CELLS_DIR / name


def run_dir_of(sweep_dir: Path, name: str) -> Path:
    return cell_dir(sweep_dir, name) / CELL_RUN_DIR


def cell_run(sweep_dir: Path, name: str) -> RunDir:
    return RunDir(run_dir_of(sweep_dir, name))


def cell_log(sweep_dir: Path, name: str) -> Path:
    return cell_dir(sweep_dir, name) / CELL_LOG_FILE


def read_status(sweep_dir: Path, name: str) -> dict:
    """The sweep's record of the cell (empty dict when it never started)."""
    return read_json(cell_dir(sweep_dir, name) / CELL_RECORD_FILE)


def _write_status(sweep_dir: Path, name: str, record: dict) -> None:
    path = cell_dir(sweep_dir, name)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / CELL_RECORD_FILE, record)


def cell_state(sweep_dir: Path, name: str) -> CellState:
    """The one rule for a cell: done, failed, partial (a run to continue), or pending.

    * done: its run completed (:meth:`RunDir.is_done`), whatever the cell record says: a sweep
      killed right after a cell finished never updated that record;
    * failed: its run recorded ``failed`` or ``diverged``, or the cell failed before its run
      recorded any status (then only the cell record knows);
    * partial: its run has a saved config and is not done (killed, interrupted);
    * pending: nothing started.
    """
    run = cell_run(sweep_dir, name)
    if run.is_done():
        return "done"
    status = run.recorded_status()
    if status in ("failed", "diverged"):
        return "failed"
    if status is None and read_status(sweep_dir, name).get("state") == "failed":
        return "failed"
    if run.has_config():
        return "partial"
    return "pending"


def failure_reason(sweep_dir: Path, name: str) -> str:
    """The one-line error of a failed cell: the sweep's record of it, else what its run recorded."""
    return (
        read_status(sweep_dir, name).get("error")
        or cell_run(sweep_dir, name).read_summary().get("error")
        or ""
    )


def launch_mode(sweep_dir: Path, name: str) -> LaunchMode | None:
    """How to start the cell's training: continue its checkpoint, replace what a crash left, or start."""
    return cell_run(sweep_dir, name).restart_mode()


def begin_attempt(sweep_dir: Path, name: str, mode: LaunchMode | None, how: str) -> int:
    """Create the cell directory and head its log with a new attempt; return the attempt number."""
    cell_dir(sweep_dir, name).mkdir(parents=True, exist_ok=True)
    attempt = int(read_status(sweep_dir, name).get("attempts", 0)) + 1
    with open(cell_log(sweep_dir, name), "a") as fh:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"=== attempt {attempt} {stamp} ({mode or 'start'}): {how}\n")
    return attempt


def mark_running(sweep_dir: Path, name: str, attempt: int, mode: LaunchMode | None, **extra: Any) -> None:
    _write_status(
        sweep_dir,
        name,
        {"state": "running", "attempts": attempt, "started": time.time(), "mode": mode or "start", **extra},
    )


def finish_attempt(sweep_dir: Path, name: str, returncode: int, stopped: bool = False) -> dict:
    """Record how the cell's process ended and return the record (``state``: done, failed, interrupted).

    ``stopped`` says the sweep asked the cell to stop, so its end is an interruption even when the
    process died before its run could record one.
    """
    run = cell_run(sweep_dir, name)
    now = time.time()
    record: dict[str, Any] = {
        k: v for k, v in read_status(sweep_dir, name).items() if k not in ("pid", "error", "state")
    }
    record.update(returncode=returncode, finished=now)
    if "started" in record:
        record["seconds"] = now - float(record["started"])
    state = cell_state(sweep_dir, name)
    run_status = run.recorded_status()
    if state == "done":
        record["state"] = "done"
    elif state == "failed":
        record.update(
            state="failed", error=run.read_summary().get("error") or _log_error(sweep_dir, name, returncode)
        )
    elif returncode != 0 and run_status is None and not stopped:
        record.update(state="failed", error=_log_error(sweep_dir, name, returncode))
    else:
        record["state"] = "interrupted"
        if returncode != 0 and not stopped:
            record["error"] = _log_error(sweep_dir, name, returncode)
    _write_status(sweep_dir, name, record)
    return record


def _log_error(sweep_dir: Path, name: str, returncode: int | None) -> str:
    return last_error_line(cell_log(sweep_dir, name), returncode)


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
    # Only what the last attempt printed counts (not its header); progress bars use carriage returns.
    text = re.split(r"(?:^|\n)=== attempt[^\n]*", text)[-1]
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    for line in reversed(lines):
        if line.startswith(_ERROR_PREFIX):
            return line[len(_ERROR_PREFIX) :].strip()
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return lines[-1] if lines else f"exit status {returncode}"
