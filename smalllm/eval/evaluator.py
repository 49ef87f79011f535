"""Held-out evaluation: answer-token loss, exact match and background loss.

Everything is computed from teacher-forced forward passes over ``prompt + answer``. Exact match of
greedy decoding needs no generation loop: greedy decoding emits ``answer`` exactly iff, at every
answer position ``i``, the argmax of the model given ``prompt + answer[:i]`` is ``answer[i]``. If
that holds for all ``i``, greedy decoding walks through exactly those prefixes and emits the answer;
if it fails first at ``i``, greedy decoding has followed the answer up to ``i`` (so it saw exactly the
teacher-forced prefix there) and then emits a different token. The teacher-forced argmax at each
answer position therefore decides exact match exactly, for a whole batch in one pass.
:func:`greedy_generate` (``model.generate`` with a KV cache) exists to check that equivalence.

Ties in the argmax are broken towards the lower token id in both paths (``torch.argmax`` and the
greedy search of ``transformers``); the two paths can still disagree on a near-tie when the cached
and uncached kernels round differently, which random-initialised and trained models essentially
never hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from smalllm.data.eval_sets import TaskEvalSet
from smalllm.labels import BACKGROUND, Label
from smalllm.tasks.base import Instance

LOG2E = 1.0 / math.log(2.0)


@dataclass
class InstanceScores:
    """Per-instance results of one teacher-forced pass, in the order of the instances given."""

    loss_sum: np.ndarray
    """Summed answer-token loss in nats, float64 [n]."""
    num_tokens: np.ndarray
    """Answer tokens, int64 [n]."""
    num_correct: np.ndarray
    """Answer tokens whose teacher-forced argmax is right, int64 [n]."""
    token_losses: list[np.ndarray]
    """Loss of each answer token, per instance (float64 arrays)."""

    @property
    def exact(self) -> np.ndarray:
        """Greedy decoding reproduces the whole answer (bool [n]); see the module docstring."""
        return self.num_correct == self.num_tokens


def _device_of(model: torch.nn.Module) -> torch.device:
    # Stand-in models in tests may have no parameters at all.
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits if hasattr(out, "logits") else out
    # Under the caller's autocast logits may be bf16/fp16; log-softmax in fp32 keeps the loss exact enough.
    return logits.float()


@torch.no_grad()
def score_instances(
    model: Any, instances: Sequence[Instance], batch_size: int, pad_id: int
) -> InstanceScores:
    """Answer-token losses and teacher-forced argmax hits of each instance (no train/eval switching).

    Instances are sorted by length and batched right-padded with an attention mask, so the real tokens
    keep their positions and padding only ever follows them (a causal model never attends to it).
    """
    n = len(instances)
    loss_sum = np.zeros(n, dtype=np.float64)
    num_tokens = np.zeros(n, dtype=np.int64)
    num_correct = np.zeros(n, dtype=np.int64)
    token_losses: list[np.ndarray] = [np.zeros(0)] * n
    for inst in instances:
        if not inst.prompt or not inst.answer:
            raise ValueError(f"evaluation needs a non-empty prompt and answer, got {inst}")
    device = _device_of(model)
    lengths = np.array([len(x.prompt) + len(x.answer) for x in instances], dtype=np.int64)
    # Sorting by length makes each batch nearly rectangular: little padding, little wasted compute.
    order = np.argsort(lengths, kind="stable")
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        # Rows/columns of the logits that predict answer tokens, and the tokens they should predict.
        rows: list[int] = []
        cols: list[int] = []
        targets: list[int] = []
        for r, i in enumerate(idx):
            inst = instances[i]
            seq = inst.prompt + inst.answer
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
            p = len(inst.prompt)
            rows.extend([r] * len(inst.answer))
            cols.extend(range(p - 1, p - 1 + len(inst.answer)))  # logits at t predict token t+1
            targets.extend(inst.answer)
        input_ids = torch.from_numpy(ids).to(device)
        attention_mask = torch.from_numpy(mask).to(device)
        logits = _logits(model, input_ids, attention_mask)
        # Only the answer positions are normalised: far cheaper than a log-softmax over every position.
        picked = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        tgt = torch.tensor(targets, device=device)
        tok_loss = F.cross_entropy(picked, tgt, reduction="none").double().cpu().numpy()
        hit = (picked.argmax(dim=-1) == tgt).cpu().numpy()
        offset = 0
        for i in idx:
            k = len(instances[i].answer)
            seg = tok_loss[offset : offset + k]
            token_losses[i] = seg
            loss_sum[i] = seg.sum()
            num_tokens[i] = k
            num_correct[i] = int(hit[offset : offset + k].sum())
            offset += k
    return InstanceScores(loss_sum, num_tokens, num_correct, token_losses)


@torch.no_grad()
def background_loss(model: Any, background: np.ndarray, batch_size: int) -> float:
    """Mean next-token loss (nats) over every position of held-out background sequences.

    The sequences are full windows of real text, so there is no padding and no mask; EOD tokens inside
    them are ordinary targets.
    """
    data = np.asarray(background, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"background must be [n_seq, seq_len>=2] token ids, got shape {data.shape}")
    device = _device_of(model)
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        ids = torch.from_numpy(data[start : start + batch_size]).to(device)
        logits = _logits(model, ids, torch.ones_like(ids))
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += ids[:, 1:].numel()
    return total / max(count, 1)


TASK_METRICS = ("loss", "loss_bits", "loss_ratio", "acc", "token_acc")
"""What :func:`task_metrics` reports for a task as a whole."""
SKILL_METRICS = ("loss", "loss_ratio", "acc", "token_acc")
"""What it reports for each sub-skill of a family."""


def _summarise(
    label: Label,
    metrics: Sequence[str],
    scores: InstanceScores,
    ratio_sum: np.ndarray,
    ratio_tokens: np.ndarray,
    sel: np.ndarray,
) -> dict[str, float]:
    """Token-weighted loss/ratio and instance-level accuracy over the selected instances."""
    tokens = int(scores.num_tokens[sel].sum())
    loss = float(scores.loss_sum[sel].sum()) / tokens
    rt = int(ratio_tokens[sel].sum())
    values = {
        "loss": loss,
        "loss_bits": loss * LOG2E,
        "loss_ratio": float(ratio_sum[sel].sum()) / rt if rt else float("nan"),
        "acc": float(scores.exact[sel].mean()),
        "token_acc": float(scores.num_correct[sel].sum()) / tokens,
    }
    return {label.key(m): values[m] for m in metrics}


def task_metrics(eval_set: TaskEvalSet, scores: InstanceScores) -> dict[str, float]:
    """Flat ``eval/{task}/...`` metrics of one task from its instance scores.

    ``loss`` and ``loss_ratio`` are both means over all answer tokens of the task: each token's loss is
    divided by the chance loss of its own sub-skill, so a family mixing easy-to-guess and hard-to-guess
    sub-skills is on one consistent scale (1.0 = chance everywhere). Accuracy is per instance.
    Sub-skills without instances get no keys; sub-skill keys appear only when the task has several.
    """
    skills = np.array([x.skill for x in eval_set.instances], dtype=np.int64)
    chance = np.asarray(eval_set.chance_loss, dtype=np.float64)
    if len(chance) != len(eval_set.skills):
        raise ValueError(f"{eval_set.task}: {len(eval_set.skills)} skills but {len(chance)} chance losses")
    if len(skills) and (skills.min() < 0 or skills.max() >= len(chance)):
        raise ValueError(f"{eval_set.task}: instance skill index outside 0..{len(chance) - 1}")
    inst_chance = chance[skills] if len(skills) else np.zeros(0)
    # A sub-skill with a single valid answer has chance loss 0: no ratio is defined for its tokens.
    valid = inst_chance > 0
    ratio_sum = np.where(valid, scores.loss_sum / np.where(valid, inst_chance, 1.0), 0.0)
    ratio_tokens = np.where(valid, scores.num_tokens, 0)
    out: dict[str, float] = {}
    if not len(skills):
        return out
    everything = np.ones(len(skills), dtype=bool)
    out.update(_summarise(Label(eval_set.task), TASK_METRICS, scores, ratio_sum, ratio_tokens, everything))
    if len(eval_set.skills) > 1:
        for s, name in enumerate(eval_set.skills):
            sel = skills == s
            if sel.any():
                label = Label(eval_set.task, name)
                out.update(_summarise(label, SKILL_METRICS, scores, ratio_sum, ratio_tokens, sel))
    return out


def evaluate(
    model: Any,
    eval_sets: list[TaskEvalSet],
    background: np.ndarray | None,
    batch_size: int,
    pad_id: int,
) -> dict[str, float]:
    """Evaluate ``model`` on held-out task instances and background text; return flat metrics.

    Keys: ``eval/{task}/loss`` (nats per answer token), ``loss_bits``, ``loss_ratio`` (loss over chance,
    per token), ``acc`` (exact match of greedy decoding), ``token_acc``; per sub-skill of a family
    ``eval/{task}/{skill}/loss|loss_ratio|acc|token_acc``; and ``eval/background/loss`` when
    ``background`` is given. The model runs in eval mode without gradients on its own device and is
    put back in its previous mode; no autocast is added (the caller's, if any, applies).
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    metrics: dict[str, float] = {}
    try:
        with torch.no_grad():
            for es in eval_sets:
                if not es.instances:
                    continue
                scores = score_instances(model, es.instances, batch_size, pad_id)
                metrics.update(task_metrics(es, scores))
            if background is not None and len(background):
                metrics[BACKGROUND.key("loss")] = background_loss(model, background, batch_size)
    finally:
        model.train(was_training)
    return metrics


@torch.no_grad()
def greedy_generate(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int | None = None
) -> list[tuple[int, ...]]:
    """Greedy continuations of ``prompts`` with ``model.generate`` (KV cache, left padding).

    Returns exactly ``max_new_tokens`` new tokens per prompt: end-of-document does not stop decoding,
    so the output is comparable with any answer. Slow compared with :func:`score_instances`; it is the
    reference that the teacher-forced exact match is tested against.
    """
    if pad_id is None:
        pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    device = _device_of(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        # Left padding: every prompt ends at the last column, where generation continues.
        ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p) :] = 1
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=None,  # never stop early: an answer may contain the EOD id
        )
    finally:
        model.train(was_training)
    new = out[:, width:].cpu().tolist()
    return [tuple(int(t) for t in row) for row in new]
