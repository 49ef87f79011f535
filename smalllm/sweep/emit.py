"""``smalllm sweep CONFIG --emit slurm|shell``: launch scripts that run each cell with ``accelerate launch``.

The scripts hold no process management of their own: Slurm's job array (or a plain loop) picks the
cell, ``accelerate launch -m smalllm.cli train`` starts its processes, and the trainer's own
checkpointing makes a re-submitted cell continue (``--resume``) instead of starting over. Whether a
cell is done, how it starts and how its attempt ended are asked of ``python -m smalllm.sweep.cellcmd``,
so each cell writes the same ``cells/<cell>/`` layout as ``smalllm sweep`` (cell record, ``train.log``,
``run/``), and ``smalllm report SWEEP_DIR`` and a later local ``smalllm sweep`` read the results alike.

Every value pasted into a script is quoted with :func:`shlex.quote`, and values that land on a
line-based ``#SBATCH`` or comment line must be one line: names are refused earlier (see
:func:`smalllm.sweep.records.check_name`), this is the second line of defence. ``slurm.setup`` is the
exception by design: it is a shell command of the sweep's author, pasted as written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from smalllm.config import RunConfig
from smalllm.data.shards import corpus_config
from smalllm.errors import ConfigError, SmalllmError
from smalllm.sweep import records
from smalllm.sweep.estimates import estimate_cell
from smalllm.sweep.grid import Cell, SweepSpec, sweep_manifest

_OPTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _line_word(value: object, field: str) -> str:
    """``value`` quoted for a line-based context (``#SBATCH``, a comment): one shell word on one line."""
    text = str(value)
    if _CONTROL.search(text):
        raise ConfigError(
            f"{field}: control characters (such as a newline) cannot go into a script, got {text!r}"
        )
    return shlex.quote(text)


def _gpu_cells(spec: SweepSpec) -> bool:
    if spec.target.device == "gpu":
        return True
    return spec.target.device == "current" and torch.cuda.is_available()


def _launch_args(spec: SweepSpec) -> str:
    """``accelerate launch`` options shared by every cell: processes per cell, CPU or (multi-)GPU.

    A cell's own ``--config_file`` (``target.accelerate``) comes before these in ``$ACCEL``; options
    given on the command line win over the file's, so ``gpus_per_cell`` stays the one process count.
    """
    if not _gpu_cells(spec):
        return "--cpu --num_processes 1 --num_machines 1 --dynamo_backend no"
    n = spec.target.gpus_per_cell
    args = f"--num_processes {n} --num_machines 1 --dynamo_backend no"
    if n > 1:
        # Array tasks sharing a node must not share the rendezvous port.
        args += ' --main_process_port "$((29500 + ${SLURM_ARRAY_TASK_ID:-0} % 1000))"'
    return args


def _accelerate_words(spec: SweepSpec, cfg: RunConfig) -> str:
    """The distribution options of a cell: its ``--config_file`` (``target.accelerate``); without
    one, ``--multi_gpu`` (DDP) for a cell of several GPUs; else nothing."""
    choice = spec.target.accelerate
    path = choice.config_for(cfg.model.shape(cfg.data.seq_len)) if choice is not None else None
    if path is not None:
        return f"--config_file {shlex.quote(str(path))}"
    return "--multi_gpu" if _gpu_cells(spec) and spec.target.gpus_per_cell > 1 else ""


def corpus_groups(cells: list[Cell], configs: dict[str, RunConfig]) -> list[Cell]:
    """One cell per distinct background corpus of the sweep (the first that uses it), in order.

    Cells share a corpus when the settings that shape it (:func:`~smalllm.data.shards.corpus_config`,
    the same the cache key is made of) and the cache directory agree; the content part of the key
    (file hashes, tokenizer hash) is left to ``smalllm data build`` at run time.
    """
    seen: dict[str, Cell] = {}
    for cell in cells:
        data = configs[cell.name].data
        key = json.dumps([corpus_config(data), data.cache_dir], sort_keys=True, default=str)
        seen.setdefault(key, cell)
    return list(seen.values())


def _slurm_time(seconds: float) -> str:
    """Slurm ``--time`` (D-HH:MM:SS) with room for the estimate being optimistic: 1.5x plus an hour."""
    total = int(seconds * 1.5 + 3600)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}-{hours:02d}:{rest // 60:02d}:00"


def _setup_line(spec: SweepSpec) -> str:
    setup = spec.slurm.get("setup")
    if setup:
        return str(setup)
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f"source {shlex.quote(str(activate))}"
    return "# (no environment to activate: set slurm.setup in the sweep file if needed)"


def _body(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig]) -> list[str]:
    """The shared part: per-cell arguments, ``build_corpora`` and ``run_cell INDEX``."""
    sweep_dir = spec.sweep_dir.resolve()
    lines = [
        "set -uo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        _setup_line(spec),
        f"SWEEP_DIR={shlex.quote(str(sweep_dir))}",
        'PYTHON="${PYTHON:-python}"',
        f"NUM_CELLS={len(cells)}",
        "",
        "# cell_args INDEX: sets CELL (its name), RUN (its run directory), LOG (its log file), ARGS",
        "# (config file and overrides of that cell) and ACCEL (its accelerate --config_file, if any).",
        "cell_args() {",
        '  case "$1" in',
    ]
    base = [str(spec.base)] if spec.base is not None else []
    for i, cell in enumerate(cells):
        args = " ".join(shlex.quote(a) for a in [*base, *cell.overrides])
        run = shlex.quote(str(records.run_dir_of(sweep_dir, cell.name)))
        log = shlex.quote(str(records.cell_log(sweep_dir, cell.name)))
        accel = _accelerate_words(spec, configs[cell.name])
        lines.append(
            f"    {i}) CELL={shlex.quote(cell.name)}; RUN={run}; LOG={log}; ARGS=({args}); ACCEL=({accel}) ;;"
        )
    lines += [
        '    *) echo "no cell $1 (0..$((NUM_CELLS - 1)))" >&2; return 2 ;;',
        "  esac",
        "}",
        "",
        "# build_corpora: tokenize each distinct background corpus of the sweep once, before any cell",
        "# (`smalllm data build --if-missing`: a corpus already in the cache is left as it is).",
        "build_corpora() {",
        *(
            f'  cell_args {cells.index(cell)} && "$PYTHON" -m smalllm.cli data build --if-missing "${{ARGS[@]}}" || return 1'
            for cell in corpus_groups(cells, configs)
        ),
        "}",
        "",
        "# run_cell INDEX: skip a finished cell, resume a started one. smalllm.sweep.cellcmd judges the",
        "# cell (the same rule as `smalllm sweep`) and records each attempt and its outcome.",
        "run_cell() {",
        '  cell_args "$1" || return 2',
        "  local state mode rc",
        '  state=$("$PYTHON" -m smalllm.sweep.cellcmd state "$SWEEP_DIR" "$CELL") || return 2',
        '  if [ "$state" = done ]; then echo "$CELL: already done"; return 0; fi',
        '  mode=$("$PYTHON" -m smalllm.sweep.cellcmd start "$SWEEP_DIR" "$CELL") || return 2',
        f'  accelerate launch ${{ACCEL[@]+"${{ACCEL[@]}}"}} {_launch_args(spec)} -m smalllm.cli train \\',
        '    "${ARGS[@]}" "run_dir=$RUN" ${mode:+"$mode"} >> "$LOG" 2>&1',
        "  rc=$?",
        '  "$PYTHON" -m smalllm.sweep.cellcmd finish "$SWEEP_DIR" "$CELL" "$rc"',
        '  echo "$CELL: exit $rc (log: $LOG)"',
        "  return $rc",
        "}",
        "",
    ]
    return lines


def _sbatch_options(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig]) -> list[str]:
    """``#SBATCH`` lines of the sweep's ``slurm.options`` plus the defaults they leave out."""
    options: dict[str, object] = {"nodes": 1, "ntasks-per-node": 1}
    options.update({str(k): v for k, v in (spec.slurm.get("options") or {}).items()})
    longest = max((estimate_cell(spec, configs[c.name]).seconds for c in cells), default=3600.0)
    options.setdefault("time", _slurm_time(longest))
    if _gpu_cells(spec):
        options.setdefault("gpus-per-node", spec.target.gpus_per_cell)
    lines = []
    for k, v in options.items():
        if not _OPTION_NAME.fullmatch(k):
            raise ConfigError(f"slurm.options.{k}: not an sbatch option name (letters, digits, - and _)")
        # true / "" mark a flag without a value (e.g. exclusive: true); false / null leave it out.
        if v is True or v == "":
            lines.append(f"#SBATCH --{k}")
        elif v not in (False, None):
            lines.append(f"#SBATCH --{k}={_line_word(v, f'slurm.options.{k}')}")
    return lines


def slurm_script(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig]) -> str:
    """A Slurm array script: task ``i`` runs cell ``i``."""
    launch = records.launch_dir(spec.sweep_dir.resolve())
    array = f"0-{len(cells) - 1}"
    if spec.slurm.get("max_parallel"):
        array += f"%{int(spec.slurm['max_parallel'])}"
    source = _line_word(spec.source, "source") if spec.source else "the sweep file"
    script = _line_word(launch / "slurm.sh", "sweep_dir")
    lines = [
        "#!/bin/bash",
        f"# Generated by `smalllm sweep {source} --emit slurm` on {time.strftime('%Y-%m-%d %H:%M')}.",
        f"# {len(cells)} cells, one array task each. Submit with: bash {_line_word(launch / 'submit.sh', 'sweep_dir')}",
        f"# (corpus build, then the array; `sbatch {script}` alone builds each task's own corpus if missing).",
        "# Resubmitting is safe: finished cells exit at once, started ones resume from their checkpoint.",
        f"#SBATCH --job-name={_line_word(spec.name, 'name')}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={_line_word(records.launch_logs_dir(spec.sweep_dir.resolve()) / '%A_%a.out', 'sweep_dir')}",
        *_sbatch_options(spec, cells, configs),
        "",
        *_body(spec, cells, configs),
        "# build_corpus_of INDEX: the corpus of that cell only, if missing (what an array task needs).",
        "build_corpus_of() {",
        '  cell_args "$1" && "$PYTHON" -m smalllm.cli data build --if-missing "${ARGS[@]}"',
        "}",
        "",
        "# `slurm.sh build` (the first job of submit.sh) builds the corpora; an array task builds its own",
        "# cell's if still missing (a resubmitted slurm.sh alone), never the other cells'.",
        'if [ "${1:-}" = build ]; then build_corpora; exit $?; fi',
        'TASK="${SLURM_ARRAY_TASK_ID:?run this script with sbatch (or set SLURM_ARRAY_TASK_ID)}"',
        'build_corpus_of "$TASK" || exit 1',
        'run_cell "$TASK"',
    ]
    return "\n".join(lines) + "\n"


def submit_script(spec: SweepSpec) -> str:
    """``submit.sh``: one job builds the corpora, then the cell array starts when it has succeeded."""
    launch = records.launch_dir(spec.sweep_dir.resolve())
    slurm = shlex.quote(str(launch / "slurm.sh"))
    name = _line_word(f"{spec.name}-data", "name")
    lines = [
        "#!/bin/bash",
        "# Submit the sweep: the corpus build first (one job), then the cell array once it succeeded.",
        "set -euo pipefail",
        f"build=$(sbatch --parsable --array=0 --job-name={name} {slurm} build)",
        'build="${build%%;*}"  # --parsable prints JOBID or JOBID;CLUSTER',
        f'sbatch --dependency="afterok:$build" {slurm}',
    ]
    return "\n".join(lines) + "\n"


def shell_script(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig]) -> str:
    """A shell script that runs all cells one after another (or the given cell indices)."""
    source = _line_word(spec.source, "source") if spec.source else "the sweep file"
    lines = [
        "#!/bin/bash",
        f"# Generated by `smalllm sweep {source} --emit shell` on {time.strftime('%Y-%m-%d %H:%M')}.",
        f"# {len(cells)} cells, run in order. Usage: $0 [CELL_INDEX ...]   (default: all)",
        "# Rerunning is safe: finished cells are skipped, started ones resume from their checkpoint.",
        "",
        *_body(spec, cells, configs),
        'build_corpora || { echo "building the corpora failed" >&2; exit 1; }',
        'if [ "$#" -gt 0 ]; then indices=("$@"); else indices=($(seq 0 $((NUM_CELLS - 1)))); fi',
        "failed=0",
        'for i in "${indices[@]}"; do run_cell "$i" || failed=$((failed + 1)); done',
        'echo "$failed of ${#indices[@]} cell(s) failed"',
        '[ "$failed" -eq 0 ]',
    ]
    return "\n".join(lines) + "\n"


def emit_script(spec: SweepSpec, cells: list[Cell], kind: str, configs: dict[str, RunConfig]) -> Path:
    """Write ``SWEEP_DIR/launch/{slurm,run_all}.sh`` (and ``sweep.json``); return the script path."""
    if kind not in ("slurm", "shell"):
        raise SmalllmError(f"--emit: '{kind}' is not one of slurm, shell")
    # Render first: a refused value must leave nothing behind.
    text = slurm_script(spec, cells, configs) if kind == "slurm" else shell_script(spec, cells, configs)
    records.prepare_sweep_dir(spec.sweep_dir)
    records.launch_logs_dir(spec.sweep_dir).mkdir(parents=True, exist_ok=True)
    records.write_sweep_file(spec.sweep_dir, sweep_manifest(spec, cells))
    path = records.launch_dir(spec.sweep_dir) / ("slurm.sh" if kind == "slurm" else "run_all.sh")
    path.write_text(text)
    path.chmod(0o755)
    if kind == "slurm":
        submit = records.launch_dir(spec.sweep_dir) / "submit.sh"
        submit.write_text(submit_script(spec))
        submit.chmod(0o755)
    return path.resolve()
