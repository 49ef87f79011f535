"""Baselines a learned task must beat: chance over the answer set, and the best one-position rule.

A model that reads a single prompt token can already beat chance: on T_CMP, the majority label
given ``val(TOK1)`` is right about 3/4 of the time (a low first value is usually less than the
second). :func:`compute_baselines` fits, for every prompt position ``p``, the rule "answer the
majority answer of the training instances with this token at ``p``", scores each on the held-out
instances and keeps the best position, so a reader (and the learned criterion, see
:func:`check_threshold`) can tell "reads one token" from "learned the task".

Written once per run to ``baselines.json`` (:attr:`smalllm.run_record.RunDir.baselines_file`) as
``{"version": 1, "labels": {str(label): {...}}}`` with the fields of :data:`BASELINE_FIELDS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smalllm.data.eval_sets import TaskEvalSet
from smalllm.errors import ConfigError, SmalllmError
from smalllm.eval.config import ACCURACY_METRICS, ANSWER_SET_METRICS, CriterionConfig
from smalllm.labels import Label
from smalllm.run_record import atomic_write_json, read_json
from smalllm.tasks.base import Instance

BASELINES_VERSION = 1
BASELINE_FIELDS = (
    "answer_set_size",
    "chance_acc",
    "chance_loss",
    "rule_position",
    "rule_acc",
    "rule_choice_loss",
    "n",
)
"""Per label: the declared answer set's size (None when undeclared), accuracy and loss (nats per
answer token) of a guess uniform over it, the best one-position rule's prompt position, accuracy
and choice loss (None without an answer set), and the held-out instances scored."""
FIT_SAMPLE = 2000
"""Training instances a fresh pool (which has no fixed train part) contributes to the rule's fit."""
ABSENT = -1
"""Stands for "no token here" when a prompt is shorter than the position a rule reads."""


def _padded(seqs: Sequence[Sequence[int]], width: int) -> np.ndarray:
    out = np.full((len(seqs), width), ABSENT, dtype=np.int64)
    for r, seq in enumerate(seqs):
        out[r, : len(seq)] = seq
    return out


def one_position_rule(
    train: Sequence[Instance], test: Sequence[Instance], set_size: int
) -> tuple[int, float, float]:
    """(position, accuracy, choice loss) of the best single-prompt-position majority rule.

    For each prompt position ``p`` the rule predicts the most frequent training answer (the whole
    answer tuple) among training instances with the same token at ``p``; ties go to the lower answer
    (lexicographically lowest tuple of ids), and a token never seen at ``p`` gets the overall majority.
    The position with the best held-out accuracy wins (ties: the lower ``p``). Its choice loss, in
    nats per answer token, scores the held-out answer under the conditional answer distribution with
    add-one smoothing over the ``set_size ** len(answer)`` possible answers.
    """
    width_p = max(len(i.prompt) for i in (*train, *test))
    width_a = max(len(i.answer) for i in (*train, *test))
    train_prompts = _padded([i.prompt for i in train], width_p)
    test_prompts = _padded([i.prompt for i in test], width_p)
    # Answers as rows of one table: the train answers' distinct rows (sorted, so index order is the
    # lexicographic order ties go by), and each test answer's index in it (-1: never trained on).
    answers, train_ans = np.unique(_padded([i.answer for i in train], width_a), axis=0, return_inverse=True)
    train_ans = train_ans.reshape(-1)
    test_rows = _padded([i.answer for i in test], width_a)
    num_answers = len(answers)
    test_ans = np.full(len(test), -1, dtype=np.int64)
    lookup = {tuple(row): k for k, row in enumerate(answers.tolist())}
    for r, row in enumerate(test_rows.tolist()):
        test_ans[r] = lookup.get(tuple(row), -1)
    answer_len = np.array([len(i.answer) for i in test], dtype=np.float64)
    smoothing = float(set_size) ** answer_len  # candidate answers of each test instance
    overall = int(np.argmax(np.bincount(train_ans, minlength=num_answers)))
    best: tuple[int, float, float] | None = None
    for p in range(width_p):
        tokens, train_key = np.unique(train_prompts[:, p], return_inverse=True)
        train_key = train_key.reshape(-1)
        counts = np.zeros((len(tokens), num_answers), dtype=np.int64)
        np.add.at(counts, (train_key, train_ans), 1)
        majority = np.argmax(counts, axis=1)  # argmax takes the first maximum: the lower answer
        where = np.searchsorted(tokens, test_prompts[:, p])
        where = np.minimum(where, len(tokens) - 1)
        seen = tokens[where] == test_prompts[:, p]
        predicted = np.where(seen, majority[where], overall)
        acc = float(np.mean(predicted == test_ans))
        hits = np.where(seen & (test_ans >= 0), counts[where, np.maximum(test_ans, 0)], 0)
        totals = np.where(seen, counts[where].sum(axis=1), 0)
        prob = (hits + 1) / (totals + smoothing)
        loss = float(np.sum(-np.log(prob)) / answer_len.sum())
        if best is None or acc > best[1]:
            best = (p, acc, loss)
    assert best is not None
    return best


def _label_baseline(
    instances: Sequence[Instance],
    fit: Sequence[Instance],
    chance: np.ndarray,
    set_size: int | None,
) -> dict:
    """The baseline record of a set of held-out instances (one label); ``chance`` per instance."""
    answer_len = np.array([len(i.answer) for i in instances], dtype=np.float64)
    record = {
        "answer_set_size": set_size,
        # A uniform guess over K answers per token gets an L-token answer right with chance K^-L.
        "chance_acc": float(np.mean(np.exp(-chance * answer_len))),
        "chance_loss": float(np.sum(chance * answer_len) / answer_len.sum()),
        "rule_position": None,
        "rule_acc": None,
        "rule_choice_loss": None,
        "n": len(instances),
    }
    if set_size is not None and fit:
        p, acc, loss = one_position_rule(fit, instances, set_size)
        record.update(rule_position=p, rule_acc=acc, rule_choice_loss=loss)
    return record


def compute_baselines(eval_sets: Sequence[TaskEvalSet], fit: Sequence[Sequence[Instance]]) -> dict:
    """The baselines document of a run: per task, and per sub-skill of a family.

    ``fit[i]`` holds the training instances of ``eval_sets[i]``'s task that the rule is fitted on
    (a finite pool's train part, a fixed sample of a fresh pool's). Chance is uniform over the
    declared answer set, or over ``answer_space`` values (from the chance loss) where none is declared;
    the rule needs a declared answer set.
    """
    labels: dict[str, dict] = {}
    for es, train in zip(eval_sets, fit, strict=True):
        if not es.instances:
            continue
        skills = np.array([i.skill for i in es.instances], dtype=np.int64)
        chance = np.asarray(es.chance_loss, dtype=np.float64)[skills]
        declared = es.has_answer_sets
        union = set().union(*(es.answer_set(s) or () for s in range(len(es.skills))))
        labels[str(Label(es.task))] = _label_baseline(
            es.instances, train, chance, len(union) if declared else None
        )
        if len(es.skills) > 1:
            for s, name in enumerate(es.skills):
                sel = [i for i in es.instances if i.skill == s]
                if not sel:
                    continue
                answers = es.answer_set(s)
                labels[str(Label(es.task, name))] = _label_baseline(
                    sel,
                    [i for i in train if i.skill == s],
                    np.full(len(sel), es.chance_loss[s]),
                    None if answers is None or not declared else len(answers),
                )
    return {"version": BASELINES_VERSION, "labels": labels}


def best_baseline_acc(record: dict) -> float:
    """The higher of a label's chance and one-position-rule accuracies."""
    return max(v for v in (record["chance_acc"], record["rule_acc"]) if v is not None)


def check_threshold(
    baselines: dict, criterion: CriterionConfig, field: str = "eval.criterion.threshold"
) -> None:
    """Refuse an accuracy criterion that a baseline already meets: it would call chance learned.

    Raises a one-line :class:`~smalllm.errors.ConfigError` naming ``field``, the label and the
    baseline; criteria on other metrics are not compared with baselines.
    """
    if criterion.metric not in ACCURACY_METRICS:
        return
    for label, record in baselines["labels"].items():
        best = best_baseline_acc(record)
        if criterion.threshold <= best:
            which = (
                f"the one-position rule at prompt position {record['rule_position']}"
                if record["rule_acc"] is not None and record["rule_acc"] >= record["chance_acc"]
                else "chance"
            )
            raise ConfigError(
                f"{field}: {criterion.threshold:g} does not exceed the best baseline accuracy of "
                f"'{label}', {best:.4f} ({which}); raise it above that"
            )


def check_criterion_applies(sets: list[TaskEvalSet], criterion: CriterionConfig) -> None:
    """Refuse a criterion on a choice metric when a task has no answer set to compute it on: the
    task would silently never count as learned."""
    if criterion.metric not in ANSWER_SET_METRICS:
        return
    for es in sets:
        if es.instances and not es.has_answer_sets:
            raise ConfigError(
                f"eval.criterion.metric: {criterion.metric} needs tasks that declare their answer set "
                f"(Task.answer_set), and task '{es.task}' declares none; use acc or loss_ratio"
            )


def write_baselines(path: Path, baselines: dict) -> None:
    """Write the baselines document atomically."""
    atomic_write_json(path, baselines)


def read_baselines(path: Path) -> dict | None:
    """The baselines document at ``path``; None when the run has none (older runs)."""
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise SmalllmError(f"{path}: not a baselines file (no 'labels' mapping)")
    return data


def format_baselines(baselines: dict) -> str:
    """Aligned plain-text table of a baselines document, for the terminal."""
    header = ["label", "n", "|answers|", "chance acc", "chance loss", "rule pos", "rule acc", "rule loss"]
    cells = [header]
    for label, r in baselines["labels"].items():
        cells.append(
            [
                label,
                str(r["n"]),
                "-" if r["answer_set_size"] is None else str(r["answer_set_size"]),
                _num(r["chance_acc"]),
                _num(r["chance_loss"]),
                "-" if r["rule_position"] is None else str(r["rule_position"]),
                _num(r["rule_acc"]),
                _num(r["rule_choice_loss"]),
            ]
        )
    widths = [max(len(c[j]) for c in cells) for j in range(len(header))]
    lines = [
        "  ".join(c[j].ljust(widths[j]) if j == 0 else c[j].rjust(widths[j]) for j in range(len(c)))
        for c in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"
