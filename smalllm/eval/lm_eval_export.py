"""``smalllm export lm-eval``: a run's (or freshly built) task instances as lm-evaluation-harness tasks.

Each task becomes one YAML and one JSONL data file, and all of them one group (``smalllm_<name>``),
so ``lm_eval --include_path DIR --tasks smalllm_<name>`` scores any HF model on them:

* a task whose sub-skills all declare an answer set and whose answers are single tokens is a
  ``multiple_choice`` over that set; its ``acc`` is then smalllm's ``choice_acc`` (the argmax of the
  log-likelihood restricted to the set);
* any other task is a ``loglikelihood`` of its answer, whose ``acc`` (lm-eval's ``is_greedy``) is
  smalllm's ``acc`` (exact match of greedy decoding).

Harness and model see text, so the split between context and continuation must be the one the ids
had. lm-eval encodes ``context`` alone and ``context + continuation`` whole, takes the continuation
as the difference, and first moves whitespace at the end of a context into the continuation. The
export therefore writes the answer's text as the continuation with an empty ``target_delimiter``
(so the leading space of a word-initial answer stays where the tokenizer put it), and keeps only
instances that pass :func:`smalllm.tasks.text.text_problem`, every alternative of a choice included.
Dropped instances are counted and reported; a task with none left is refused.

Data files are named in the YAMLs by absolute path (the harness reads ``data_files`` relative to the
working directory), so the export is used where it was written, or exported again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from smalllm.data.eval_sets import TaskEvalSet
from smalllm.errors import SmalllmError
from smalllm.run_record import atomic_write_text
from smalllm.tasks.text import render, text_problem


@dataclass
class ExportedTask:
    """One exported task: the instances kept (as scored), how many were dropped, and its lm-eval form."""

    name: str
    """The lm-eval task name."""
    eval_set: TaskEvalSet
    """The text-faithful instances, in the order of the data file."""
    dropped: int
    output_type: str
    """``multiple_choice`` or ``loglikelihood``."""


def group_name(name: str) -> str:
    """An lm-eval name for ``name``: lower case, letters, digits and underscores, ``smalllm_`` first."""
    clean = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "run"
    return f"smalllm_{clean}"


def is_choice_task(es: TaskEvalSet) -> bool:
    """Every sub-skill declares its answer set and every answer is one token."""
    return es.has_answer_sets and all(len(i.answer) == 1 for i in es.instances)


def faithful_set(tokenizer: Any, es: TaskEvalSet, choice: bool) -> tuple[TaskEvalSet, int]:
    """``es`` without the instances whose text does not re-tokenize to their ids, and how many went."""
    kept = [
        inst
        for inst in es.instances
        if text_problem(tokenizer, inst, es.prefix, es.answer_set(inst.skill) if choice else None) is None
    ]
    return replace(es, instances=kept), len(es.instances) - len(kept)


def export_lm_eval(
    sets: list[TaskEvalSet], tokenizer: Any, out: str | Path, name: str, log: Callable[[str], None] = print
) -> list[ExportedTask]:
    """Write one YAML and JSONL per task of ``sets`` and a group YAML into ``out``; return what was written.

    The instances are ids of ``tokenizer``; ``name`` names the group (a run's directory name).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SmalllmError(f"--out: '{out}' exists and is not a directory")
    group = group_name(name)
    exported: list[ExportedTask] = []
    for es in sets:
        if not es.instances:
            continue
        choice = is_choice_task(es)
        kept, dropped = faithful_set(tokenizer, es, choice)
        if not kept.instances:
            first = text_problem(tokenizer, es.instances[0], es.prefix)
            raise SmalllmError(
                f"{es.task}: none of its {len(es.instances)} instances survive id -> text -> id in this "
                f"tokenizer (first: {first or 'an answer choice re-tokenizes differently'}); nothing to export"
            )
        exported.append(ExportedTask(f"{group}_{group_name(es.task)[8:]}", kept, dropped, _type(choice)))
    if not exported:
        raise SmalllmError("export: no task instances to export")
    out.mkdir(parents=True, exist_ok=True)
    for task in exported:
        data = (out / f"{task.name}.jsonl").resolve()
        atomic_write_text(data, "".join(json.dumps(doc) + "\n" for doc in _docs(tokenizer, task)))
        _write_yaml(out / f"{task.name}.yaml", _task_yaml(task, data))
        log(
            f"{task.eval_set.task}: {len(task.eval_set.instances)} instance(s) as {task.output_type}"
            + (f", {task.dropped} dropped (their text re-tokenizes to other ids)" if task.dropped else "")
        )
    _write_yaml(
        out / f"{group}.yaml",
        {
            "group": group,
            "task": [t.name for t in exported],
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
            "metadata": {"version": 1.0},
        },
    )
    log(f"wrote {len(exported)} task(s) to {out}; run: lm_eval --include_path {out} --tasks {group} ...")
    return exported


def _type(choice: bool) -> str:
    return "multiple_choice" if choice else "loglikelihood"


def _docs(tokenizer: Any, task: ExportedTask) -> list[dict]:
    es = task.eval_set
    docs = []
    for inst in es.instances:
        text = render(tokenizer, inst, es.prefix)
        doc: dict[str, Any] = {"context": text.context, "answer": text.answer, "skill": es.skills[inst.skill]}
        if task.output_type == "multiple_choice":
            answers = list(es.answer_set(inst.skill) or ())
            doc["choices"] = [tokenizer.decode([t]) for t in answers]
            doc["label"] = answers.index(inst.answer[0])
        docs.append(doc)
    return docs


def _task_yaml(task: ExportedTask, data: Path) -> dict:
    doc = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": task.output_type,
        "doc_to_text": "context",
        # The answer's own text carries its leading space (if any): no delimiter is inserted.
        "target_delimiter": "",
        "metadata": {"version": 1.0, "smalllm_task": task.eval_set.task, "dropped": task.dropped},
    }
    if task.output_type == "multiple_choice":
        doc.update(doc_to_choice="choices", doc_to_target="label")
        doc["metric_list"] = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    else:
        doc["doc_to_target"] = "answer"
        doc["metric_list"] = [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
        ]
    return doc


def _write_yaml(path: Path, doc: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def export_run(
    run_dir: str | Path, out: str | Path, log: Callable[[str], None] = print
) -> list[ExportedTask]:
    """Export the held-out sets a run was tracked on, in the tokenizer of its latest checkpoint."""
    from smalllm.checkpoints import list_checkpoints
    from smalllm.data.eval_sets import load_eval_sets
    from smalllm.data.tokenizer import load_tokenizer
    from smalllm.run_record import RunDir

    run = RunDir(Path(run_dir))
    if not run.eval_sets_file.is_file():
        raise SmalllmError(f"{run.eval_sets_file}: not found (the run saves it when evaluation is enabled)")
    saved = list_checkpoints(run.checkpoints_dir) if run.checkpoints_dir.is_dir() else []
    if not saved:
        raise SmalllmError(f"{run_dir}: the run has no checkpoint to take its tokenizer from")
    sets, _ = load_eval_sets(run.eval_sets_file)
    tokenizer = load_tokenizer(saved[-1], field=str(saved[-1]))
    return export_lm_eval(sets, tokenizer, out, Path(run_dir).resolve().name, log)


def export_tasks(
    tokenizer_name: str,
    tasks: list[str],
    out: str | Path,
    params: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    eval_size: int = 256,
    log: Callable[[str], None] = print,
) -> list[ExportedTask]:
    """Export ``tasks`` built in a tokenizer (a local directory or hub id) as ``smalllm eval --model``
    builds them: tables from its word-initial tokens, drawn with ``seed``."""
    from smalllm.eval.any_model import build_outside_tasks, load_tokenizer_of

    tokenizer = load_tokenizer_of(tokenizer_name, None, field="--tokenizer")
    built = build_outside_tasks(tokenizer, tasks, params, seed, eval_size)
    return export_lm_eval(built.sets, tokenizer, out, Path(tokenizer_name).name, log)
