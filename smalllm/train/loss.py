"""The training loss of rows of token ids: next-token cross-entropy at the targets the loss mask keeps.

Targets are laid out like the ids, ``[b, L]``: position ``j`` predicts token ``j + 1``, and the last
position has no target (``IGNORE``, as has every position outside the loss mask). The logits are
used whole: slicing off the last position, ``logits[:, :-1]``, would copy them in the forward and
again in the backward (about 1 ms of a 38 ms micro-w32 step on the CPU, more at a large vocabulary).
The trainer's step and the gradient split of :mod:`smalllm.train.gradients` both compute their loss
with these (the split through the model's own forward, the step where it can through the lean one,
which the trainer checks gives the same logits).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100
"""The target of a position without one (cross-entropy's ``ignore_index``)."""


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without waiting for the device (a blocking copy syncs the stream)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def next_token_targets(ids: torch.Tensor, loss_mask: np.ndarray) -> torch.Tensor:
    """Targets ``[b, L]`` of rows ``ids`` ``[b, L]``: the next token, or ``IGNORE`` at the last position
    and wherever ``loss_mask`` (host, ``[b, L]``, the tokens that count as targets) is False."""
    targets = F.pad(ids[:, 1:], (0, 1), value=IGNORE)
    if loss_mask[:, 1:].all():  # packed rows have no padding: only the last position is ignored
        return targets
    return targets.masked_fill(~to_device(target_mask(loss_mask[:, 1:]), ids.device), IGNORE)


def target_mask(per_target: np.ndarray) -> np.ndarray:
    """A host array over the targets, ``[b, L-1]``, laid out like the targets ``[b, L]`` (the last
    column False/0)."""
    return np.pad(per_target, ((0, 0), (0, 1)))


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (fp32) of every position, flattened to ``[b * L]``; 0 where the target is
    ``IGNORE``. A step's loss is their sum over the number of targets, which the host knows from the
    loss mask."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none"
    )
