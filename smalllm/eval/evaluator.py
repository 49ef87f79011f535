"""Held-out evaluation: answer-token loss, exact match and background loss.

Everything is computed from teacher-forced forward passes over ``prefix + prompt + answer`` (the
prefix, usually empty, puts the task where training put it; see ``TaskEvalSet.prefix``); the prefix
and prompt are the context of greedy decoding below. Exact match of greedy decoding needs no
generation loop: greedy decoding emits ``answer`` exactly iff, at every answer position ``i``, the
argmax of the model given ``prefix + prompt + answer[:i]`` is ``answer[i]``. If
that holds for all ``i``, greedy decoding walks through exactly those prefixes and emits the answer;
if it fails first at ``i``, greedy decoding has followed the answer up to ``i`` (so it saw exactly the
teacher-forced prefix there) and then emits a different token. The teacher-forced argmax at each
answer position therefore decides exact match exactly, for a whole batch in one pass.
:func:`greedy_generate` (``model.generate`` with a KV cache) exists to check that equivalence.

The same argument, with the argmax restricted to the task's answer set, makes ``choice_acc`` the exact
match of greedy decoding constrained to that set. Leaving the last answer token out of the forward
pass, and computing shared leading columns once (:func:`_shared_head_logits`), changes none of this:
a causal model's logits at a position depend only on the tokens up to it.

Ties in the argmax are broken towards the lower token id in both paths (``torch.argmax`` and the
greedy search of ``transformers``); the two paths can still disagree on a near-tie when the cached
and uncached kernels round differently, which random-initialised and trained models essentially
never hit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
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
    choice_loss_sum: np.ndarray | None = None
    """Summed answer-token loss with the softmax restricted to the answer set, float64 [n]; None when
    no answer sets were given (NaN for an instance whose sub-skill has none)."""
    choice_correct: np.ndarray | None = None
    """Answer tokens whose argmax restricted to the answer set is right, int64 [n]."""
    label_mass_sum: np.ndarray | None = None
    """Summed probability the model puts on the answer set at the answer positions, float64 [n]."""

    @property
    def exact(self) -> np.ndarray:
        """Greedy decoding reproduces the whole answer (bool [n]); see the module docstring."""
        return self.num_correct == self.num_tokens

    @property
    def choice_exact(self) -> np.ndarray | None:
        """Every answer token's restricted argmax is right (bool [n]); None without answer sets."""
        return None if self.choice_correct is None else self.choice_correct == self.num_tokens


def _device_of(model: torch.nn.Module) -> torch.device:
    # Stand-in models in tests may have no parameters at all.
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any
) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out
    # Under the caller's autocast logits may be bf16/fp16; log-softmax in fp32 keeps the loss exact enough.
    return logits.float()


def _concat(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """All tokens of ``seqs`` back to back (int64) and each one's length, without a per-item loop."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _pad_rows(flat: np.ndarray, lengths: np.ndarray, width: int, fill: int) -> np.ndarray:
    """Rows of the concatenated ``flat`` (row i has ``lengths[i]`` tokens), left-aligned and padded."""
    out = np.full((len(lengths), width), fill, dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    out[mask] = flat  # row-major boolean assignment fills each row's leading cells in order
    return out


def _batches(lengths: np.ndarray, batch_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Index batches of rows of one length each (no padding, so no attention mask and shared heads,
    see :func:`_shared_head_logits`), at most ``max_rows`` rows and ``batch_tokens`` tokens each
    (always at least one row)."""
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    starts = np.flatnonzero(np.r_[True, sorted_lengths[1:] != sorted_lengths[:-1]])
    out = []
    for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
        rows = max(1, min(max_rows, batch_tokens // max(int(sorted_lengths[lo]), 1)))
        out.extend(order[s : min(s + rows, hi)] for s in range(lo, hi, rows))
    return out


@torch.no_grad()
def score_instances(
    model: Any,
    instances: Sequence[Instance],
    batch_size: int,
    pad_id: int,
    *,
    prefix: Sequence[int] = (),
    answer_sets: Sequence[Sequence[int] | None] | None = None,
    batch_tokens: int | None = None,
    share_heads: bool = True,
) -> InstanceScores:
    """Answer-token losses and teacher-forced argmax hits of each instance (no train/eval switching).

    Each instance is scored as ``prefix + prompt + answer``; only answer tokens count. Instances are
    grouped by length and each batch holds rows of one length, so there is no padding and no mask and
    every token keeps its position. A batch holds at
    most ``batch_size`` rows and, with ``batch_tokens``, at most that many tokens: T_CMP's
    rows are 3 tokens long, so a token budget packs thousands of them into one forward pass.

    ``answer_sets[skill]`` (sorted token ids, or None) adds the choice scores: loss and argmax with the
    softmax restricted to the answer set, and the probability mass on it. Both softmaxes are taken at
    the answer positions only.

    With ``share_heads`` (and a model that takes ``logits_to_keep`` and a KV cache, as HF causal LMs
    do), the columns before the first answer position are run once per distinct head and the rest
    continues from the cached keys/values: T_CMP's 4,950 rows have only 100 distinct first tokens,
    so this halves its forward pass.
    """
    n = len(instances)
    prompts = [inst.prompt for inst in instances]
    answers = [inst.answer for inst in instances]
    prompt_flat, prompt_len = _concat(prompts)
    answer_flat, answer_len = _concat(answers)
    if n and (prompt_len.min() == 0 or answer_len.min() == 0):
        bad = int(np.flatnonzero((prompt_len == 0) | (answer_len == 0))[0])
        raise ValueError(f"evaluation needs a non-empty prompt and answer, got {instances[bad]}")
    skills = np.fromiter((inst.skill for inst in instances), dtype=np.int64, count=n)
    pre = np.asarray(prefix, dtype=np.int64)
    lengths = len(pre) + prompt_len + answer_len
    # The last answer token is a target only, never context: it is left out of the forward pass
    # (a third of the tokens of a T_CMP row).
    inputs = lengths - 1
    width_all = int(lengths.max()) if n else 0
    # Whole sequences once, as one padded matrix: [prefix | prompt | answer | pad].
    seqs = np.full((n, width_all), pad_id, dtype=np.int64)
    seqs[:, : len(pre)] = pre
    cols = np.arange(width_all)[None, :]
    prompt_end = len(pre) + prompt_len
    in_prompt = (cols >= len(pre)) & (cols < prompt_end[:, None])
    seqs[in_prompt] = prompt_flat
    in_answer = (cols >= prompt_end[:, None]) & (cols < lengths[:, None])
    seqs[in_answer] = answer_flat
    max_answer = int(answer_len.max()) if n else 0
    answer_ids = _pad_rows(answer_flat, answer_len, max_answer, -1)

    choice = answer_sets is not None and any(a is not None for a in answer_sets)
    set_ids: torch.Tensor | None = None
    device = _device_of(model)
    loss_sum = np.zeros(n, dtype=np.float64)
    num_correct = np.zeros(n, dtype=np.int64)
    choice_loss_sum = np.zeros(n, dtype=np.float64) if choice else None
    choice_correct = np.zeros(n, dtype=np.int64) if choice else None
    label_mass_sum = np.zeros(n, dtype=np.float64) if choice else None
    keep_supported = "logits_to_keep" in inspect.signature(model.forward).parameters
    for idx in _batches(inputs, batch_tokens or width_all * max(batch_size, 1), batch_size):
        width = int(inputs[idx].max())
        ids = seqs[idx, :width]
        # Answer token k of row r is predicted by the logits at column prompt_end[r] - 1 + k.
        k = np.arange(max_answer)[None, :]
        has = k < answer_len[idx][:, None]
        rows = np.broadcast_to(np.arange(len(idx))[:, None], has.shape)[has]
        col = (prompt_end[idx][:, None] - 1 + k)[has]
        owner = idx[rows]  # the instance of each answer token
        # Rows of one length (see _batches): a rectangular batch, plain causal attention, no mask.
        mask = None
        # Logits only from the first column any answer needs: the LM head is a tenth of a micro model.
        first = int(col.min()) if keep_supported else 0
        logits = None
        if keep_supported and share_heads and mask is None and first > 0:
            logits = _shared_head_logits(model, ids, first, device)
        if logits is None:
            extra = {"logits_to_keep": width - first} if keep_supported else {}
            logits = _logits(model, torch.from_numpy(ids).to(device), mask, **extra)
        picked = logits[torch.from_numpy(rows).to(device), torch.from_numpy(col - first).to(device)]
        tgt = torch.from_numpy(answer_ids[idx][has]).to(device)
        log_z = torch.logsumexp(picked, dim=-1)
        target_logit = picked.gather(1, tgt[:, None])[:, 0]
        tok_loss = (log_z - target_logit).double().cpu().numpy()
        hit = (picked.argmax(dim=-1) == tgt).cpu().numpy()
        loss_sum += np.bincount(owner, weights=tok_loss, minlength=n)
        num_correct += np.bincount(owner, weights=hit, minlength=n).astype(np.int64)
        if choice:
            if set_ids is None:
                set_ids = _answer_set_matrix(answer_sets, device)
            ids_of = set_ids[torch.from_numpy(skills[owner]).to(device)]  # [tokens, K]: each one's set
            valid = ids_of >= 0
            # Only the K answer-set logits of each token are gathered: K is 2 for T_CMP, not the vocab.
            restricted = picked.gather(1, ids_of.clamp(min=0)).masked_fill(~valid, float("-inf"))
            log_z_set = torch.logsumexp(restricted, dim=-1)
            declared = valid[:, 0]
            nan = torch.tensor(float("nan"), device=device)
            c_loss = torch.where(declared, log_z_set - target_logit, nan).double().cpu().numpy()
            # Sets are sorted, so the first maximum (torch.argmax) is the lower token id on a tie.
            chosen = ids_of.gather(1, restricted.argmax(dim=-1, keepdim=True))[:, 0]
            c_hit = (chosen == tgt) & declared
            mass = torch.where(declared, torch.exp(log_z_set - log_z), nan).double().cpu().numpy()
            choice_loss_sum += np.bincount(owner, weights=c_loss, minlength=n)
            choice_correct += np.bincount(owner, weights=c_hit.cpu().numpy(), minlength=n).astype(np.int64)
            label_mass_sum += np.bincount(owner, weights=mass, minlength=n)
    return InstanceScores(loss_sum, answer_len, num_correct, choice_loss_sum, choice_correct, label_mass_sum)


def _shared_head_logits(model: Any, ids: np.ndarray, head: int, device: torch.device) -> torch.Tensor | None:
    """Logits of columns ``head:`` of the rectangular batch ``ids``, computing the first ``head`` columns
    once per distinct head; None when heads barely repeat (no saving) so the caller runs it plainly."""
    heads, inverse = np.unique(ids[:, :head], axis=0, return_inverse=True)
    if 2 * len(heads) > len(ids):
        return None
    # transformers 5 names the cache argument and output `cache`; earlier versions `past_key_values`.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=torch.from_numpy(heads).to(device), use_cache=True, logits_to_keep=1)
    cache = getattr(out, name, None)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    # Every row continues from its own head's keys and values: the cache gathered to the batch.
    cache.reorder_cache(torch.from_numpy(inverse.reshape(-1)).to(device))
    rest = torch.from_numpy(np.ascontiguousarray(ids[:, head:])).to(device)
    return _logits(model, rest, None, use_cache=False, **{name: cache})


def _answer_set_matrix(answer_sets: Sequence[Sequence[int] | None], device: torch.device) -> torch.Tensor:
    """[skills, K] token ids: row s is sub-skill s's answer set, padded with -1 (all -1 where undeclared)."""
    width = max(len(a) for a in answer_sets if a is not None)
    out = torch.full((len(answer_sets), width), -1, dtype=torch.long)
    for s, answers in enumerate(answer_sets):
        if answers is not None:
            out[s, : len(answers)] = torch.as_tensor(sorted(answers), dtype=torch.long)
    return out.to(device)


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


TASK_METRICS = ("loss", "loss_bits", "loss_ratio", "acc", "token_acc", "n", "acc_lo", "acc_hi")
"""What :func:`task_metrics` reports for a task as a whole."""
SKILL_METRICS = ("loss", "loss_ratio", "acc", "token_acc", "n", "acc_lo", "acc_hi")
"""What it reports for each sub-skill of a family."""
CHOICE_METRICS = ("choice_loss", "choice_acc", "choice_acc_lo", "choice_acc_hi", "label_mass")
"""Added to both for a task whose sub-skills all declare an answer set (``Task.answer_set``)."""

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the percentile bootstrap behind ``acc_lo``/``acc_hi``."""
BOOTSTRAP_SEED = 0
"""Fixed, so the interval of a given result is the same in every run and on every re-score."""


def bootstrap_ci(
    hits: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of 0/1 outcomes ``hits`` (resampling instances).

    Resampling n instances with replacement from k hits out of n gives a Binomial(n, k/n) count, so
    each resample's accuracy is drawn from that distribution directly: the same bootstrap, exactly,
    at the cost of ``resamples`` numbers instead of ``resamples * n``.
    """
    n = len(hits)
    if n == 0:
        return float("nan"), float("nan")
    p = float(np.mean(hits))
    means = np.random.default_rng(seed).binomial(n, p, size=resamples) / n
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def _summarise(
    label: Label,
    metrics: Sequence[str],
    scores: InstanceScores,
    ratio_sum: np.ndarray,
    ratio_tokens: np.ndarray,
    sel: np.ndarray,
) -> dict[str, float]:
    """Token-weighted losses, instance-level accuracies and their intervals over the selected instances."""
    tokens = int(scores.num_tokens[sel].sum())
    loss = float(scores.loss_sum[sel].sum()) / tokens
    rt = int(ratio_tokens[sel].sum())
    exact = scores.exact[sel]
    acc_lo, acc_hi = bootstrap_ci(exact)
    values = {
        "loss": loss,
        "loss_bits": loss * LOG2E,
        "loss_ratio": float(ratio_sum[sel].sum()) / rt if rt else float("nan"),
        "acc": float(exact.mean()),
        "token_acc": float(scores.num_correct[sel].sum()) / tokens,
        "n": int(sel.sum()),
        "acc_lo": acc_lo,
        "acc_hi": acc_hi,
    }
    choice_exact = scores.choice_exact
    if choice_exact is not None and scores.choice_loss_sum is not None and scores.label_mass_sum is not None:
        lo, hi = bootstrap_ci(choice_exact[sel])
        values.update(
            choice_loss=float(scores.choice_loss_sum[sel].sum()) / tokens,
            choice_acc=float(choice_exact[sel].mean()),
            choice_acc_lo=lo,
            choice_acc_hi=hi,
            label_mass=float(scores.label_mass_sum[sel].sum()) / tokens,
        )
    return {label.key(m): values[m] for m in metrics if m in values}


def task_metrics(eval_set: TaskEvalSet, scores: InstanceScores) -> dict[str, float]:
    """Flat ``eval/{task}/...`` metrics of one task from its instance scores.

    ``loss`` and ``loss_ratio`` are both means over all answer tokens of the task: each token's loss is
    divided by the chance loss of its own sub-skill, so a family mixing easy-to-guess and hard-to-guess
    sub-skills is on one consistent scale (1.0 = chance everywhere). Accuracy is per instance, with a
    95% bootstrap interval (``acc_lo``/``acc_hi``) over the ``n`` instances. With answer sets on every
    sub-skill, :data:`CHOICE_METRICS` are added on the same terms (``choice_loss`` and ``label_mass`` per
    answer token, ``choice_acc`` per instance). Sub-skills without instances get no keys; sub-skill keys
    appear only when the task has several.
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
    choice = CHOICE_METRICS if eval_set.has_answer_sets else ()
    everything = np.ones(len(skills), dtype=bool)
    label = Label(eval_set.task)
    out.update(_summarise(label, TASK_METRICS + choice, scores, ratio_sum, ratio_tokens, everything))
    if len(eval_set.skills) > 1:
        for s, name in enumerate(eval_set.skills):
            sel = skills == s
            if sel.any():
                label = Label(eval_set.task, name)
                out.update(_summarise(label, SKILL_METRICS + choice, scores, ratio_sum, ratio_tokens, sel))
    return out


def evaluate(
    model: Any,
    eval_sets: list[TaskEvalSet],
    background: np.ndarray | None,
    batch_size: int,
    pad_id: int,
    batch_tokens: int | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on held-out task instances and background text; return flat metrics.

    Keys: ``eval/{task}/loss`` (nats per answer token), ``loss_bits``, ``loss_ratio`` (loss over chance,
    per token), ``acc`` (exact match of greedy decoding), ``token_acc``, ``n`` (instances) and
    ``acc_lo``/``acc_hi`` (95% bootstrap interval); with answer sets also ``choice_loss``,
    ``choice_acc`` (+ ``_lo``/``_hi``) and ``label_mass`` (see :func:`task_metrics`); per sub-skill of a
    family the same under ``eval/{task}/{skill}/`` (without ``loss_bits``); and
    ``eval/background/loss`` when ``background`` is given. Each task is scored after its
    ``TaskEvalSet.prefix``. Task batches hold at most ``batch_tokens`` tokens (rows of one length), or
    ``batch_size`` instances when it is None; background batches ``batch_size`` rows. The model runs in eval mode without gradients on its own
    device and is put back in its previous mode; no autocast is added (the caller's, if any, applies).
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    metrics: dict[str, float] = {}
    try:
        with torch.no_grad():
            for es in eval_sets:
                if not es.instances:
                    continue
                scores = score_instances(
                    model,
                    es.instances,
                    # A token budget alone bounds a task batch; batch_size then bounds the background's.
                    batch_size if batch_tokens is None else len(es.instances),
                    pad_id,
                    prefix=es.prefix,
                    answer_sets=es.answer_sets if es.has_answer_sets else None,
                    batch_tokens=batch_tokens,
                )
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
