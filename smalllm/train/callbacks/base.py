"""Callback protocol: each concern of the training loop (speed, evaluation, checkpoints, logging)
lives in its own callback file and sees the trainer only through these hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smalllm.train.trainer import Trainer


class Callback:
    """No-op hooks; override the ones you need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resume: before the first new step)."""

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        """After optimizer step ``trainer.step`` (already incremented); ``metrics`` may be extended."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step, or when training stops early (signal, divergence, failure):
        ``trainer.status`` says which."""

    def state_dict(self, trainer: Trainer) -> dict | None:
        """What a resumed run needs to continue exactly (saved in the checkpoint), or None.

        Called on every process when a checkpoint is written, so it may gather across processes.
        """
        return None

    def load_state_dict(self, trainer: Trainer, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, before ``on_fit_start`` of the resumed run."""
