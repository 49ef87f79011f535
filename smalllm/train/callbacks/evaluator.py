"""Held-out evaluation during training on a log-spaced-then-periodic schedule, timed so the run can
report what share of its wall time went to evaluation; emergence summary at the end."""

from __future__ import annotations

import time

from smalllm.data.eval_sets import save_eval_sets
from smalllm.eval.emergence import emergence_table, format_emergence_table
from smalllm.eval.evaluator import evaluate
from smalllm.eval.schedule import eval_steps
from smalllm.run_record import atomic_write_json
from smalllm.train.callbacks.base import Callback


class EvaluatorCallback(Callback):
    def __init__(self) -> None:
        self.steps: set[int] = set()
        self.evaluated_step: int | None = None
        """The last step evaluated; saved in checkpoints so a resumed run neither repeats nor skips one."""
        self.restored = False

    def state_dict(self, trainer) -> dict:
        return {"evaluated_step": -1 if self.evaluated_step is None else self.evaluated_step}

    def load_state_dict(self, trainer, state: dict) -> None:
        self.evaluated_step = int(state["evaluated_step"])
        self.restored = True

    def on_fit_start(self, trainer) -> None:
        cfg = trainer.cfg.eval
        self.steps = set(eval_steps(trainer.total_steps, cfg, trainer.plan.tokens_per_step))
        self.sets = trainer.stream.eval_sets()
        self.background = trainer.stream.background_holdout(cfg.background_sequences)
        if trainer.is_main and not trainer.run.eval_sets_file.exists():
            save_eval_sets(self.sets, trainer.run.eval_sets_file, self.background)
        # A checkpoint without this callback's state (older runs): a resumed step was evaluated before.
        done = self.evaluated_step == trainer.step if self.restored else trainer.resumed
        if trainer.step in self.steps and not done:
            self._run(trainer)

    def on_step_end(self, trainer, metrics: dict) -> None:
        if trainer.step in self.steps:
            self._run(trainer)

    def _run(self, trainer) -> None:
        t0 = time.perf_counter()
        acc = trainer.accelerator
        model = acc.unwrap_model(trainer.model)
        with acc.autocast():
            results = evaluate(
                model,
                self.sets,
                self.background,
                batch_size=trainer.cfg.eval.batch_size,
                pad_id=trainer.tokenizer.pad_token_id,
            )
        trainer.eval_seconds += time.perf_counter() - t0
        self.evaluated_step = trainer.step
        trainer.write_record(
            {"kind": "eval", "step": trainer.step, "tokens": trainer.tokens, "time": time.time(), **results}
        )

    def on_fit_end(self, trainer) -> None:
        final = trainer.step not in self.steps and self.evaluated_step != trainer.step
        if trainer.status == "completed" and final:
            self._run(trainer)  # on every process: under FSDP the forward pass is collective
        if not trainer.is_main:
            return
        records = [r for r in trainer.run.read_metrics() if r.get("kind") == "eval"]
        rows = emergence_table(records, trainer.cfg.eval)
        share = trainer.eval_seconds / max(1e-9, trainer.wall_seconds)
        trainer.extra_summary = {"emergence": rows}
        trainer.info("\n" + format_emergence_table(rows))
        trainer.info(
            f"evaluation took {trainer.eval_seconds:.1f} s of {trainer.wall_seconds:.1f} s wall time ({share:.1%})"
        )
        atomic_write_json(trainer.run.emergence_file, rows)
