"""The Python API behind ``smalllm.train``, ``smalllm.load_run`` and ``smalllm.evaluate``.

A notebook drives the same code the CLI does: the config goes through ``load_config`` (every check a
``smalllm train`` line gets), training through :func:`smalllm.train.trainer.train`, scoring through
:func:`smalllm.eval.checkpoint_eval.evaluate_checkpoint`. What comes back is plain data (dicts and
lists a ``pandas.DataFrame`` takes as they are) plus a :class:`Run` that loads its model only when
asked, so looking at a sweep's hundred runs does not load a hundred models.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from smalllm.config import RunConfig, load_config, load_run_config, save_config
from smalllm.errors import SmalllmError
from smalllm.run_record import RunDir


def _quiet(_message: str) -> None:
    pass


def override_strings(overrides: Mapping[str, Any]) -> list[str]:
    """``{"train.lr": 1e-3, "model": {"preset": "micro-w32"}}`` as ``key=value`` override lines.

    Values are written as JSON, which the config loader reads as YAML: strings stay strings
    (``"1e-3"`` is not a number), lists and mappings keep their structure (a mapping is merged into
    its section, so ``model={"preset": ...}`` changes only the preset).
    """
    lines = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise SmalllmError(f"override {key!r}: keys are dotted config names, e.g. 'train.lr'")
        if isinstance(value, Path):
            value = str(value)
        try:
            text = json.dumps(value)
        except TypeError:
            raise SmalllmError(
                f"{key}: {type(value).__name__} is not a config value (use numbers, strings, lists, dicts)"
            ) from None
        lines.append(f"{key}={text}")
    return lines


def resolve_config(
    config_or_path: RunConfig | str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """A validated config from a YAML path, a :class:`RunConfig`, a mapping of overrides on the
    built-in default, or nothing (the default), with ``overrides`` (dotted keys) laid over it."""
    extra = dict(overrides or {})
    if isinstance(config_or_path, Mapping):
        extra = {**config_or_path, **extra}
        config_or_path = None
    lines = override_strings(extra)
    if isinstance(config_or_path, RunConfig):
        # Through a file, so a config built or edited in Python is validated like a YAML one.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "from_python.yaml"
            save_config(config_or_path, path)
            return load_config(path, lines)
    if config_or_path is not None and not Path(config_or_path).is_file():
        raise SmalllmError(f"config: '{config_or_path}' not found")
    return load_config(config_or_path, lines)


def train(
    config_or_path: RunConfig | str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
    **more: Any,
) -> Run:
    """Train a run, as ``smalllm train`` does, and return it as a :class:`Run`.

    ``config_or_path``: a YAML file, a :class:`RunConfig`, a mapping of overrides, or None for the
    built-in default. Overrides are dotted keys, given as a mapping or as keyword arguments
    (``smalllm.train(**{"model.preset": "micro-w32"}, run_dir="runs/a")``). ``log=None`` trains
    silently. A run that fails raises a :class:`~smalllm.errors.SmalllmError`, like the CLI.
    """
    from smalllm.train.trainer import train as train_run

    cfg = resolve_config(config_or_path, {**(overrides or {}), **more})
    train_run(cfg, resume=resume, overwrite=overwrite, log=log or _quiet)
    return load_run(cfg.run_dir)


class Run:
    """A finished (or running) run directory, read as plain data; the model loads on first use."""

    def __init__(self, path: str | Path) -> None:
        self.dir = RunDir(path)
        if not self.dir.has_config():
            raise SmalllmError(f"load_run: '{path}' is not a run directory (no {self.dir.config_file.name})")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def path(self) -> Path:
        return self.dir.path

    @cached_property
    def config(self) -> RunConfig:
        """The resolved config the run trained with."""
        return load_run_config(self.dir.config_file)

    @property
    def status(self) -> str | None:
        """completed, running, interrupted, diverged, failed, or killed (see ``RunDir.status``)."""
        return self.dir.status()

    @property
    def summary(self) -> dict:
        """The run's status record (``summary.json``): steps, tokens, parameters, frequencies, ..."""
        return self.dir.read_summary()

    @property
    def metrics(self) -> list[dict]:
        """Every metrics record, in order: ``kind`` is ``train``, ``eval`` or ``samples``; eval keys
        read ``eval/<task>/<metric>``. ``pandas.DataFrame(run.metrics)`` gives the curves (samples
        records add a ``samples`` column of lists; :attr:`samples` has them alone)."""
        return self.dir.read_metrics()

    @property
    def evals(self) -> list[dict]:
        """The evaluation records only (one per evaluation step)."""
        return [r for r in self.metrics if r.get("kind") == "eval"]

    @property
    def samples(self) -> list[dict]:
        """The greedy samples records (one per evaluation step; see :mod:`smalllm.eval.samples`)."""
        return [r for r in self.metrics if r.get("kind") == "samples"]

    @property
    def emergence(self) -> list[dict]:
        """Per task: whether and when it was learned, its final metrics (written at the run's end)."""
        if not self.dir.emergence_file.is_file():
            return []
        data = json.loads(self.dir.emergence_file.read_text())
        return data if isinstance(data, list) else []

    @property
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        from smalllm.checkpoints import list_checkpoints

        return list_checkpoints(self.dir.checkpoints_dir)

    def checkpoint(self, step: int | None = None) -> Path:
        """The checkpoint of ``step`` (default: the latest that passes its checksums)."""
        from smalllm.checkpoints import latest_checkpoint

        if step is None:
            latest = latest_checkpoint(self.dir.checkpoints_dir)
            if latest is None:
                raise SmalllmError(f"{self.path}: the run has no complete checkpoint")
            return latest
        path = self.dir.checkpoint_dir(step)
        if path not in self.checkpoints:
            raise SmalllmError(f"{self.path}: no complete checkpoint at step {step}")
        return path

    @cached_property
    def model(self):
        """The latest checkpoint as a transformers model (loaded once, on first use, in eval mode)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(self.checkpoint()), local_files_only=True).eval()

    @cached_property
    def tokenizer(self):
        """The run's tokenizer, from its latest checkpoint."""
        from smalllm.data.tokenizer import load_tokenizer

        return load_tokenizer(self.checkpoint())


def load_run(path: str | Path) -> Run:
    """Open the run directory ``path`` for reading: config, metrics, emergence, summary, model."""
    return Run(path)


def evaluate(
    model_or_run: Run | str | Path,
    tasks: list[str] | None = None,
    run: Run | str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Score a checkpoint on a run's held-out sets, as ``smalllm eval`` does, and return its record
    (``eval/<task>/<metric>`` keys, plus step and tokens). The record is also appended to the run's
    ``eval_results.jsonl``.

    ``model_or_run``: a :class:`Run` or run directory (its latest checkpoint), or a checkpoint / HF
    model directory; ``run`` says whose held-out sets to use when that cannot be inferred.
    """
    from smalllm.eval.checkpoint_eval import evaluate_checkpoint

    path = model_or_run.path if isinstance(model_or_run, Run) else Path(model_or_run)
    run_dir = run.path if isinstance(run, Run) else run
    if isinstance(tasks, str):
        tasks = [tasks]
    return evaluate_checkpoint(path, run_dir=run_dir, tasks=tasks, log=log or _quiet)
