"""The tidy table of a sweep: one row per cell x task (and sub-skill), written as CSV (and parquet).

Every row carries the cell's identity (name, grid, state, preset, parameters, seed, and one column per
swept key), the task's configured frequency in that cell, and its results: final and best accuracy,
final loss and loss relative to chance, and where it emerged (step and tokens) under the run's own
criterion (``eval.criterion``: metric, threshold, patience, at_end).

``data_seed`` is the row's task table seed (``data.tasks.N.seed``, which the sweep's seed axis sets
together with the placement seed ``data.seed``) and ``init_seed`` the initialisation (``train.seed``;
``seed`` is the same value, kept for older readers). ``final_value`` is the last value of the
criterion's metric (``metric``) and ``value_metric`` names the metric it was read from: the same one,
or, for runs older than the choice metrics, its full-vocabulary counterpart (``choice_acc`` -> ``acc``,
``choice_loss`` -> ``loss``). ``chance_acc`` and ``rule_acc`` come from the run's baselines file
(chance over the answer set, best single-position rule; empty for runs without one).

Results are recomputed from each run's metrics rather than copied from its summary, so an
interrupted cell still shows how far it got. Cells with no evaluations (failed before training,
or not started) get one row with an empty ``task`` so that they are visible in the table.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalllm.config import RunConfig, load_run_config
from smalllm.errors import ConfigError, SmalllmError
from smalllm.eval.emergence import emergence_table, eval_records
from smalllm.labels import Label
from smalllm.run_record import read_json
from smalllm.sweep import records
from smalllm.sweep.grid import Cell

CSV_FILE = "results.csv"
PARQUET_FILE = "results.parquet"

ID_COLUMNS = [
    "sweep",
    "cell",
    "grid",
    "state",
    "error",
    "preset",
    "params",
    "non_embedding_params",
    "seed",
    "data_seed",
    "init_seed",
    "size",
]
RESULT_COLUMNS = [
    "task",
    "skill",
    "frequency",
    "unit",
    "instances",
    "tokens",
    "final_acc",
    "best_acc",
    "final_loss",
    "final_loss_ratio",
    "final_choice_acc",
    "choice_acc_lo",
    "choice_acc_hi",
    "final_choice_loss",
    "final_label_mass",
    "final_value",
    "value_metric",
    "chance_acc",
    "rule_acc",
    "learned",
    "status",
    "emergence_step",
    "emergence_tokens",
    "metric",
    "threshold",
    "wall_seconds",
]


@dataclass
class SweepInfo:
    """What the report needs to know about a sweep directory."""

    name: str
    sweep_dir: Path
    cells: list[Cell]
    grid_keys: list[str]
    size_key: str
    tasks: list[str] | None


def load_sweep_dir(sweep_dir: str | Path) -> SweepInfo:
    """Read ``sweep.json``; without one, take the cells from the cell directories present."""
    sweep_dir = Path(sweep_dir)
    meta = records.read_sweep_file(sweep_dir)
    if meta is not None:
        cells = [Cell.from_json(c) for c in meta.get("cells", [])]
        return SweepInfo(
            name=meta.get("name") or sweep_dir.name,
            sweep_dir=sweep_dir,
            cells=cells,
            grid_keys=list(meta.get("grid_keys") or dict.fromkeys(k for c in cells for k in c.params)),
            size_key=meta.get("size_key") or "model.preset",
            tasks=meta.get("tasks"),
        )
    if not records.is_sweep_dir(sweep_dir):
        raise SmalllmError(
            f"{sweep_dir}: not a sweep directory (no {records.SWEEP_FILE} nor {records.CELLS_DIR}/)"
        )
    cells = [
        Cell(name=name, grid=None, params={}, overrides=[]) for name in records.cell_names_on_disk(sweep_dir)
    ]
    return SweepInfo(sweep_dir.name, sweep_dir, cells, [], "model.preset", None)


def get_key(cfg: RunConfig, dotted: str) -> Any:
    """Value of a dotted key (``data.tasks.0.frequency``) in a resolved config; None if absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if isinstance(node, list | tuple):
            if not part.isdigit() or int(part) >= len(node):
                return None
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            node = getattr(node, part, None)
        if node is None:
            return None
    return node


def cell_run_config(info: SweepInfo, cell: Cell) -> RunConfig | None:
    """The config the cell ran with (the one its run saved), or None when it never started."""
    run = records.cell_run(info.sweep_dir, cell.name)
    if not run.has_config():
        return None
    try:
        return load_run_config(run.config_file)
    except ConfigError:
        return None


def _plain(value: Any) -> Any:
    """A CSV/parquet-friendly scalar (lists and mappings as JSON text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


FALLBACK_METRICS = {"choice_acc": "acc", "choice_loss": "loss"}
"""Metric read instead when a run predates the choice metrics (its records lack the first)."""


def final_metric(evals: list[dict], label: Label, metric: str) -> tuple[float | None, str]:
    """(last finite value, metric it came from) of ``metric`` for ``label``, falling back for older runs."""
    for name in (metric, FALLBACK_METRICS.get(metric)):
        if name is None:
            continue
        values = [float(r[label.key(name)]) for r in evals if r.get(label.key(name)) is not None]
        values = [v for v in values if math.isfinite(v)]
        if values:
            return values[-1], name
    return None, metric


def cell_rows(info: SweepInfo, cell: Cell) -> list[dict]:
    """Rows of one cell: one per task (and sub-skill) evaluated, or one placeholder row."""
    run = records.cell_run(info.sweep_dir, cell.name)
    state: str = records.cell_state(info.sweep_dir, cell.name)
    status = records.read_status(info.sweep_dir, cell.name)
    if state == "partial":
        state = status.get("state") if status.get("state") in ("running", "interrupted") else "interrupted"
    cfg = cell_run_config(info, cell)
    summary = run.read_summary()
    base: dict[str, Any] = {
        "sweep": info.name,
        "cell": cell.name,
        "grid": cell.grid or "",
        "state": state,
        "error": records.failure_reason(info.sweep_dir, cell.name) if state == "failed" else "",
        "preset": cfg.model.preset if cfg else cell.params.get("model.preset"),
        "params": summary.get("params"),
        "non_embedding_params": summary.get("non_embedding_params"),
        "seed": cfg.train.seed if cfg else cell.params.get("train.seed"),
        "data_seed": cfg.data.seed if cfg else cell.seeds.get("data"),
        "init_seed": cfg.train.seed if cfg else cell.seeds.get("init", cell.params.get("train.seed")),
        "size": None,
    }
    if base["params"] is None and cfg is not None:
        from smalllm.train.plan import make_plan

        base["params"] = make_plan(cfg).params
    size = cell.params.get(info.size_key)
    if size is None and cfg is not None:
        size = get_key(cfg, info.size_key)
    base["size"] = _plain(size)
    for key in info.grid_keys:
        value = cell.params.get(key)
        if value is None and cfg is not None:
            value = get_key(cfg, key)
        base[key] = _plain(value)

    metrics = run.read_metrics()
    if cfg is None or not metrics:
        return [{**base, **dict.fromkeys(RESULT_COLUMNS)}]
    evals = eval_records(metrics)
    tokens = evals[-1].get("tokens") if evals else None
    tasks = {t.name: t for t in cfg.data.tasks}
    realised = {f.get("label"): f.get("realised") for f in summary.get("frequencies", [])}
    baselines = read_json(run.baselines_file).get("labels") or {}
    rows = []
    for r in emergence_table(metrics, cfg.eval):
        task = tasks.get(r["task"])
        label_obj = Label(r["task"], r["skill"])
        label = str(label_obj)
        value, value_metric = final_metric(evals, label_obj, r["metric"])
        baseline = baselines.get(label) or {}
        rows.append(
            {
                **base,
                "data_seed": task.seed if task else base["data_seed"],
                "task": r["task"],
                "skill": r["skill"] or "",
                "frequency": task.frequency if task else None,
                "unit": task.unit if task else None,
                "instances": realised.get(label),
                "tokens": tokens,
                "final_acc": r["final_acc"],
                "best_acc": r["best_acc"],
                "final_loss": r["final_loss"],
                "final_loss_ratio": r["final_loss_ratio"],
                "final_choice_acc": _last_value(evals, label_obj.key("choice_acc")),
                "choice_acc_lo": _last_value(evals, label_obj.key("choice_acc_lo")),
                "choice_acc_hi": _last_value(evals, label_obj.key("choice_acc_hi")),
                "final_choice_loss": _last_value(evals, label_obj.key("choice_loss")),
                "final_label_mass": _last_value(evals, label_obj.key("label_mass")),
                "final_value": value,
                "value_metric": value_metric,
                "chance_acc": baseline.get("chance_acc"),
                "rule_acc": baseline.get("rule_acc"),
                "learned": bool(r["learned"]) if "learned" in r else r["emergence_step"] is not None,
                # learned / unconfirmed / not_learned under the pre-registered criterion (None: older runs)
                "status": r.get("status"),
                "emergence_step": r["emergence_step"],
                "emergence_tokens": r["emergence_tokens"],
                "metric": r["metric"],
                "threshold": r["threshold"],
                "wall_seconds": summary.get("wall_seconds"),
            }
        )
    return rows or [{**base, **dict.fromkeys(RESULT_COLUMNS)}]


def _last_value(evals: list[dict], key: str) -> float | None:
    values = [r[key] for r in evals if r.get(key) is not None]
    return float(values[-1]) if values else None


def collect(sweep_dir: str | Path) -> tuple[SweepInfo, list[dict]]:
    """The sweep's description and its tidy rows (all cells, any state)."""
    info = load_sweep_dir(sweep_dir)
    rows = [
        row
        for cell in info.cells
        if records.cell_dir(info.sweep_dir, cell.name).is_dir()
        for row in cell_rows(info, cell)
    ]
    return info, rows


def columns(info: SweepInfo) -> list[str]:
    return [*ID_COLUMNS, *(k for k in info.grid_keys if k not in ID_COLUMNS), *RESULT_COLUMNS]


def write_table(info: SweepInfo, rows: list[dict], out_dir: Path | None = None) -> list[Path]:
    """Write ``results.csv`` (and ``results.parquet`` when pyarrow imports) into the sweep dir."""
    out_dir = out_dir or info.sweep_dir
    cols = columns(info)
    csv_path = out_dir / CSV_FILE
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in cols})
    written = [csv_path]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    # Columns hold mixed types across grids (a swept key can be a string in one and a number in
    # another); parquet needs one type per column, so anything ambiguous becomes text.
    table_cols = {}
    for k in cols:
        values = [row.get(k) for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int, float} and kinds != {int, float}:
            table_cols[k] = values
        elif kinds == {int, float}:
            table_cols[k] = [None if v is None else float(v) for v in values]
        elif kinds <= {bool} or kinds <= {str}:
            table_cols[k] = values
        else:
            table_cols[k] = [None if v is None else str(v) for v in values]
    pq.write_table(pa.table(table_cols), out_dir / PARQUET_FILE)
    written.append(out_dir / PARQUET_FILE)
    return written


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return v


def curves(info: SweepInfo, cell: Cell, task: str, metric: str = "acc") -> tuple[list[int], list[float]]:
    """(tokens, values) of a task metric over the cell's evaluations (empty when none)."""
    xs, ys = [], []
    key = Label(task).key(metric)
    for rec in eval_records(records.cell_run(info.sweep_dir, cell.name).read_metrics()):
        v = rec.get(key)
        if v is None or not math.isfinite(float(v)):
            continue
        xs.append(int(rec.get("tokens", 0)))
        ys.append(float(v))
    return xs, ys
