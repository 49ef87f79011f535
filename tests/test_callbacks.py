"""The callback contract: callbacks see a run context, step records and a control surface, never the
trainer; each default callback works alone; ``run_step`` is the loop's public step."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import quiet, tiny_config

from smalllm import checkpoints as ckpt
from smalllm.run_record import RunDir
from smalllm.train import environment
from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord
from smalllm.train.callbacks.checkpointer import Checkpointer
from smalllm.train.callbacks.evaluator import EvaluatorCallback
from smalllm.train.callbacks.metrics_logger import MetricsLogger
from smalllm.train.callbacks.samples import SamplesCallback
from smalllm.train.trainer import TRAINER_SUMMARY_FIELDS, Trainer, default_callbacks

SHORT = ("train.max_tokens=2048", "train.device=cpu", "train.log_every=3", "eval.every_steps=4")
"""8 steps of 256 tokens; logs at 3, 6 and 8, evaluates at 0, 1, 2, 4 and 8."""

DEFAULTS = (EvaluatorCallback, MetricsLogger, Checkpointer)
SUBSETS = [c for n in range(len(DEFAULTS) + 1) for c in itertools.combinations(DEFAULTS, n)]


def test_default_callbacks_are_the_three_concerns(tmp_path: Path) -> None:
    on = [type(cb) for cb in default_callbacks(tiny_config(tmp_path / "run"))]
    off = [type(cb) for cb in default_callbacks(tiny_config(tmp_path / "run", "eval.enabled=false"))]
    unsampled = [type(cb) for cb in default_callbacks(tiny_config(tmp_path / "run", "eval.samples=0"))]
    assert on == [EvaluatorCallback, SamplesCallback, MetricsLogger, Checkpointer]
    assert unsampled == list(DEFAULTS) and off == [MetricsLogger, Checkpointer]


@pytest.mark.parametrize("kinds", SUBSETS, ids=lambda ks: "+".join(k.__name__ for k in ks) or "none")
def test_any_subset_of_the_default_callbacks_trains(
    tmp_path: Path, kinds: tuple[type[Callback], ...]
) -> None:
    """No callback needs another one: each does its own job whatever else is (not) there."""
    run = RunDir(tmp_path / "run")
    trainer = Trainer(tiny_config(run.path, *SHORT), callbacks=[k() for k in kinds], log=quiet)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert RunDir(run.path).read_summary()["status"] == "completed"
    records = run.read_metrics()

    train = [r for r in records if r["kind"] == "train"]
    if MetricsLogger in kinds:
        assert [r["step"] for r in train] == [3, 6, 8]
        # Throughput comes from the step records alone (there is no speed callback to lean on).
        assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in train)
        assert all(r["tokens"] == r["step"] * 256 for r in train)
    else:
        assert train == []

    evals = [r for r in records if r["kind"] == "eval"]
    if EvaluatorCallback in kinds:
        assert [r["step"] for r in evals] == [0, 1, 2, 4, 8]
        assert summary["eval_seconds"] > 0 and 0 < summary["eval_share"] < 1
        assert [row["task"] for row in summary["emergence"]] == ["t_cmp", "copy"]
        assert run.emergence_file.is_file() and run.eval_sets_file.is_file()
    else:
        assert evals == [] and not {"eval_seconds", "eval_share", "emergence"} & summary.keys()

    saved = ckpt.latest_checkpoint(run.checkpoints_dir)
    if Checkpointer in kinds:
        assert saved is not None and saved.name == ckpt.checkpoint_name(8)
    else:
        assert saved is None


class Recorder(Callback):
    """Uses nothing but the contract: stops at ``stop_at`` with a reason, writes its own metrics
    record, contributes a summary field, and keeps what it was told."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.context: RunContext | None = None
        self.starts = 0
        self.records: list[StepRecord] = []
        self.end: FitEnd | None = None

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        self.context = run
        self.starts += 1

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        self.records.append(record)
        if record.step == self.stop_at:
            control.write_metrics({"kind": "custom", "step": record.step, "lr": record.lr})
            control.request_stop(f"recorder at {record.step}")
            control.request_stop("a second reason does not replace the first")

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        self.end = end
        control.add_summary(recorded_steps=len(self.records))


def test_a_custom_callback_stops_the_run_and_adds_to_the_summary(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", *SHORT)
    recorder = Recorder(stop_at=5)
    trainer = Trainer(cfg, callbacks=[recorder, *default_callbacks(cfg)], log=quiet)
    summary = trainer.fit()

    assert summary["status"] == "interrupted" and summary["steps"] == 5
    assert summary["recorded_steps"] == 5 and RunDir(cfg.run_dir).read_summary()["recorded_steps"] == 5
    # The stop acts like SIGTERM: the checkpointer saves the step it happened at.
    saved = ckpt.latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
    assert saved is not None and saved.name == ckpt.checkpoint_name(5)
    custom = [r for r in RunDir(cfg.run_dir).read_metrics() if r["kind"] == "custom"]
    assert custom == [{"kind": "custom", "step": 5, "lr": recorder.records[4].lr}]

    run = recorder.context
    assert run is not None and recorder.starts == 1
    assert (run.total_steps, run.start_step, run.resumed, run.is_main, run.world) == (8, 0, False, True, 1)
    assert [str(label) for label in run.labels][:1] == ["background"] and len(run.labels) > 2
    assert run.run_dir.path == Path(cfg.run_dir) and run.plan.tokens_per_step == 256
    assert [r.step for r in recorder.records] == [1, 2, 3, 4, 5]
    assert [r.tokens for r in recorder.records] == [256 * k for k in range(1, 6)]
    first = recorder.records[0]
    assert first.loss.ndim == 0 and torch.isfinite(first.loss) and first.grad_norm > 0 and not first.skipped
    assert first.label_loss.shape == first.label_count.shape == (len(run.labels),)
    assert first.label_count.sum() > 0 and first.step_time > 0
    assert recorder.end == FitEnd(
        status="interrupted",
        step=5,
        tokens=1280,
        error=None,
        stop_reason="recorder at 5",
        wall_seconds=recorder.end.wall_seconds,
    )


def test_the_trainers_own_summary_fields_are_refused(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path / "run", *SHORT), callbacks=[], log=quiet)
    with pytest.raises(ValueError, match="status, steps are written by the trainer"):
        trainer.control.add_summary(steps=1, status="completed", note="kept out too")
    summary = trainer.fit()
    assert summary["status"] == "completed" and "note" not in summary
    assert summary["training_forward"] == "lean"  # one process, not compiled (tests/test_model_forward.py)
    assert {"status", "steps", "tokens", "wall_seconds", "frequencies"} <= TRAINER_SUMMARY_FIELDS


def test_startup_is_the_first_runs_of_a_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "_started_a_run", False)  # as if this were a fresh process
    first = Trainer(tiny_config(tmp_path / "a", *SHORT), callbacks=[], log=quiet).fit()
    second = Trainer(tiny_config(tmp_path / "b", *SHORT), callbacks=[], log=quiet).fit()
    if sys.platform == "linux":
        # From the process's start: this test process has been running longer than the fit.
        assert first["startup_seconds"] > first["wall_seconds"] > 0
    # A later run in the same process did not wait for it to start.
    assert second["startup_seconds"] is None


def test_run_step_is_the_loop_step_and_fit_continues_after_it(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", *SHORT)
    recorder = Recorder(stop_at=-1)
    trainer = Trainer(cfg, callbacks=[recorder, MetricsLogger()], log=quiet)
    trainer.open_run()
    first = trainer.run_step()
    second = trainer.run_step()
    assert (first.step, first.tokens, second.step) == (1, 256, 2) and recorder.records == [first, second]
    assert recorder.starts == 1  # run_step began the loop; fit does not begin it twice
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] == 8 and recorder.starts == 1
    assert [r.step for r in recorder.records] == list(range(1, 9))
    assert [r["step"] for r in RunDir(cfg.run_dir).read_metrics()] == [3, 6, 8]


MATPLOTLIB_PROBE = """
import sys
from conftest import quiet, tiny_config
from smalllm.cli import main
from smalllm.train.trainer import train

run = sys.argv[1]
summary = train(tiny_config(run + "/a", "train.max_tokens=1024", "logging.tensorboard=true"), log=quiet)
assert summary["status"] == "completed", summary
assert main(["train", f"run_dir={run}/b", *sys.argv[2:]]) == 0
loaded = sorted(m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib."))
print("loaded:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_training_does_not_import_matplotlib(tmp_path: Path) -> None:
    """Plots are drawn by ``smalllm report``: neither ``train()`` nor ``smalllm train`` pays for
    matplotlib, nor draws anything in the training process."""
    from conftest import TINY_OVERRIDES, TINY_TASKS

    env = dict(os.environ)
    tests = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH", "")) if p)
    argv = [*TINY_OVERRIDES, *TINY_TASKS, "train.max_tokens=1024", "train.device=cpu"]
    result = subprocess.run(
        [sys.executable, "-c", MATPLOTLIB_PROBE, str(tmp_path), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout


def tensorboard_scalars(run_dir):
    """The event accumulator of the run's scalars file (the hparams summary has a file of its own)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in RunDir(run_dir).tracker_dir.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "loss" in acc.Tags()["scalars"]:
            return acc
    return None


def test_tensorboard_holds_every_record_of_metrics_jsonl(tmp_path):
    # The trainer writes one TensorBoard event per record (not accelerate's one per scalar and a
    # flush), handed to the writer in batches: the event file must still hold every number of every
    # record, at its step.
    cfg = tiny_config(tmp_path / "run", "logging.tensorboard=true", "eval.enabled=false")
    Trainer(cfg, log=quiet).fit()
    records = [r for r in RunDir(cfg.run_dir).read_metrics() if r["kind"] == "train"]
    acc = tensorboard_scalars(cfg.run_dir)
    for key in ("loss", "lr", "grad_norm", "train/t_cmp/loss"):
        logged = {e.step: e.value for e in acc.Scalars(key)}
        expected = {r["step"]: r[key] for r in records if key in r}
        assert expected and logged.keys() == expected.keys()
        assert all(logged[s] == pytest.approx(v, rel=1e-6) for s, v in expected.items())


def test_a_failed_run_still_writes_its_pending_tensorboard_events(tmp_path, monkeypatch):
    from smalllm.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "TENSORBOARD_BATCH", 10**6)  # nothing handed over on the way
    monkeypatch.setattr(trainer_mod, "TENSORBOARD_FLUSH_S", 10**6)

    class Fail(Callback):
        def on_step_end(self, record, control):
            if record.step == 6:
                raise RuntimeError("boom")

    cfg = tiny_config(tmp_path / "run", "logging.tensorboard=true", "eval.enabled=false", "train.log_every=2")
    with pytest.raises(Exception, match="boom"):
        Trainer(cfg, callbacks=[*default_callbacks(cfg), Fail()], log=quiet).fit()
    steps = [r["step"] for r in RunDir(cfg.run_dir).read_metrics() if r["kind"] == "train"]
    assert steps == [2, 4, 6]
    assert [e.step for e in tensorboard_scalars(cfg.run_dir).Scalars("loss")] == steps


def test_process_age_is_read_from_proc_and_grows() -> None:
    if sys.platform != "linux":
        assert environment.process_age_seconds() is None or environment.process_age_seconds() >= 0
        return
    first = environment.process_age_seconds()
    time.sleep(0.05)
    second = environment.process_age_seconds()
    assert first is not None and second is not None and 0 < first <= second
