"""Periodic, final and on-stop checkpoints (SIGTERM/SIGINT or a stop request: save, then stop cleanly)."""

from __future__ import annotations

from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord


class Checkpointer(Callback):
    def __init__(self) -> None:
        self.saved_step = -1
        self.every = 0
        self.run_path = ""

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        self.every = run.train.checkpoint_every
        self.run_path = str(run.run_dir.path)
        if run.start_step > 0:
            # Resumed: that step's checkpoint is on disk; rewriting it would risk the only copy.
            self.saved_step = run.start_step

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if (self.every and record.step % self.every == 0) or control.stop_reason is not None:
            self._save(record.step, control)

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        if end.error is not None:
            # Never checkpoint a diverged state, nor one an exception may have left half-updated
            # (mid-step): the last good checkpoint stays the latest.
            return
        self._save(end.step, control)
        if end.status == "interrupted":
            control.log(
                f"stopped by {end.stop_reason} at step {end.step}; checkpoint saved. "
                f"Continue with: smalllm train --resume run_dir={self.run_path}"
            )

    def _save(self, step: int, control: Control) -> None:
        if self.saved_step == step:
            return
        control.save_checkpoint()
        self.saved_step = step
