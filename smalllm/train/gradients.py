"""Gradients for measurements, taken with ``torch.autograd.grad`` so nothing the trainer owns moves:
no parameter's ``.grad``, no optimizer state, no weights (the caller keeps the RNG state).

* :func:`split_gradients`: the batch gradient split by which targets it comes from, g = g_t + g_nt;
  one forward and two backward passes per micro-batch (one when the micro-batch holds no task token);
* :func:`reference_gradient`: the summed gradient of a task's answer-token loss over given
  instances; one forward and one backward pass per batch of instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from smalllm.tasks.base import Instance
from smalllm.train.loss import IGNORE, target_mask, to_device, token_losses


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor], retain: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _add(into: list[torch.Tensor] | None, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    if into is None:
        return grads
    for acc, g in zip(into, grads, strict=True):
        acc.add_(g)
    return into


def split_gradients(
    model: torch.nn.Module,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    accumulation: int,
    params: Sequence[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(g_t, g_nt) per parameter of ``params``: the gradients of the task-token part and of the rest of
    the trainer's batch loss, so that g_t + g_nt is the gradient the trainer's step computes.

    ``micro_batches`` yields ``(input_ids [b, L], targets [b, L], task [b, L-1])``, targets as the
    trainer builds them (:mod:`smalllm.train.loss`) and ``task`` a host mask of the targets that count as
    task tokens. The normalisation is the trainer's: each micro-batch's loss is the mean over its
    targets, divided by ``accumulation``. One forward pass per micro-batch, then a backward pass for
    each part (the graph is kept for the second); a part without tokens costs no pass.
    """
    g_t: list[torch.Tensor] | None = None
    g_nt: list[torch.Tensor] | None = None

    def zeros() -> list[torch.Tensor]:  # made only for a part that has no tokens
        return [torch.zeros_like(p) for p in params]

    for ids, targets, task in micro_batches:
        logits = model(input_ids=ids).logits
        flat = targets.flatten()
        token_loss = token_losses(logits, targets)
        scale = 1.0 / (accumulation * (flat != IGNORE).sum())
        on_task = to_device(target_mask(task).reshape(-1), ids.device)
        has_task, has_other = bool(task.any()), not bool(task.all())
        part_t = (token_loss * on_task).sum() * scale
        part_nt = (token_loss * ~on_task).sum() * scale
        t = _grads(part_t, params, retain=has_other) if has_task else zeros()
        nt = _grads(part_nt, params, retain=False) if has_other else zeros()
        g_t, g_nt = _add(g_t, t), _add(g_nt, nt)
    if g_t is None or g_nt is None:
        return zeros(), zeros()
    return g_t, g_nt


def reference_gradient(
    model: torch.nn.Module,
    instances: Sequence[Instance],
    params: Sequence[torch.Tensor],
    *,
    prefix: Sequence[int] = (),
    batch_tokens: int,
) -> tuple[list[torch.Tensor], int]:
    """(the gradient of the *summed* answer-token loss of ``instances``, the number of answer tokens).

    Each instance is its own row ``prefix + prompt + answer`` (as the evaluator scores it); only the
    answer tokens are targets. Rows are grouped by length, so no row is padded, at most
    ``batch_tokens`` tokens per forward pass (always at least one row). The sum, not the mean, so that
    shares computed on several processes add up before the one division by the total count.
    """
    device = next(model.parameters()).device
    total: list[torch.Tensor] | None = None
    count = 0
    by_length: dict[int, list[Instance]] = {}
    for inst in instances:
        by_length.setdefault(len(prefix) + len(inst.prompt) + len(inst.answer), []).append(inst)
    for length in sorted(by_length):
        group = by_length[length]
        rows = max(1, batch_tokens // max(length - 1, 1))
        for start in range(0, len(group), rows):
            chunk = group[start : start + rows]
            seqs = np.array([[*prefix, *inst.prompt, *inst.answer] for inst in chunk], dtype=np.int64)
            targets = np.full((len(chunk), length - 1), IGNORE, dtype=np.int64)
            for r, inst in enumerate(chunk):
                first = len(prefix) + len(inst.prompt) - 1  # the position that predicts answer[0]
                targets[r, first : first + len(inst.answer)] = inst.answer
            ids = torch.from_numpy(seqs[:, :-1]).to(device)
            logits = model(input_ids=ids).logits
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(),
                torch.from_numpy(targets).to(device).flatten(),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total = _add(total, _grads(loss, params, retain=False))
            count += int((targets != IGNORE).sum())
    if total is None:
        return [torch.zeros_like(p) for p in params], 0
    return total, count
