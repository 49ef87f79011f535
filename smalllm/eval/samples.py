"""Greedy samples: what the model says, next to how it scores.

At each evaluation a run writes a few greedy completions of held-out task prompts and of held-out
background prefixes (``eval.samples``, ``eval.sample_tokens``). Scores say *that* a task is learned;
a sample says *what* the model answers before it is (a copied token, a frequent token, the EOD), and
the background samples show the language model itself improving. The prompts are the same at every
evaluation, so the log reads as one prompt's answer changing over training.

Generation is one batch and a fixed number of greedy steps with no stop at EOD: every process of a sharded run
then takes the same number of forward passes (each one a collective under FSDP/DeepSpeed), and the
samples of a resumed run equal the uninterrupted run's.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smalllm.data.eval_sets import TaskEvalSet

BACKGROUND_SOURCE = "background"
"""The ``source`` of a sample of background text (the others are named by their task)."""


@dataclass(frozen=True)
class SamplePrompt:
    """One prompt to complete, with what it should be compared to."""

    source: str
    """The task's name, or :data:`BACKGROUND_SOURCE`."""
    context: tuple[int, ...]
    """What the model is given: the task's placement prefix and the prompt, or a background prefix."""
    shown: tuple[int, ...]
    """The part of ``context`` to show (the prompt without the placement prefix)."""
    expected: tuple[int, ...]
    """The task's answer, or the background row's true continuation."""
    graded: bool
    """Whether the completion is right or wrong (task answers); background text is not graded."""


def sample_prompts(
    eval_sets: list[TaskEvalSet], background: np.ndarray | None, n: int, sample_tokens: int
) -> list[SamplePrompt]:
    """The first ``n`` held-out instances of every task, then the first ``n`` background rows cut in
    half (the first half is the prompt, up to ``sample_tokens`` of the rest the expected text)."""
    prompts = [
        SamplePrompt(es.task, tuple(es.prefix) + inst.prompt, inst.prompt, inst.answer, graded=True)
        for es in eval_sets
        for inst in es.instances[:n]
    ]
    if background is not None:
        for row in np.asarray(background)[:n]:
            ids = tuple(int(t) for t in row)
            cut = max(1, len(ids) // 2)
            prompts.append(
                SamplePrompt(BACKGROUND_SOURCE, ids[:cut], ids[:cut], ids[cut : cut + sample_tokens], False)
            )
    return prompts


def greedy_complete(model: Any, prompts: list[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of ``prompts``, ``max_new_tokens`` each (fewer where the model's
    ``max_position_embeddings`` runs out), with the KV cache.

    All prompts go in one batch, left-padded with an attention mask and explicit positions, so the
    whole call is ``max_new_tokens`` forward passes whatever the prompts' lengths (per-length
    batches took several times as long on a CPU, where each small forward pass is mostly Python).
    The model runs in eval mode without gradients on its own device and is put back in its previous
    mode; no autocast is added (the caller's, if any, applies).
    """
    out: list[list[int]] = [[] for _ in prompts]
    if not prompts or max_new_tokens <= 0:
        return out
    longest = max(len(p) for p in prompts)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    steps = max_new_tokens if limit is None else min(max_new_tokens, int(limit) - longest + 1)
    if longest == 0 or steps <= 0:
        return out
    device = next(model.parameters()).device
    # The cache argument's name: ``cache`` in transformers 5, ``past_key_values`` before.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    pad = [longest - len(p) for p in prompts]
    ids = torch.tensor([[0] * k + list(p) for k, p in zip(pad, prompts, strict=True)], device=device)
    mask = torch.tensor([[0] * k + [1] * len(p) for k, p in zip(pad, prompts, strict=True)], device=device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            new: list[torch.Tensor] = []
            for k in range(steps):
                token = result.logits[:, -1].argmax(-1, keepdim=True)
                new.append(token)
                if k + 1 == steps:
                    break
                cache = getattr(result, cache_arg)
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                positions = positions[:, -1:] + 1
                result = model(
                    input_ids=token,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{cache_arg: cache},
                )
            out = torch.cat(new, dim=1).tolist()
    finally:
        model.train(was_training)
    return out


def samples_entries(
    prompts: list[SamplePrompt], completions: list[list[int]], decode: Callable[[Sequence[int]], str] | None
) -> list[dict[str, Any]]:
    """One JSON-ready entry per sample: source, text (prompt, expected, completion), the token ids
    (a text round trip may not give them back) and, for task prompts, whether the completion starts
    with the answer (greedy exact match, as the evaluator's ``acc`` counts it)."""
    text = decode if decode is not None else (lambda ids: " ".join(str(t) for t in ids))
    entries = []
    for p, completion in zip(prompts, completions, strict=True):
        entry: dict[str, Any] = {
            "source": p.source,
            "prompt": text(p.shown),
            "expected": text(p.expected),
            "completion": text(completion),
            "prompt_ids": list(p.shown),
            "expected_ids": list(p.expected),
            "completion_ids": list(completion),
        }
        if p.graded:
            entry["correct"] = tuple(completion[: len(p.expected)]) == tuple(p.expected)
        entries.append(entry)
    return entries


def samples_markdown(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Per source, a markdown table of its samples (TensorBoard's text tab renders it), tagged
    ``samples/{source}``. Strings are shown JSON-escaped, so newlines and spaces stay visible."""

    def cell(s: str) -> str:
        return "`" + json.dumps(s, ensure_ascii=False)[1:-1].replace("|", "\\|").replace("`", "'") + "`"

    tables: dict[str, list[str]] = {}
    for e in entries:
        graded = "correct" in e
        lines = tables.setdefault(
            e["source"],
            [
                "| prompt | expected | completion |" + (" right |" if graded else ""),
                "|---|---|---|" + ("---|" if graded else ""),
            ],
        )
        row = f"| {cell(e['prompt'])} | {cell(e['expected'])} | {cell(e['completion'])} |"
        if graded:
            row += " yes |" if e["correct"] else " no |"
        lines.append(row)
    return {f"samples/{source}": "\n".join(lines) for source, lines in tables.items()}
