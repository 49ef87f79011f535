"""``smalllm toy``: run one experiment (or ``all``) into a run directory.

The directory is an ordinary smalllm run directory (:class:`~smalllm.run_record.RunDir`): the marker,
the lock, ``config.yaml`` (the resolved toy config), ``metrics.jsonl`` (one record per step and
width), ``tb/`` (TensorBoard scalars), ``summary.json`` (status, wall time and every experiment's
result) and the figures under ``report/``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import yaml

from smalllm.errors import SmalllmError
from smalllm.run_record import RunDir, error_line, is_empty_dir
from smalllm.safe_yaml import load_yaml_file
from smalllm.toy import CHOICES, EXPERIMENTS
from smalllm.toy import experiments as ex
from smalllm.toy.config import PRESETS, ToyConfig, config_from_dict
from smalllm.toy.model import resolve_device

SCALARS = ("delta_F", "grad_F", "grad_F_bound", "rare_signal_corrected", "cos_rare_F")


def load_toy_config(preset: str, path: str | None = None) -> ToyConfig:
    """The ``preset`` config, with a YAML file's keys (nested by section) laid over it; validated."""
    if preset not in PRESETS:
        raise SmalllmError(f"--preset: '{preset}' is not one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]()
    if path is not None:
        raw = load_yaml_file(path)
        cfg = config_from_dict(raw or {}, cfg, str(path))
    cfg.validate("toy")
    return cfg


class _Logger:
    """Appends metrics records to the run and mirrors their scalars to TensorBoard."""

    def __init__(self, run: RunDir, tensorboard: bool) -> None:
        self.run = run
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tracker_dir))

    def __call__(self, record: dict) -> None:
        self.run.append_metrics(record)
        if self.writer is None:
            return
        tag = f"{record['experiment']}/" + "/".join(
            f"{key}{record[key]:g}" for key in ("beta", "gap", "width") if key in record
        )
        for key in SCALARS:
            if isinstance(record.get(key), float):
                self.writer.add_scalar(f"{tag}/{key}", record[key], record["step"])
        if "loss_norm" in record:
            for k, value in enumerate(record["loss_norm"], start=1):
                self.writer.add_scalar(f"{tag}/loss_norm/task{k}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_toy(
    experiment: str,
    cfg: ToyConfig,
    out: str | Path,
    device: str = "cpu",
    overwrite: bool = False,
    tensorboard: bool = True,
) -> dict:
    """Run ``experiment`` (one of :data:`CHOICES`) into run directory ``out``; returns the summary.

    ``overwrite`` replaces a toy run as the trainer's ``--overwrite`` replaces a training run: the
    old run is locked first, moved aside, and deleted only once the new run is set up; if setting up
    fails, the old run is put back as it was.
    """
    from smalllm.toy import plots

    if experiment not in CHOICES:
        raise SmalllmError(f"experiment: '{experiment}' is not one of {', '.join(CHOICES)}")
    dev = resolve_device(device)
    run = RunDir(out)
    run.check_start(overwrite=overwrite)
    if overwrite and run.path.is_dir() and not is_empty_dir(run.path):
        if run.is_run() and run.read_summary().get("kind") != "toy":
            # --overwrite replaces a toy run; a language-model run in the wrong --out is nobody's to delete.
            raise SmalllmError(
                f"--out: '{run.path}' holds a smalllm run that is not a toy run; refusing to replace it"
            )
        run.acquire()  # held until it is deleted or put back: nobody may resume or replace it meanwhile
        run, log = _replace_run(run, cfg, tensorboard)
    else:
        run, log = _open_run(run, cfg, tensorboard)
    try:
        started = time.perf_counter()
        results: dict = {}
        try:
            wanted = EXPERIMENTS if experiment == "all" else (experiment,)
            if {"heatmap", "signal"} & set(wanted):
                grids = [ex.train_grid(cfg, beta, dev, log) for beta in cfg.tasks.betas]
                if "heatmap" in wanted:
                    results["heatmap"] = [ex.heatmap_result(cfg, g) for g in grids]
                    plots.plot_heatmaps(results["heatmap"], run.report_dir / "a_heatmap.png")
                if "signal" in wanted:
                    results["signal"] = [ex.signal_result(cfg, g) for g in grids]
                    plots.plot_signal(results["signal"], grids, run.report_dir / "b_signal.png")
            if "retention" in wanted:
                results["retention"] = ex.run_retention(cfg, dev, log)
                plots.plot_retention(results["retention"], run.report_dir / "c_retention.png")
            if "rank1" in wanted:
                results["rank1"] = ex.run_rank1(cfg, dev, log)
                plots.plot_rank1(results["rank1"], run.report_dir / "d_rank1.png")
        except BaseException as exc:
            log.close()
            run.mark_failed(error_line(exc), 0)
            raise
        log.close()
        summary = {
            **run.read_summary(),
            "status": "completed",
            "kind": "toy",
            "experiment": experiment,
            "device": str(dev),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "ended": time.time(),
            "results": results,
        }
        run.write_summary(summary)
    finally:
        run.release()
    return summary


def _open_run(run: RunDir, cfg: ToyConfig, tensorboard: bool) -> tuple[RunDir, _Logger]:
    """Create and lock the run, record its config and ``running`` status; the lock stays held
    (released here only if setting up fails)."""
    run.create()
    run.acquire()
    try:
        run.config_file.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        run.mark_running(0)
        run.write_summary({**run.read_summary(), "kind": "toy"})  # what --overwrite may replace
        run.report_dir.mkdir(exist_ok=True)
        return run, _Logger(run, tensorboard)
    except BaseException:
        run.release()
        raise


def _replace_run(old: RunDir, cfg: ToyConfig, tensorboard: bool) -> tuple[RunDir, _Logger]:
    """Start the new run where the locked ``old`` is (:meth:`RunDir.replace_with`, the trainer's
    ``--overwrite`` order); ``old``'s lock is dropped whatever happens."""
    try:
        return old.replace_with(lambda original: _open_run(RunDir(original), cfg, tensorboard), "--out")
    except BaseException:
        old.release()
        raise
