"""The run directory: its layout, ownership marker, status, lock and atomic writes.

This module is the one owner of every file name in a run directory; the trainer, evaluator,
checkpointing, sweeps and reports reach those files only through :class:`RunDir`::

    RUN/
      .smalllm              marker, written first: this directory was created by smalllm (kind, version)
      .lock  .lock.holder   the one-writer lock (flock) and who holds it (host, pid, start time)
      config.yaml           the resolved config the run trains with
      summary.json          the status record: running -> completed | interrupted | diverged | failed
      metrics.jsonl         one JSON record per log/eval step
      eval_sets.json        the held-out sets, so a checkpoint can be re-scored later
      emergence.json        per-task emergence summary, written at the end
      eval_results.jsonl    records appended by ``smalllm eval``
      probes.json           representation probes of the checkpoints, by ``smalllm probe``
      mixture.jsonl         one record per round of a mixture policy: its skill weights (and losses)
      tb/                   TensorBoard event files
      report/               plots and summary.md written by ``smalllm report`` (and ``smalllm probe``'s plots)
      checkpoints/step_00000100/   a ``save_pretrained`` directory, its model card (README.md)
                                   and tokenizer, plus the trainer state

**Deletion rule.** smalllm deletes only directories that carry its marker (of the expected kind) and
hold nothing but names it writes there (a file a user put into a run makes the run irreplaceable
until it is moved out). :func:`remove_owned` and :func:`refuse_foreign` are the only doors.

**Status.** ``summary.json`` always holds the latest status. A run killed with SIGKILL cannot write
its own end, so it stays ``running`` on disk; :meth:`RunDir.status` reports such a run as ``killed``
when nobody holds its lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from smalllm import __version__
from smalllm.errors import SmalllmError

T = TypeVar("T")

MARKER = ".smalllm"
"""Ownership marker written into every directory smalllm creates (run, sweep, corpus, tokenizer)."""

DirKind = Literal["run", "sweep", "corpus", "tokenizer", "skills_graph"]
Status = Literal["running", "completed", "interrupted", "diverged", "failed"]

# Names inside a run directory (relative to it). Nothing outside this module spells them.
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
EVAL_SETS_FILE = "eval_sets.json"
EMERGENCE_FILE = "emergence.json"
BASELINES_FILE = "baselines.json"
EVAL_RESULTS_FILE = "eval_results.jsonl"
PROBES_FILE = "probes.json"
MIXTURE_FILE = "mixture.jsonl"
TRACKER_DIR = "tb"
REPORT_DIR = "report"
REPORT_SUMMARY_FILE = "summary.md"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"
LOCK_HOLDER_FILE = ".lock.holder"

RUN_NAMES: frozenset[str] = frozenset(
    {
        MARKER,
        LOCK_FILE,
        LOCK_HOLDER_FILE,
        CONFIG_FILE,
        SUMMARY_FILE,
        METRICS_FILE,
        EVAL_SETS_FILE,
        EMERGENCE_FILE,
        BASELINES_FILE,
        EVAL_RESULTS_FILE,
        PROBES_FILE,
        MIXTURE_FILE,
        TRACKER_DIR,
        REPORT_DIR,
        CHECKPOINTS_DIR,
    }
)
"""Everything smalllm writes at the top of a run directory (plus the atomic writes' temporary files)."""

# Names the sweep report writes at the top of a sweep directory, beside its results table (the rest of
# a sweep directory's layout is spelled in smalllm.sweep.records). Nothing outside this module spells them.
FRONTIER_CSV_FILE = "frontier.csv"
FRONTIER_JSON_FILE = "frontier.json"


FITS_JSON_FILE = "fits.json"
FITS_MD_FILE = "fits.md"


# Names in the output directory of ``smalllm skills-graph`` (beside its marker). Nothing outside this
# module spells them.
SKILLS_GRAPH_JSON_FILE = "skills_graph.json"
SKILLS_GRAPH_PNG_FILE = "skills_graph.png"
SKILLS_GRAPH_RUNS_DIR = "runs"
SKILLS_GRAPH_NAMES: frozenset[str] = frozenset(
    {MARKER, SKILLS_GRAPH_JSON_FILE, SKILLS_GRAPH_PNG_FILE, SKILLS_GRAPH_RUNS_DIR}
)
"""Everything ``smalllm skills-graph`` writes at the top of its ``--out`` directory."""


def skills_graph_json_file(out_dir: str | Path) -> Path:
    """The estimated graph: skills, matrix, edges, method, steps, seed and the raw losses."""
    return Path(out_dir) / SKILLS_GRAPH_JSON_FILE


def skills_graph_png_file(out_dir: str | Path) -> Path:
    """The heatmap of the graph's matrix (rows: trained skill, columns: evaluated skill)."""
    return Path(out_dir) / SKILLS_GRAPH_PNG_FILE


def skills_graph_runs_dir(out_dir: str | Path) -> Path:
    """The run directories the graph was estimated from, one per trained skill set."""
    return Path(out_dir) / SKILLS_GRAPH_RUNS_DIR


def owns_skills_graph_name(name: str) -> bool:
    """True for a name ``smalllm skills-graph`` writes at the top of its directory (a temporary one
    of :func:`atomic_write` included)."""
    if name in SKILLS_GRAPH_NAMES:
        return True
    base, sep, pid = name[1:].rpartition(".tmp-")
    return name.startswith(".") and bool(sep) and pid.isdigit() and base in SKILLS_GRAPH_NAMES


def fits_json_file(out_dir: str | Path) -> Path:
    """Where ``smalllm fit`` writes its fits (the sweep directory unless ``--out``)."""
    return Path(out_dir) / FITS_JSON_FILE


def fits_md_file(out_dir: str | Path) -> Path:
    """The markdown table of the fits, beside ``fits.json``."""
    return Path(out_dir) / FITS_MD_FILE


def frontier_csv_file(sweep_dir: str | Path) -> Path:
    """The sweep's crossing-frequency table: one row per task (facet), basis and model size."""
    return Path(sweep_dir) / FRONTIER_CSV_FILE


def frontier_json_file(sweep_dir: str | Path) -> Path:
    """The sweep's frontier estimate in full: f* per size with CIs, and the exchange rates."""
    return Path(sweep_dir) / FRONTIER_JSON_FILE


PROBE_PLOT_PREFIX = "probe_"


def probes_json_file(out_dir: str | Path) -> Path:
    """Where ``smalllm probe --out DIR`` writes its results (a run's own: :attr:`RunDir.probes_file`)."""
    return Path(out_dir) / PROBES_FILE


def probe_plot_file(plot_dir: str | Path, task: str, kind: str) -> Path:
    """One plot of ``smalllm probe``: ``probe_<task>_<kind>.png`` in a run's report directory or in
    ``--out`` (a task name's characters outside ``[A-Za-z0-9_.-]`` become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    return Path(plot_dir) / f"{PROBE_PLOT_PREFIX}{safe}_{kind}.png"


# Names inside one checkpoint directory.
CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "manifest.json"
CHECKPOINT_STATE = "trainer_state.pt"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_SHARDED_STATE = "sharded_state"
CHECKPOINT_STAGING_PREFIX = ".tmp-"
CHECKPOINT_CARD = "README.md"
"""The model card: what a hub page shows for the checkpoint (data, task frequencies, training)."""
CHECKPOINT_TOKENIZER_CONFIG = "tokenizer_config.json"
"""Written by ``save_pretrained``; rewritten so every supported transformers version loads it."""
CHECKPOINT_UPLOAD_EXCLUDED: frozenset[str] = frozenset(
    {CHECKPOINT_STATE, CHECKPOINT_MANIFEST, CHECKPOINT_SHARDED_STATE}
)
"""What ``smalllm push`` leaves out of a checkpoint: the optimizer and trainer state, the manifest."""

WALL_CLOCK_FIELDS: frozenset[str] = frozenset(
    {"time", "step_time", "tokens_per_s", "mfu", "eval_s", "samples_s"}
)
"""Fields of a metrics record that measure the machine, not the training: a resumed run's records
equal the uninterrupted run's except in these."""


def without_wall_clock(record: dict) -> dict:
    """``record`` minus :data:`WALL_CLOCK_FIELDS`: what must repeat exactly when a run is repeated."""
    return {k: v for k, v in record.items() if k not in WALL_CLOCK_FIELDS}


def error_line(exc: BaseException) -> str:
    """The one-line description of a failure recorded in ``summary.json``.

    A :class:`SmalllmError` already reads as one line naming the field or file; anything else gets its
    type, so ``OSError: [Errno 27] File too large: 'path'`` says what went wrong and where.
    """
    text = str(exc) if isinstance(exc, SmalllmError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text += f" ({exc.filename})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------- writes


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary sibling of ``path``, then rename it into place.

    A crash or a full disk mid-write leaves the previous version intact, never a torn file. The error
    of a failed write names the file (``OSError.filename``), so the CLI can report it in one line.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.filename is None or Path(exc.filename) == tmp:
            exc.filename = str(path)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # numpy scalars and Paths appear in summaries; anything else is a bug worth seeing.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line to ``path``; a failed write names the file (plain writes do not)."""
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def check_appendable_jsonl(path: Path, field: str) -> None:
    """Raise unless ``path`` is absent or a JSONL file whose every line is a JSON object.

    Called before a command appends results to a file the user named, so that neither a directory
    nor somebody's other file is written into.
    """
    if not path.exists() and not path.is_symlink():
        if not path.parent.is_dir():
            raise SmalllmError(f"{field}: '{path}': directory '{path.parent}' does not exist")
        return
    if path.is_dir():
        raise SmalllmError(f"{field}: '{path}' is a directory; give a .jsonl file to append to")
    if not path.is_file():
        raise SmalllmError(f"{field}: '{path}' is not a regular file; give a .jsonl file to append to")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SmalllmError(f"{field}: cannot read '{path}' ({reason})") from None
    for number, line in enumerate(text.splitlines(), 1):
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            raise SmalllmError(
                f"{field}: '{path}' is not a JSONL file of records (line {number}); refusing to append to it"
            )
    if text and not text.endswith("\n"):
        raise SmalllmError(f"{field}: '{path}' ends in a partial line; refusing to append to it")


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------- ownership


def write_marker(path: Path, kind: DirKind) -> None:
    """Mark ``path`` (an existing directory) as created by smalllm, before anything else goes in."""
    atomic_write_json(path / MARKER, {"kind": kind, "smalllm_version": __version__, "created": time.time()})


def marker_kind(path: Path) -> str | None:
    """The kind recorded in ``path``'s marker, or None when ``path`` carries no smalllm marker."""
    if not (path / MARKER).is_file():
        return None
    return read_json(path / MARKER).get("kind") or None


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def owns_run_name(name: str) -> bool:
    """True for a name smalllm writes at the top of a run directory (a temporary one included)."""
    if name in RUN_NAMES:
        return True
    # atomic_write's temporary files: ".<name>.tmp-<pid>"
    base, sep, pid = name[1:].rpartition(".tmp-")
    return name.startswith(".") and bool(sep) and pid.isdigit() and base in RUN_NAMES


_OWNS: dict[str, Callable[[str], bool]] = {"run": owns_run_name, "skills_graph": owns_skills_graph_name}


def _run_strays(path: Path) -> list[str]:
    """What in the run directory ``path`` smalllm did not write, as paths relative to it.

    The top level holds only :data:`RUN_NAMES`; below it, ``checkpoints/`` holds only checkpoint
    directories (and staging ones), each holding only its manifest's files (and a sharded state);
    ``report/`` only the plots and summary that ``smalllm report`` writes. ``tb/`` is TensorBoard's.
    """
    stray = [p.name for p in path.iterdir() if not owns_run_name(p.name)]
    checkpoints = path / CHECKPOINTS_DIR
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for entry in checkpoints.iterdir():
            rel = f"{CHECKPOINTS_DIR}/{entry.name}"
            if not entry.is_dir() or entry.is_symlink():
                stray.append(rel)
            elif is_checkpoint_name(entry.name):
                stray += [f"{rel}/{name}" for name in _checkpoint_strays(entry)]
            elif not entry.name.startswith(CHECKPOINT_STAGING_PREFIX):
                stray.append(rel)
    report = path / REPORT_DIR
    if report.is_dir() and not report.is_symlink():
        stray += [
            f"{REPORT_DIR}/{p.name}"
            for p in report.iterdir()
            if not (p.is_file() and (p.name == REPORT_SUMMARY_FILE or p.suffix == ".png"))
        ]
    return stray


def _checkpoint_strays(path: Path) -> list[str]:
    """Files in a published checkpoint that its manifest does not list (none when it has no
    readable manifest: a damaged checkpoint, smalllm's by its name)."""
    listed = read_json(path / CHECKPOINT_MANIFEST).get("files")
    if not isinstance(listed, dict):
        return []
    found = []
    for f in path.rglob("*"):
        rel = f.relative_to(path)
        if f.is_dir() and not f.is_symlink():
            continue
        if str(rel) in listed or str(rel) == CHECKPOINT_MANIFEST or rel.parts[0] == CHECKPOINT_SHARDED_STATE:
            continue
        found.append(str(rel))
    return sorted(found)


def refuse_foreign(path: Path, kind: DirKind, field: str, owns: Callable[[str], bool] | None = None) -> None:
    """Raise unless ``path`` is absent, an empty directory, or a directory smalllm made as ``kind``
    that holds only names smalllm writes there (``owns``; by default every name, or for a run
    :func:`owns_run_name`): a file a user put into a run is never deleted with it.

    A run is checked below its top level too (:func:`_run_strays`): a file put into one of its
    checkpoints or its report is not deleted with it either.

    Called before anything that would replace ``path``: the message names the option and the
    directory, and says why nothing was touched.
    """
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise SmalllmError(f"{field}: '{path}' exists and is not a directory; refusing to replace it")
    if is_empty_dir(path):
        return
    found = marker_kind(path)
    if found is None:
        raise SmalllmError(
            f"{field}: '{path}' is not empty and was not created by smalllm (no {MARKER} marker); "
            "refusing to touch it, choose another directory"
        )
    if found != kind:
        raise SmalllmError(
            f"{field}: '{path}' is a smalllm {found} directory, not a {kind}; refusing to replace it"
        )
    owns = owns or _OWNS.get(kind)
    if kind == "run" and owns is owns_run_name:
        stray = sorted(_run_strays(path))
    else:
        stray = sorted(p.name for p in path.iterdir() if owns is not None and not owns(p.name))
    if stray:
        shown = ", ".join(stray[:3]) + (", ..." if len(stray) > 3 else "")
        raise SmalllmError(
            f"{field}: '{path}' also holds files smalllm did not write ({shown}); "
            "refusing to replace it, move them out first"
        )


def remove_owned(path: Path, kind: DirKind, field: str, owns: Callable[[str], bool] | None = None) -> None:
    """Delete ``path`` only if smalllm created it as ``kind`` and everything in it is smalllm's
    (see :func:`refuse_foreign`)."""
    refuse_foreign(path, kind, field, owns)
    if path.is_dir():
        refuse_working_dir(path, field)
        shutil.rmtree(path)


def refuse_working_dir(path: Path, field: str) -> None:
    """Raise if ``path`` is or contains the current directory: moving or deleting it would leave this
    process (and every relative path it holds) inside what is being replaced."""
    if Path.cwd().resolve().is_relative_to(path.resolve()):
        raise SmalllmError(
            f"{field}: '{path}' is or contains the current directory; run from elsewhere to replace it"
        )


def checkpoint_strays(path: Path) -> list[str]:
    """Why the checkpoint directory ``path`` may not be deleted: files in it that smalllm did not
    write (empty when it is smalllm's to delete). A directory not named like a checkpoint or a
    checkpoint's staging directory is not smalllm's at all."""
    name = path.name
    staging = name.startswith(CHECKPOINT_STAGING_PREFIX)
    if not is_checkpoint_name(name[len(CHECKPOINT_STAGING_PREFIX) :] if staging else name):
        return [name]
    if path.is_symlink() or not path.is_dir():
        return [name]
    # A staging directory has no manifest yet: only the trainer writes into it, between stage and rename.
    return [] if staging else _checkpoint_strays(path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (a zombie, killed but not yet reaped by
    its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def set_aside(
    path: Path, kind: DirKind, field: str, owns: Callable[[str], bool] | None = None
) -> Path | None:
    """Rename an owned ``path`` to a hidden sibling so it can be restored if what replaces it fails.

    Returns the new location (None when there was nothing to move). The caller removes it with
    :func:`remove_owned` once the replacement has started, or renames it back.
    """
    refuse_foreign(path, kind, field, owns)
    if not path.exists():
        return None
    refuse_working_dir(path, field)
    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}-{int(time.time())}")
    os.rename(path, aside)
    return aside


# ---------------------------------------------------------------------------------------------- the lock


@dataclass
class LockHolder:
    host: str
    pid: int
    started: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, since {when}"


class RunLocked(SmalllmError):
    """Another process holds the run's lock."""


_CONTENDED = (errno.EAGAIN, errno.EACCES)  # what flock(LOCK_NB) reports for a lock held elsewhere


# ---------------------------------------------------------------------------------------------- run dir


class RunDir:
    """One run directory: paths, marker, status record, metrics file and the writer's lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # paths ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def mixture_file(self) -> Path:
        return self.path / MIXTURE_FILE

    @property
    def eval_sets_file(self) -> Path:
        return self.path / EVAL_SETS_FILE

    @property
    def emergence_file(self) -> Path:
        return self.path / EMERGENCE_FILE

    @property
    def baselines_file(self) -> Path:
        """Per-label baselines of the run's held-out sets (chance, best one-position rule)."""
        return self.path / BASELINES_FILE

    @property
    def eval_results_file(self) -> Path:
        return self.path / EVAL_RESULTS_FILE

    @property
    def probes_file(self) -> Path:
        """Results of ``smalllm probe`` (its plots go to :attr:`report_dir`)."""
        return self.path / PROBES_FILE

    @property
    def tracker_dir(self) -> Path:
        return self.path / TRACKER_DIR

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    # identity ---------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """True when the directory carries smalllm's run marker."""
        return marker_kind(self.path) == "run"

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def has_metrics(self) -> bool:
        return self.metrics_file.is_file()

    def has_checkpoint(self) -> bool:
        """True when a checkpoint was published (renamed into place); whether it is intact is the
        loader's question, so a damaged one is reported by name rather than ignored."""
        root = self.checkpoints_dir
        return root.is_dir() and any(is_checkpoint_name(p.name) and p.is_dir() for p in root.iterdir())

    def restart_mode(self) -> Literal["resume", "overwrite"] | None:
        """How a command that must finish this run restarts it: ``resume`` from its checkpoint,
        ``overwrite`` when it has none yet (killed before its first), None when there is nothing here."""
        if self.has_checkpoint():
            return "resume"
        if self.path.is_dir() and not is_empty_dir(self.path):
            return "overwrite"
        return None

    def check_start(self, resume: bool = False, overwrite: bool = False) -> None:
        """Refuse to train in this directory unless the flags allow it; reads only.

        ``smalllm train --dry-run`` calls it too, so it refuses exactly what the run refuses.
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise SmalllmError(f"run_dir: '{path}' exists and is not a directory")
        # The nearest existing ancestor must be a directory, else creating the run fails (ENOTDIR).
        existing = next((p for p in path.parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise SmalllmError(f"run_dir: cannot write to '{path}' ({os.strerror(errno.ENOTDIR)})")
        holder = self.lock_holder() if self._lock_fd is None else None
        if holder is not None:
            raise RunLocked(self._locked_message(holder))
        if resume:
            if not self.has_config():
                raise SmalllmError(f"run_dir: '{path}' has no run to resume ({CONFIG_FILE} missing)")
            if not self.has_checkpoint():
                raise SmalllmError(
                    f"run_dir: '{path}' has no checkpoint to resume from; start over with --overwrite"
                )
            return
        if not path.exists() or is_empty_dir(path):
            return
        if overwrite:
            refuse_foreign(path, "run", "run_dir")
            refuse_working_dir(path, "run_dir")
            return
        if self.is_run():
            raise SmalllmError(
                f"run_dir: '{path}' already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        refuse_foreign(path, "run", "run_dir")

    def create(self) -> None:
        """Make the directory a run: create it (absent or empty) and write the marker before anything else.

        A run saved before runs carried the marker (a config and a checkpoint) is adopted as it is.
        """
        if self.is_run():
            return
        if not (self.has_config() and self.has_checkpoint()):
            refuse_foreign(self.path, "run", "run_dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_marker(self.path, "run")
        except OSError as exc:
            raise SmalllmError(f"run_dir: cannot write to '{self.path}' ({exc.strerror})") from None

    def set_aside(self) -> Path:
        """Move this run (kept locked) to a hidden sibling so a new run can start in its place.

        Returns the original path; :meth:`put_back` undoes the move, :meth:`remove` finishes it.
        """
        original = self.path
        aside = set_aside(original, "run", "run_dir")
        if aside is not None:
            self.path = aside
        return original

    def put_back(self, original: Path) -> None:
        if self.path != original:
            os.rename(self.path, original)
            self.path = original

    def replace_with(self, start: Callable[[Path], T], field: str = "run_dir") -> T:
        """Start a new run where this locked one is, losing neither: move this one aside, call
        ``start(original_path)`` to set the new run up there, then delete this one. If ``start``
        fails, whatever it left is removed (only if it is smalllm's own run) and this run is put
        back as it was; ``start``'s error is raised again."""
        original = self.set_aside()
        try:
            started = start(original)
        except BaseException:
            try:
                if original.exists():
                    remove_owned(original, "run", field)
                self.put_back(original)
            except (OSError, SmalllmError) as exc:
                raise SmalllmError(
                    f"{field}: the new run did not start and the old run could not be moved back "
                    f"({error_line(exc)}); it is kept in '{self.path}'"
                ) from None
            raise
        self.remove(field)
        return started

    def remove(self, field: str = "run_dir") -> None:
        """Delete this run (it must carry the marker) and drop its lock; errors name ``field``."""
        remove_owned(self.path, "run", field)
        self.release()

    # status -----------------------------------------------------------------------------------
    def read_summary(self) -> dict:
        return read_json(self.summary_file)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_file, summary)

    def recorded_status(self) -> str | None:
        """The status written in ``summary.json`` (None when the run never started)."""
        return self.read_summary().get("status")

    def status(self) -> str | None:
        """Like :meth:`recorded_status`, but a ``running`` run whose lock is free was killed."""
        recorded = self.recorded_status()
        if recorded == "running" and self.lock_holder() is None:
            return "killed"
        return recorded

    def is_done(self) -> bool:
        """The one rule for "this run (or sweep cell) needs no more work": it completed."""
        return self.recorded_status() == "completed"

    def mark_running(self, step: int, facts: dict | None = None) -> None:
        """Record a (re)started attempt; ``facts``: what the run states about itself from the start
        (its machine and launch environment, the stream format it reads)."""
        previous = self.read_summary()
        record = {
            **(facts or {}),
            "status": "running",
            "step": step,
            "started": time.time(),
            "attempt": int(previous.get("attempt", 0)) + 1,
        }
        self.write_summary(record)

    def mark_failed(self, error: str, step: int, summary: dict | None = None) -> None:
        """Record a failure with its one-line error and the step it happened at."""
        record = {**self.read_summary(), **(summary or {})}
        record.update({"status": "failed", "error": error, "failed_at_step": step, "ended": time.time()})
        self.write_summary(record)

    # metrics ----------------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        append_jsonl(self.metrics_file, record)

    def read_metrics(self) -> list[dict]:
        """All complete records of ``metrics.jsonl`` in file order (a torn last line is skipped)."""
        return read_jsonl(self.metrics_file) if self.metrics_file.is_file() else []

    def truncate_metrics(self, step: int) -> None:
        """Drop records logged after ``step`` (and a torn last line) before a resumed run appends.

        Without this, steps between the checkpoint and a crash would appear twice in the curves.
        """
        if not self.metrics_file.is_file():
            return
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def append_mixture(self, record: dict) -> None:
        """One round of a mixture policy (see :mod:`smalllm.data.mixture_policy`)."""
        append_jsonl(self.mixture_file, record)

    def read_mixture(self) -> list[dict]:
        """The rounds of ``mixture.jsonl`` in file order (a torn last line is skipped)."""
        return read_jsonl(self.mixture_file) if self.mixture_file.is_file() else []

    def truncate_mixture(self, step: int) -> None:
        """Drop rounds logged after ``step`` before a resumed run appends (as :meth:`truncate_metrics`)."""
        if not self.mixture_file.is_file():
            return
        kept = [r for r in self.read_mixture() if r.get("step", 0) <= step]
        atomic_write_text(self.mixture_file, "".join(json.dumps(r) + "\n" for r in kept))

    # checkpoints ------------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / checkpoint_name(step)

    # the lock ---------------------------------------------------------------------------------
    @property
    def _lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def _holder_path(self) -> Path:
        return self.path / LOCK_HOLDER_FILE

    @property
    def holds_lock(self) -> bool:
        """True when this object holds the run's lock."""
        return self._lock_fd is not None

    def _read_holder(self) -> LockHolder:
        info = read_json(self._holder_path)
        return LockHolder(
            str(info.get("host", "?")), int(info.get("pid", -1)), float(info.get("started", 0.0))
        )

    def _locked_message(self, holder: LockHolder | None) -> str:
        who = holder.describe() if holder else "another process"
        return (
            f"run_dir: '{self.path}' is in use by {who} (lock {self._lock_path}); "
            "wait for it to finish or stop it first"
        )

    def lock_holder(self) -> LockHolder | None:
        """Who holds the lock now (None when it is free: a killed holder's flock is released)."""
        if self._lock_fd is not None:
            return self._read_holder()
        try:
            fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                return self._read_holder() if exc.errno in _CONTENDED else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the one-writer lock or refuse at once, naming its holder.

        The lock is an ``flock`` on ``.lock``: the kernel drops it when its process dies, so a lock
        left by a killed run is free, and taking it over needs no guessing about stale pids. The
        descriptor is close-on-exec, so processes the trainer starts do not inherit the lock.
        """
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SmalllmError(f"run_dir: cannot write to '{self.path}' ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _CONTENDED:
                raise RunLocked(self._locked_message(self.lock_holder())) from None
            raise SmalllmError(f"run_dir: cannot lock '{self._lock_path}' ({exc.strerror})") from None
        try:
            # An --overwrite elsewhere may have moved the directory between open and flock: then this
            # lock guards the old run, not the one now at this path.
            same = os.path.samestat(os.fstat(fd), os.stat(self._lock_path))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            raise RunLocked(f"run_dir: '{self.path}' was replaced while it was being locked; try again")
        self._lock_fd = fd
        try:
            atomic_write_json(
                self._holder_path, {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            )
        except OSError as exc:
            self.release()
            raise SmalllmError(f"run_dir: cannot write to '{self.path}' ({exc.strerror})") from None

    def release(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            self._holder_path.unlink()
        # Closing the descriptor drops the flock.
        os.close(self._lock_fd)
        self._lock_fd = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def read_jsonl(path: Path) -> list[dict]:
    """The JSON-object lines of ``path`` in file order; a torn or foreign line is skipped, so one bad
    line (a run killed mid-write) does not hide the rest. A missing file is an OSError naming it."""
    records = []
    with open(path) as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def is_checkpoint_name(name: str) -> bool:
    return name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit()
