"""``smalllm probe RUN_DIR``: representation probes of a run's checkpoints (Huang et al. Sec. 4.3).

For every selected checkpoint the run's task tables are rebuilt from its saved data config (the
same tables it trained on: checked against its ``eval_sets`` file), and each probe-able task's
held-out instances — the test part of the task's pool, never trained on — are run through the
model as they were scored in training (the eval set's prefix, then ``TOK1 TOK2``). The residual
stream of every layer (``output_hidden_states``: entry 0 the embeddings, entry L the last block's
output as the model returns it) is read at the two operand positions:

* ``t_cmp`` — linear probe: does the residual at an operand TOK encode ``val(TOK)``? Samples are
  (instance, operand) pairs with target ``val(TOK)``; folds split table tokens, so R² is measured on
  tokens the probe never saw. ``r2_control`` is the same probe on the values dealt out to the
  tokens again at random (no value direction to find: near or below 0).
* ``t_add`` — Fourier modes of the class means: the residual at an operand averaged per operand
  value mod P (P = ``num_values``; values are 0 … P−1, so the class is the value), the number of
  frequencies above 2·P_null per layer, and their sum over layers as the paper reports it.
  ``modes_control`` counts the modes of the same means under a random relabelling of the values.

The results go to ``probes.json`` (replaced on each call) and plots beside the run's report.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from smalllm.checkpoints import MANIFEST, list_checkpoints
from smalllm.data.config import DataConfig
from smalllm.data.eval_sets import load_eval_sets
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import STREAM_FORMAT, Family, TaskStream
from smalllm.errors import SmalllmError, did_you_mean
from smalllm.eval.probes import (
    PROBE_COMPONENTS,
    PROBE_FOLDS,
    PROBE_RIDGE,
    class_means,
    control_r2,
    fourier_mode_count,
    linear_probe_r2,
)
from smalllm.run_record import (
    RunDir,
    atomic_write_json,
    checkpoint_step,
    probe_plot_file,
    probes_json_file,
    read_json,
)
from smalllm.tasks.lookup import TAdd, TCmp
from smalllm.validation import integer, number

PROBES = {TCmp: "linear", TAdd: "fourier"}
"""Which probe reads which task (by task class, so a subclass registered under another name too)."""

INSTANCES = "held-out: the test part of the task's pool (never trained on), scored as in training"


@dataclass
class ProbeSettings:
    """How the probes are fitted; recorded in ``probes.json``."""

    components: int = PROBE_COMPONENTS
    """Top principal components the linear probe regresses on (fewer when the width or the samples
    are fewer)."""
    folds: int = PROBE_FOLDS
    """Cross-validation folds over the table tokens."""
    ridge: float = PROBE_RIDGE
    """Ridge penalty relative to the mean variance of the kept components."""
    controls: int = 5
    """Shuffled value assignments the control R² (and control mode count) is averaged over."""
    max_instances: int = 2000
    """Held-out instances read per task (the first ones of its pool's test part): bounds the
    residuals kept in memory, (layers + 1) × 2 × max_instances × width floats."""
    batch_size: int = 256
    """Instances per forward pass."""
    seed: int = 0
    """Seed of the fold assignment and the shuffled controls."""

    def validate(self) -> None:
        integer(self.components, "components", ge=1, le=1 << 20)
        integer(self.folds, "folds", ge=2, le=1 << 20)
        number(self.ridge, "ridge", ge=0.0, le=1e6)
        integer(self.controls, "controls", ge=1, le=1000)
        integer(self.max_instances, "--max-instances", ge=1, le=1 << 30)
        integer(self.batch_size, "batch_size", ge=1, le=1 << 20)
        integer(self.seed, "--seed", ge=0, le=2**63 - 1)


def select_checkpoints(run: RunDir, which: str) -> list[Path]:
    """The run's complete checkpoints named by ``which``: ``all``, ``last`` or steps ``S1,S2,...``."""
    saved = list_checkpoints(run.checkpoints_dir)
    if not saved:
        raise SmalllmError(f"RUN_DIR: '{run.path}' has no complete checkpoint to probe")
    if which == "all":
        return saved
    if which == "last":
        return saved[-1:]
    by_step = {checkpoint_step(p): p for p in saved}
    chosen = []
    for word in which.split(","):
        word = word.strip()
        if not word.isdigit():
            raise SmalllmError(f"--checkpoints: expected all, last or steps like 100,200, got '{which}'")
        if int(word) not in by_step:
            steps = ", ".join(str(s) for s in by_step)
            raise SmalllmError(f"--checkpoints: the run has no checkpoint at step {word} (it has {steps})")
        chosen.append(by_step[int(word)])
    return sorted(set(chosen), key=checkpoint_step)


def probe_families(stream: TaskStream, names: list[str] | None, run: RunDir) -> list[Family]:
    """The run's tasks a probe reads (all of them, or those named)."""
    own = {f.task.name: f for f in stream.families}
    probed = [f for f in stream.families if isinstance(f.task, tuple(PROBES))]
    kinds = ", ".join(sorted(t.name for t in PROBES))
    if not names:
        if not probed:
            raise SmalllmError(f"RUN_DIR: '{run.path}' trains no task a probe reads ({kinds})")
        return probed
    chosen = []
    for name in names:
        if name not in own:
            raise SmalllmError(f"--task: '{name}' is not a task of {run.path}{did_you_mean(name, own)}")
        if not isinstance(own[name].task, tuple(PROBES)):
            raise SmalllmError(f"--task: '{name}' has no probe (probes read {kinds})")
        chosen.append(own[name])
    return chosen


def _probe_kind(family: Family) -> str:
    return next(kind for cls, kind in PROBES.items() if isinstance(family.task, cls))


def residuals(model: Any, sequences: np.ndarray, positions: list[int], batch_size: int) -> np.ndarray:
    """Every layer's residual stream at ``positions`` of each row of ``sequences`` [n, T] (rows of
    one length, no padding): float32 [layers + 1, n, len(positions), width], entry 0 the embeddings."""
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            ids = torch.as_tensor(sequences[start : start + batch_size], device=device)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            parts.append(torch.stack([h[:, positions, :].float() for h in hidden]).cpu().numpy())
    return np.concatenate(parts, axis=1)


def _operands(family: Family, settings: ProbeSettings) -> np.ndarray:
    """[n, 2] operand tokens of the held-out instances read (the first ``max_instances``)."""
    instances = [inst for pool in family.pools for inst in pool.test][: settings.max_instances]
    return np.array([inst.prompt[:2] for inst in instances], dtype=np.int64)


def probe_linear(feats: np.ndarray, values: np.ndarray, tokens: np.ndarray, s: ProbeSettings) -> list[dict]:
    """T_CMP: per layer, the cross-validated R² of ``values`` from ``feats`` [layers+1, n, 2, d]
    (folds over ``tokens``) and its shuffled-value control."""
    y, groups = values.reshape(-1), tokens.reshape(-1)
    out = []
    for layer, x in enumerate(feats):
        x = x.reshape(len(y), -1)
        out.append(
            {
                "layer": layer,
                "r2": linear_probe_r2(x, y, groups, s.components, s.folds, s.ridge, s.seed),
                "r2_control": control_r2(x, y, groups, s.controls, s.components, s.folds, s.ridge, s.seed),
                "n": len(y),
                "tokens": len(np.unique(groups)),
            }
        )
    return out


def probe_fourier(feats: np.ndarray, values: np.ndarray, modulus: int, s: ProbeSettings) -> list[dict]:
    """T_ADD: per layer, the Fourier modes of the class means of ``feats`` [layers+1, n, 2, d]
    grouped by ``values`` mod ``modulus``, and the mode count under random relabellings."""
    labels = values.reshape(-1) % modulus
    rng = np.random.default_rng([s.seed, 0xF0])
    relabel = [rng.permutation(modulus) for _ in range(s.controls)]
    out = []
    for layer, x in enumerate(feats):
        x = x.reshape(len(labels), -1)
        means, missing = class_means(x, labels, modulus)
        entry: dict[str, Any] = {"layer": layer, "n": len(labels)}
        if missing:
            # A spectrum over a partial set of classes is no spectrum of the task's values.
            entry.update({"modes": None, "frequencies": [], "fractions": [], "missing_values": missing})
        else:
            modes = fourier_mode_count(means)
            control = [fourier_mode_count(means[perm]).count for perm in relabel]
            entry.update(
                {
                    "modes": modes.count,
                    "frequencies": modes.modes,
                    "fractions": modes.fractions,
                    "modes_control": float(np.mean(control)),
                }
            )
        out.append(entry)
    return out


def load_checkpoint_model(path: Path) -> Any:
    """The model of one checkpoint directory, in eval mode on the GPU when there is one."""
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise SmalllmError(f"{path}: cannot load the model ({str(exc).splitlines()[0]})") from None
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model.eval()


def _check_tables(run: RunDir, stream: TaskStream) -> None:
    """Refuse when the rebuilt held-out sets differ from the ones the run saved: then its tables
    (or its corpus, which picks the table tokens) are not those the run trained on."""
    summary = run.read_summary()
    # As the trainer reads it: a run that recorded no format predates format 2 (a copied run without
    # its summary is left to the eval-set comparison below).
    trained_on = summary.get("stream_format", 1) if summary else STREAM_FORMAT
    if trained_on != STREAM_FORMAT:
        raise SmalllmError(
            f"RUN_DIR: '{run.path}' was trained on stream format {trained_on} and this smalllm builds "
            f"format {STREAM_FORMAT}, so its task tables cannot be rebuilt; probe it with the smalllm that trained it"
        )
    if not run.eval_sets_file.is_file():
        return
    saved = {s.task: s.instances for s in load_eval_sets(run.eval_sets_file)[0]}
    for rebuilt in stream.eval_sets():
        if rebuilt.task in saved and saved[rebuilt.task] != rebuilt.instances:
            raise SmalllmError(
                f"{run.eval_sets_file}: the held-out instances of '{rebuilt.task}' differ from those "
                "rebuilt from the run's config; its corpus or tokenizer changed since it trained"
            )


def probe_run(
    run_dir: str | Path,
    data: DataConfig,
    global_batch_size: int,
    checkpoints: str = "all",
    tasks: list[str] | None = None,
    out: str | Path | None = None,
    settings: ProbeSettings | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Probe the selected checkpoints of a run (see the module docstring); write ``probes.json`` and
    the plots into the run (or the directory ``out``) and return what was written to the JSON.

    ``data`` and ``global_batch_size`` come from the run's saved config: they fix its task tables
    and where its instances sat in a row. The run's lock is held throughout when the results go
    into it, so a training run and a probe never write one run at once (as ``smalllm eval``).
    """
    settings = settings or ProbeSettings()
    settings.validate()
    hf_logging.disable_progress_bar()
    run = RunDir(run_dir)
    if not run.has_config():
        raise SmalllmError(f"RUN_DIR: '{run.path}' holds no run ({run.config_file.name} missing)")
    chosen = select_checkpoints(run, checkpoints)
    out_dir = Path(out) if out else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise SmalllmError(f"--out: '{out_dir}' exists and is not a directory")
    target = RunDir(out_dir) if out_dir is not None else run
    with target.locked() if target.is_run() else contextlib.nullcontext():
        result = _probe(run, data, global_batch_size, chosen, tasks, settings, log)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        json_file = probes_json_file(out_dir) if out_dir is not None else run.probes_file
        atomic_write_json(json_file, _finite(result))
        log(f"wrote {json_file}")
        for plot in plot_probes(result, out_dir if out_dir is not None else run.report_dir):
            log(f"wrote {plot}")
    return result


def _probe(
    run: RunDir,
    data: DataConfig,
    global_batch_size: int,
    chosen: list[Path],
    tasks: list[str] | None,
    settings: ProbeSettings,
    log: Callable[[str], None],
) -> dict:
    corpus = ensure_corpus(data, num_proc=min(4, os.cpu_count() or 1), log=log)
    stream = TaskStream(data, corpus, global_batch_size)
    families = probe_families(stream, tasks, run)
    _check_tables(run, stream)
    prefixes = {s.task: list(s.prefix) for s in stream.eval_sets()}

    result: dict[str, Any] = {
        "run": str(run.path),
        "time": time.time(),
        "instances": INSTANCES,
        "settings": asdict(settings),
        "tasks": {},
    }
    inputs = []
    for family in families:
        task = family.task
        operands = _operands(family, settings)
        prefix = prefixes[task.name]
        rows = np.array([[*prefix, *pair] for pair in operands], dtype=np.int64).reshape(-1, len(prefix) + 2)
        value_of = {tok: v for v, tok in enumerate(task.table)}
        values = np.array([[value_of[t] for t in pair] for pair in operands], dtype=np.int64).reshape(-1, 2)
        positions = [len(prefix), len(prefix) + 1]
        inputs.append((task.name, rows, positions, operands, values))
        n = task.params.num_values
        entry: dict[str, Any] = {"probe": _probe_kind(family), "num_values": n, "prefix": prefix}
        if entry["probe"] == "fourier":
            if n < 3:
                raise SmalllmError(
                    f"--task: '{task.name}' has num_values={n}; a Fourier spectrum needs at least 3 values"
                )
            entry.update({"modulus": n, "p_null": 2.0 / (n - 1), "threshold": 4.0 / (n - 1)})
        entry["steps"] = []
        result["tasks"][task.name] = entry

    for path in chosen:
        model = load_checkpoint_model(path)
        step, tokens = checkpoint_step(path), read_json(path / MANIFEST).get("tokens")
        for name, rows, positions, operands, values in inputs:
            entry = result["tasks"][name]
            feats = residuals(model, rows, positions, settings.batch_size)
            record: dict[str, Any] = {"step": step, "tokens": tokens}
            if entry["probe"] == "linear":
                layers = probe_linear(feats, values, operands, settings)
                shown = " ".join(f"{e['r2']:.2f}" for e in layers)
                control = max(e["r2_control"] for e in layers)
                log(f"{name} step {step}: R² by layer {shown} (control at most {control:.2f})")
            else:
                layers = probe_fourier(feats, values, entry["modulus"], settings)
                counted = [e["modes"] for e in layers if e["modes"] is not None]
                record["modes_total"] = sum(counted) if len(counted) == len(layers) else None
                shown = " ".join("-" if e["modes"] is None else str(e["modes"]) for e in layers)
                log(f"{name} step {step}: Fourier modes by layer {shown}")
            record["layers"] = layers
            entry["steps"].append(record)
        del model  # one checkpoint's weights in memory at a time
    return result


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def plot_probes(result: dict, plot_dir: Path) -> list[Path]:
    """Per task: the probe score against the layer (a line per checkpoint) and against the step (a
    line per layer). Agg canvas, no pyplot, as in :mod:`smalllm.eval.report`."""
    from matplotlib import colormaps

    from smalllm.figures import new_figure, save_figure

    written = []
    for name, task in result["tasks"].items():
        records = task["steps"]
        if not records:
            continue
        linear = task["probe"] == "linear"
        key, label = ("r2", "R² of val(TOK)") if linear else ("modes", "Fourier modes")
        n_layers = len(records[0]["layers"])
        for by in ("layer", "step"):
            fig = new_figure(6, 4)
            ax = fig.add_subplot(1, 1, 1)
            if by == "layer":
                colours = colormaps["viridis"](np.linspace(0, 1, max(len(records), 2)))
                for rec, colour in zip(records, colours):
                    ys = [np.nan if e[key] is None else e[key] for e in rec["layers"]]
                    ax.plot(range(n_layers), ys, marker="o", color=colour, label=f"step {rec['step']}")
                last = records[-1]["layers"]
                control_key = "r2_control" if linear else "modes_control"
                ys = [e.get(control_key, np.nan) for e in last]
                ax.plot(
                    range(n_layers), ys, ls="--", color="grey", label=f"control (step {records[-1]['step']})"
                )
                ax.set_xlabel("layer (0: embeddings)")
                ax.set_xticks(range(n_layers))
            else:
                steps = [rec["step"] for rec in records]
                colours = colormaps["plasma"](np.linspace(0, 0.9, max(n_layers, 2)))
                for layer in range(n_layers):
                    ys = [
                        np.nan if r["layers"][layer][key] is None else r["layers"][layer][key]
                        for r in records
                    ]
                    ax.plot(steps, ys, marker="o", color=colours[layer], label=f"layer {layer}")
                ax.set_xlabel("step")
            if linear:
                ax.axhline(0.0, color="black", lw=0.5)
            ax.set_ylabel(label)
            ax.set_title(f"{name}: {'linear probe' if linear else 'Fourier modes of class means'}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            path = probe_plot_file(plot_dir, name, f"{key}_by_{by}")
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(save_figure(fig, path))
    return written
