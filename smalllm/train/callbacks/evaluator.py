"""Held-out evaluation during training on a log-spaced-then-periodic schedule, timed so the run can
report what share of its wall time went to evaluation; emergence summary at the end."""

from __future__ import annotations

import time

import numpy as np

from smalllm.data.eval_sets import TaskEvalSet, save_eval_sets
from smalllm.eval.baselines import (
    FIT_SAMPLE,
    check_criterion_applies,
    check_threshold,
    compute_baselines,
    write_baselines,
)
from smalllm.eval.emergence import emergence_table, format_emergence_table
from smalllm.eval.schedule import eval_steps
from smalllm.run_record import atomic_write_json
from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord


class EvaluatorCallback(Callback):
    """Contributes ``eval_seconds``, ``eval_share`` and (main process) ``emergence`` to the summary."""

    def __init__(self) -> None:
        self.steps: set[int] = set()
        self.evaluated_step: int | None = None
        """The last step evaluated; saved in checkpoints so a resumed run neither repeats nor skips one."""
        self.restored = False
        self.seconds = 0.0
        self.sets: list[TaskEvalSet] = []
        self.background: np.ndarray | None = None
        self.run: RunContext | None = None

    def state_dict(self, run: RunContext) -> dict:
        return {"evaluated_step": -1 if self.evaluated_step is None else self.evaluated_step}

    def load_state_dict(self, state: dict, run: RunContext) -> None:
        self.evaluated_step = int(state["evaluated_step"])
        self.restored = True

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        cfg = run.eval
        self.run = run
        self.steps = set(eval_steps(run.total_steps, cfg, run.plan.tokens_per_step))
        self.sets = run.eval_sets()
        self.background = run.background_holdout(cfg.background_sequences)
        # Baselines first: a criterion that chance or a one-token rule already meets is refused
        # before any evaluation (on every process alike, so all of them stop together).
        fit = run.fit_instances(FIT_SAMPLE) if run.fit_instances is not None else [[] for _ in self.sets]
        baselines = compute_baselines(self.sets, fit)
        check_threshold(baselines, cfg.criterion)
        check_criterion_applies(self.sets, cfg.criterion)
        if run.is_main and not run.run_dir.eval_sets_file.exists():
            save_eval_sets(self.sets, run.run_dir.eval_sets_file, self.background)
        if run.is_main and not run.run_dir.baselines_file.exists():
            write_baselines(run.run_dir.baselines_file, baselines)
        # A checkpoint without this callback's state (older runs): a resumed step was evaluated before.
        done = self.evaluated_step == run.start_step if self.restored else run.resumed
        if run.start_step in self.steps and not done:
            self._run(run.start_step, run.start_tokens, control)

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if record.step in self.steps:
            self._run(record.step, record.tokens, control)

    def _run(self, step: int, tokens: int, control: Control) -> None:
        t0 = time.perf_counter()
        results = control.evaluate(self.sets, self.background, self.run.eval)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.evaluated_step = step
        control.write_metrics(
            {
                "kind": "eval",
                "step": step,
                "tokens": tokens,
                "time": time.time(),
                "eval_s": seconds,
                **results,
            }
        )

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        if self.run is None:  # an earlier callback's start failed before this one started
            return
        final = end.step not in self.steps and self.evaluated_step != end.step
        if end.status == "completed" and final:
            self._run(
                end.step, end.tokens, control
            )  # on every process: under FSDP the forward pass is collective
        share = self.seconds / max(1e-9, end.wall_seconds)
        control.add_summary(eval_seconds=self.seconds, eval_share=share)
        if not self.run.is_main:
            return
        records = [r for r in self.run.run_dir.read_metrics() if r.get("kind") == "eval"]
        rows = emergence_table(records, self.run.eval)
        control.add_summary(emergence=rows)
        control.log("\n" + format_emergence_table(rows))
        control.log(
            f"evaluation took {self.seconds:.1f} s of {end.wall_seconds:.1f} s wall time ({share:.1%})"
        )
        atomic_write_json(self.run.run_dir.emergence_file, rows)
