"""Periodic, final and on-signal checkpoints (SIGTERM/SIGINT: save, then stop cleanly)."""

from __future__ import annotations

from smalllm.train.callbacks.base import Callback


class Checkpointer(Callback):
    def __init__(self) -> None:
        self.saved_step = -1

    def on_fit_start(self, trainer) -> None:
        if (
            trainer.step > 0
        ):  # resumed: that step's checkpoint is on disk; rewriting it would risk the only copy
            self.saved_step = trainer.step

    def on_step_end(self, trainer, metrics: dict) -> None:
        every = trainer.cfg.train.checkpoint_every
        if (every and trainer.step % every == 0) or trainer.stop_requested is not None:
            self._save(trainer)

    def on_fit_end(self, trainer) -> None:
        if trainer.error is not None:
            # Never checkpoint a diverged state, nor one an exception may have left half-updated
            # (mid-step): the last good checkpoint stays the latest.
            return
        self._save(trainer)
        if trainer.status == "interrupted":
            trainer.info(
                f"stopped by {trainer.stop_requested} at step {trainer.step}; checkpoint saved. "
                f"Continue with: smalllm train --resume run_dir={trainer.run_dir}"
            )

    def _save(self, trainer) -> None:
        if self.saved_step == trainer.step:
            return
        trainer.save()
        self.saved_step = trainer.step
