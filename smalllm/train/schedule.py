"""Learning-rate schedules as pure functions of the step (so resume needs only the step)."""

from __future__ import annotations

import math

from smalllm.train.config import TrainConfig


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    warmup = int(round(cfg.warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay = max(1, int(round(cfg.decay_fraction * total_steps)))
        decay_start = total_steps - decay
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay)
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, (step - warmup + 1) / max(1, total_steps - warmup))
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
