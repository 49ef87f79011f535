"""``smalllm eval --model``: score any causal LM (a local HF directory or a hub id) on smalllm's tasks.

A run's held-out sets are token ids of the run's tokenizer and mean nothing to another model, so
here each task is built afresh in the model's own tokenizer: its tables are drawn, with ``--seed``,
from that tokenizer's word-initial tokens (:func:`smalllm.data.task_tokens.word_initial_tokens`),
and its held-out instances and the training-like instances the one-position baseline is fitted on
come from a ``fresh`` pool exactly as in a run. Every held-out instance is checked id → text → id
(:mod:`smalllm.tasks.text`) and dropped when its text would re-tokenize differently; the count is
reported, and a task with no instance left is refused.

Several ``--revision`` values score several checkpoints of one model (Pythia's ``step1000``,
``step2000``, …): the step of a revision is the number its name ends in, the curve is written in
step order, and the emergence step comes from the same criterion as a smalllm run's. For a local
directory ``PATH``, revision ``r`` is the subdirectory ``PATH/r``; for a hub id it is passed to
``from_pretrained(..., revision=r)``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from smalllm.data.config import TaskConfig
from smalllm.data.eval_sets import TaskEvalSet
from smalllm.data.pools import InstancePool
from smalllm.data.task_tokens import word_initial_vocab
from smalllm.data.tokenizer import load_pretrained
from smalllm.errors import ConfigError, SmalllmError
from smalllm.eval.baselines import FIT_SAMPLE, compute_baselines, format_baselines
from smalllm.eval.config import EvalConfig
from smalllm.eval.emergence import emergence_table, format_emergence_table
from smalllm.eval.evaluator import evaluate
from smalllm.run_record import atomic_write_json
from smalllm.tasks import Instance, Task, build_task, skill_names

DEFAULT_EVAL_SIZE = 256
"""Held-out instances drawn per task (and sub-skill) before the text check drops any."""


@dataclass
class OutsideTasks:
    """A model's tasks, built in its tokenizer: the held-out sets and the baselines' fit instances."""

    tasks: list[Task]
    sets: list[TaskEvalSet]
    fit: list[list[Instance]]
    dropped: dict[str, int]
    """Per task, held-out instances dropped because their text does not re-tokenize to their ids."""


def is_local(name: str) -> bool:
    """A name that reads as a path, or an existing directory, is never asked of the hub."""
    return Path(name).expanduser().is_dir() or name.startswith(("/", ".", "~"))


def revision_step(revision: str | None, index: int) -> int:
    """Step of a revision: the number its name ends in (``step1000`` -> 1000), else its position."""
    found = re.search(r"(\d+)$", revision or "")
    return int(found.group(1)) if found else index


def _source(model: str, revision: str | None, field: str = "--model") -> tuple[str, dict[str, Any]]:
    """(name for from_pretrained, its keyword arguments) of one revision."""
    if is_local(model):
        path = Path(model).expanduser() / revision if revision else Path(model).expanduser()
        if not path.is_dir():
            field = "--revision" if revision else field
            raise SmalllmError(f"{field}: model directory '{path}' not found")
        return str(path), {"local_files_only": True}
    return model, ({"revision": revision} if revision else {})


def load_tokenizer_of(model: str, revision: str | None, field: str = "--model") -> Any:
    """The tokenizer of one revision, with an end-of-document token and a pad id."""
    _source(model, revision, field)  # a missing revision directory is named as such
    return load_pretrained(model, field=field, revision=revision)


def load_model_of(model: str, revision: str | None) -> Any:
    """The causal LM of one revision, in eval mode."""
    name, kwargs = _source(model, revision)
    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs).eval()
    except (OSError, ValueError) as exc:
        raise SmalllmError(f"--model: cannot load '{name}' ({str(exc).splitlines()[0]})") from None


def build_outside_tasks(
    tokenizer: Any,
    names: Sequence[str],
    params: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    eval_size: int = DEFAULT_EVAL_SIZE,
) -> OutsideTasks:
    """Build ``names`` in ``tokenizer`` with ``seed``, keeping only text-faithful held-out instances.

    Tasks share the seed, so ``t_cmp`` and ``t_add`` read one value table, as in a run.
    """
    vocab = word_initial_vocab(tokenizer)
    params = params or {}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"--param: task '{unknown[0]}' is not among --tasks")
    tasks, sets, fit, dropped = [], [], [], {}
    for index, name in enumerate(names):
        task = build_task(name, params.get(name, {}), vocab, seed, where=f"--tasks.{name}")
        cfg = TaskConfig(name=name, pool="fresh", eval_size=eval_size, seed=seed)
        try:
            pools = [InstancePool(task, s, cfg, index) for s in range(len(task.skills))]
        except ValueError as exc:
            raise ConfigError(f"--tasks.{name}: {exc}") from None
        held = [inst for pool in pools for inst in pool.eval_instances()]
        kept = [inst for inst in held if task.text_problem(inst) is None]
        if not kept:
            reason = task.text_problem(held[0]) if held else "no instances"
            raise SmalllmError(
                f"--tasks: none of the {len(held)} instances of '{name}' survive id -> text -> id in this "
                f"tokenizer (first: {reason})"
            )
        answers = [task.answer_set(s) for s in range(len(task.skills))]
        tasks.append(task)
        dropped[name] = len(held) - len(kept)
        sets.append(
            TaskEvalSet(
                task=name,
                skills=skill_names(task),
                instances=kept,
                chance_loss=[task.chance_loss(s) for s in range(len(task.skills))],
                answer_sets=[None if a is None else tuple(sorted(int(t) for t in a)) for a in answers],
            )
        )
        fit.append([inst for pool in pools for inst in pool.fit_instances(FIT_SAMPLE)])
    return OutsideTasks(tasks, sets, fit, dropped)


def evaluate_any_model(
    model: str,
    tasks: Sequence[str],
    revisions: Sequence[str] = (),
    params: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    eval_size: int = DEFAULT_EVAL_SIZE,
    out: str | Path | None = None,
    batch_size: int = 128,
    log: Callable[[str], None] = print,
) -> dict:
    """Score every revision of ``model`` on ``tasks``; return (and with ``out`` write) the summary.

    The summary holds the tasks' tables as text, the dropped-instance counts, the baselines, one
    record per revision (``step``, ``revision`` and the ``eval/...`` metrics of a run's evaluation),
    and the emergence table over them under the default criterion.
    """
    hf_logging.disable_progress_bar()
    if not tasks:
        raise SmalllmError("--tasks: name at least one task to score the model on")
    if out is not None and Path(out).is_dir():
        raise SmalllmError(f"--out: '{out}' is a directory; give a JSON file")
    if out is not None:
        _check_replaceable(Path(out))  # before the work, so a refusal costs nothing
    revs: list[str | None] = list(dict.fromkeys(revisions)) or [None]
    tokenizer = load_tokenizer_of(model, revs[0])
    built = build_outside_tasks(tokenizer, tasks, params, seed, eval_size)
    for name, n in built.dropped.items():
        if n:
            log(f"{name}: dropped {n} instance(s) whose text does not re-tokenize to the same ids")
    baselines = compute_baselines(built.sets, built.fit)
    order = sorted(range(len(revs)), key=lambda i: revision_step(revs[i], i))
    records = []
    cfg = EvalConfig()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for i in order:
        rev = revs[i]
        if i != 0 and load_tokenizer_of(model, rev).get_vocab() != tokenizer.get_vocab():
            raise SmalllmError(f"--revision: '{rev}' has another tokenizer than '{revs[0]}'")
        lm = load_model_of(model, rev).to(device)
        if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise SmalllmError(
                f"--model: the model of '{rev or model}' has fewer embeddings than its tokenizer"
            )
        metrics = evaluate(
            lm, built.sets, None, batch_size, tokenizer.pad_token_id, batch_tokens=cfg.batch_tokens
        )
        step = revision_step(rev, i)
        records.append({"kind": "eval", "step": step, "revision": rev, "time": time.time(), **metrics})
        log(f"revision {rev or '(main)'} (step {step})")
        for key, value in sorted(metrics.items()):
            log(f"  {key:<40} {value:.4f}")
        del lm  # one revision's weights in memory at a time
    log("baselines:\n" + format_baselines(baselines))
    rows = emergence_table(records, cfg)
    log(format_emergence_table(rows))
    summary = {
        "model": model,
        "seed": seed,
        "tasks": {
            t.name: {
                "table": [t.vocab.decode([i]) for i in t.table_tokens()],
                "dropped": built.dropped[t.name],
            }
            for t in built.tasks
        },
        "baselines": baselines,
        "curve": records,
        "emergence": rows,
    }
    if out is not None:
        atomic_write_json(Path(out), summary)
        log(f"wrote {out}")
    return summary


def _check_replaceable(path: Path) -> None:
    """``--out`` may be a new file or one an earlier ``eval --model`` wrote; anything else is kept."""
    if not path.exists():
        return
    try:
        ours = path.is_file() and {"model", "curve"} <= json.loads(path.read_text()).keys()
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise SmalllmError(
            f"--out: '{path}' exists and is not an earlier `eval --model` output; not replaced"
        )
