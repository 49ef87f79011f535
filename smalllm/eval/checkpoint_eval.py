"""``smalllm eval``: score a saved checkpoint (or any HF model directory with a compatible tokenizer)
on the held-out sets a run was tracked on."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from smalllm.checkpoints import MANIFEST, latest_checkpoint, list_checkpoints, verify_checkpoint
from smalllm.data.eval_sets import load_eval_sets
from smalllm.data.tokenizer import load_tokenizer
from smalllm.errors import SmalllmError, did_you_mean
from smalllm.eval.baselines import format_baselines, read_baselines
from smalllm.eval.emergence import load_eval_config
from smalllm.eval.evaluator import evaluate
from smalllm.run_record import (
    CHECKPOINTS_DIR,
    RunDir,
    append_jsonl,
    check_appendable_jsonl,
    is_checkpoint_name,
    owns_run_name,
    read_json,
)


class CheckpointGone(SmalllmError):
    """The checkpoint directory disappeared while it was being read (a training run rotated it out)."""


READ_ATTEMPTS = 3
"""How often the latest checkpoint of a run that is still training is looked up again when the run
deletes it (keeping only its newest checkpoints) while it is being loaded."""


def resolve_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(model directory, run directory) for a checkpoint, a run directory, or a plain model directory."""
    run = RunDir(path)
    if run.checkpoints_dir.is_dir() or run.is_run():
        latest = latest_checkpoint(run.checkpoints_dir) if run.checkpoints_dir.is_dir() else None
        if latest is None:
            holder = run.lock_holder()
            training = f" yet (being trained by {holder.describe()})" if holder is not None else ""
            raise SmalllmError(f"{path}: the run has no complete checkpoint{training}")
        return latest, path
    if not (path / "config.json").is_file():  # a Hugging Face model directory, not a run file
        raise SmalllmError(f"{path}: not a model directory (no config.json) nor a run directory")
    if (path / MANIFEST).is_file() or is_checkpoint_name(path.name):
        problem = verify_checkpoint(path, checksums=True)
        if problem is not None:
            raise SmalllmError(f"{path}: incomplete or corrupt checkpoint ({problem})")
    owner = path.parent.parent if path.parent.name == CHECKPOINTS_DIR else None
    return path, owner


def evaluate_checkpoint(
    path: str | Path,
    run_dir: str | Path | None = None,
    tasks: list[str] | None = None,
    out: str | Path | None = None,
    batch_size: int = 128,
    log=print,
) -> dict:
    """Evaluate a model on a run's saved eval sets, append a JSONL record and return the metrics.

    The output is checked before any work (a directory or a file that is not JSONL is refused); when
    it lies in a run directory, that run's lock is held until the record is written, so a training
    run and an evaluation never write one run at once.
    """
    hf_logging.disable_progress_bar()  # no "Loading weights" bar: stdout has the results, stderr errors
    model_dir, inferred_run = resolve_checkpoint(Path(path))
    run_path = Path(run_dir) if run_dir else inferred_run
    if run_path is None:
        raise SmalllmError(f"{path}: pass --run RUN_DIR to say whose held-out sets to evaluate on")
    run = RunDir(run_path)
    out_file = Path(out) if out else run.eval_results_file
    check_appendable_jsonl(out_file, "--out")
    target = RunDir(out_file.parent)
    if target.is_run() and owns_run_name(out_file.name) and out_file != target.eval_results_file:
        raise SmalllmError(
            f"--out: '{out_file}' is one of the run's own files; results go to '{target.eval_results_file}'"
        )
    with target.locked() if target.is_run() else contextlib.nullcontext():
        for attempt in range(READ_ATTEMPTS):
            try:
                return _evaluate(model_dir, run, tasks, out_file, batch_size, log)
            except CheckpointGone:
                # A run directory names its latest checkpoint, which a training run replaces as it
                # goes: take the new latest. A checkpoint named explicitly is not substituted.
                if inferred_run is None or Path(path) != inferred_run or attempt == READ_ATTEMPTS - 1:
                    raise
                model_dir, _ = resolve_checkpoint(Path(path))
    raise AssertionError("unreachable")


def _evaluate(
    model_dir: Path, run: RunDir, tasks: list[str] | None, out_file: Path, batch_size: int, log
) -> dict:
    sets_file = run.eval_sets_file
    if not sets_file.is_file():
        raise SmalllmError(f"{sets_file}: not found (the run saves it when evaluation is enabled)")
    sets, background = load_eval_sets(sets_file)
    if tasks:
        names = [s.task for s in sets]
        for t in tasks:
            if t not in names:
                raise SmalllmError(f"--tasks: '{t}' is not evaluated in {run.path}{did_you_mean(t, names)}")
        sets = [s for s in sets if s.task in tasks]

    try:
        tokenizer = load_tokenizer(model_dir, field=str(model_dir))
        run_tokenizer = _run_tokenizer(run, model_dir)
        if run_tokenizer is not None and run_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SmalllmError(
                f"{model_dir}: tokenizer differs from the run's, so its ids would mean other tokens"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise SmalllmError(f"{model_dir}: cannot load the model ({str(exc).splitlines()[0]})") from None
    except SmalllmError:
        if not model_dir.is_dir():
            raise CheckpointGone(
                f"{model_dir}: the checkpoint was deleted while it was being read (its run is still "
                "training and keeps only its newest checkpoints); evaluate again, or a checkpoint it keeps"
            ) from None
        raise
    step_info = _step_info(model_dir)  # now: a running trainer may delete the checkpoint later
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise SmalllmError(f"{model_dir}: model vocabulary is smaller than its tokenizer's")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    results = evaluate(
        model,
        sets,
        background,
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        batch_tokens=load_eval_config(run.path).batch_tokens,  # the run's own budget (memory)
    )
    record = {"checkpoint": str(model_dir), "time": time.time(), **step_info, **results}
    append_jsonl(out_file, record)
    for key, value in sorted(results.items()):
        log(f"{key:<40} {value:.4f}")
    baselines = read_baselines(run.baselines_file)
    if baselines is not None:
        # What the numbers above must beat to mean anything: chance and the one-position rule.
        log("baselines (" + run.baselines_file.name + "):\n" + format_baselines(baselines))
    log(f"appended to {out_file}")
    return record


def _run_tokenizer(run: RunDir, model_dir: Path):
    """The run's tokenizer, when the model being scored comes from elsewhere (else None)."""
    if model_dir.parent == run.checkpoints_dir:
        return None  # the run's own checkpoint carries the run's tokenizer
    own = list_checkpoints(run.checkpoints_dir)
    return load_tokenizer(own[-1], field=str(own[-1])) if own else None


def _step_info(model_dir: Path) -> dict:
    manifest = read_json(model_dir / MANIFEST)
    return {"step": manifest.get("step"), "tokens": manifest.get("tokens")} if manifest else {}
