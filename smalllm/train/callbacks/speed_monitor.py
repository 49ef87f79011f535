"""Throughput and model FLOPs utilisation, measured over training steps only (no eval, no saves)."""

from __future__ import annotations

from smalllm.train.callbacks.base import Callback


class SpeedMonitor(Callback):
    """Adds ``tokens_per_s``, ``mfu`` and ``eta_s`` to the step metrics (window = since last log)."""

    def __init__(self) -> None:
        self.window_time = 0.0
        self.window_steps = 0

    def on_step_end(self, trainer, metrics: dict) -> None:
        self.window_time += metrics["step_time"]
        self.window_steps += 1
        plan = trainer.plan
        tokens_per_s = plan.tokens_per_step * self.window_steps / max(self.window_time, 1e-9)
        metrics["tokens_per_s"] = tokens_per_s
        metrics["mfu"] = plan.flops_per_token * tokens_per_s / (plan.peak_flops * plan.world)
        metrics["eta_s"] = (trainer.total_steps - trainer.step) * self.window_time / self.window_steps
        if trainer.step % trainer.cfg.train.log_every == 0:
            self.window_time, self.window_steps = 0.0, 0
