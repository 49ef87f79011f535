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
from smalllm.run_record import atomic_write_json
from smalllm.train.callbacks.base import Control, FitEnd, RunContext
from smalllm.train.callbacks.on_eval_steps import OnEvalSteps


class EvaluatorCallback(OnEvalSteps):
    """Contributes ``eval_seconds``, ``eval_share`` and (main process) ``emergence`` to the summary."""

    STATE_KEY = "evaluated_step"

    def __init__(self) -> None:
        super().__init__()
        self.sets: list[TaskEvalSet] = []
        self.background: np.ndarray | None = None

    def prepare(self, run: RunContext, control: Control) -> None:
        cfg = run.eval
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

    def act(self, step: int, tokens: int, control: Control) -> None:
        t0 = time.perf_counter()
        results = control.evaluate(self.sets, self.background, self.run.eval)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
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
        # The final evaluation runs on every process: under FSDP the forward pass is collective.
        if not self.act_at_end(end, control):
            return
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
