"""The training loop, on accelerate: ``prepare_run_dir`` -> ``Trainer(cfg).fit()``.

The same code runs on one CPU process, several CPU processes (gloo) and GPUs (DDP, FSDP,
DeepSpeed): accelerate owns devices, precision and process groups; the stream hands each process
its own rows; the model is a stock transformers model. Read it top to bottom:

1. ``setup``: accelerator, corpus and stream, model, optimizer, schedule, resume;
2. ``fit``: ``train_step`` until the token budget is spent, callbacks after each step;
3. ``save`` / ``state_dict``: the whole resumable state is one dict.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from transformers.utils import logging as hf_logging

from smalllm.config import RunConfig, config_to_dict, save_config
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.errors import SmalllmError
from smalllm.model.build import build_model, count_params
from smalllm.train import checkpoint as ckpt
from smalllm.train.callbacks.base import Callback
from smalllm.train.plan import resolve_device, resolve_precision
from smalllm.train.preflight import Checked, check_config, check_run
from smalllm.train.schedule import lr_factor

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SHARDED_STATE = "sharded_state"


class TrainingDiverged(SmalllmError):
    """The loss became NaN or infinite and ``train.nan_policy=stop``."""


def check_run_dir(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, reading only, a run directory that :func:`prepare_run_dir` would refuse (a dry run
    and the pre-flight of a run call this before anything slow or anything that writes)."""
    run_dir = Path(cfg.run_dir)
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    if exists and not resume and not overwrite:
        raise SmalllmError(
            f"run_dir: '{run_dir}' already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise SmalllmError(f"run_dir: '{run_dir}' has no run to resume ({CONFIG_FILE} missing)")
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SmalllmError(f"run_dir: cannot write to '{run_dir}' ({os.strerror(errno.ENOTDIR)})")


def prepare_run_dir(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Create (or reopen, with ``resume``) the run directory; never silently overwrite one."""
    check_run_dir(cfg, resume=resume, overwrite=overwrite)
    run_dir = Path(cfg.run_dir)
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and overwrite and not resume:
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SmalllmError(f"run_dir: cannot write to '{run_dir}' ({exc.strerror})") from None
    return run_dir


class Trainer:
    """Pretrains one model on one stream; see the module docstring for the order of things."""

    def __init__(
        self,
        cfg: RunConfig,
        resume: bool = False,
        callbacks: list[Callback] | None = None,
        log=print,
        checked: Checked | None = None,
    ) -> None:
        """``checked``: the result of :func:`~smalllm.train.preflight.check_config` for ``cfg``."""
        self.checked = checked
        self.cfg = cfg
        self.resume = resume
        self.run_dir = Path(cfg.run_dir)
        self.log_line = log
        self.step = 0
        self.tokens = 0
        self.stop_requested: str | None = None
        self.eval_seconds = 0.0
        self.train_seconds = 0.0
        self.skipped_steps = 0
        self.setup()
        self.callbacks = callbacks if callbacks is not None else default_callbacks(self)

    # ------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        hf_logging.disable_progress_bar()  # no "Writing model shards" bars in the middle of our own
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            # Before anything touches CUDA, so no process opens a context on GPU 0 by accident.
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = resolve_device(t.device)
        mixed = {"bf16": "bf16", "fp16": "fp16"}.get(resolve_precision(t.precision, device), "no")
        trackers = (["tensorboard"] if cfg.logging.tensorboard else []) + (
            ["wandb"] if cfg.logging.wandb else []
        )
        self.accelerator = Accelerator(
            cpu=device == "cpu",
            mixed_precision=mixed,
            log_with=trackers or None,
            project_dir=str(self.run_dir),
        )
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process

        with acc.main_process_first():
            corpus = ensure_corpus(cfg.data, num_proc=min(4, os.cpu_count() or 1), log=self.info)
        self.tokenizer = corpus.tokenizer
        self.sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        # The same checks as the pre-flight in `train` and the dry run, now with the real world size.
        prebuilt = (
            self.checked.families if self.checked and self.checked.vocab_size == len(self.tokenizer) else None
        )
        families, self.plan = check_run(
            cfg, self.tokenizer, world=self.world, sharded=self.sharded, families=prebuilt
        )
        self.stream = TaskStream(cfg.data, corpus, t.global_batch_size, families=families)
        self.total_steps = self.plan.steps

        set_seed(t.seed)
        model = build_model(
            cfg.model,
            vocab_size=len(self.tokenizer),
            max_seq_len=cfg.data.seq_len,
            pad_id=self.tokenizer.pad_token_id,
            eos_id=self.tokenizer.eos_token_id,
        )
        self.num_params, self.num_non_embedding = count_params(model)
        if t.gradient_checkpointing:
            # transformers 5 renamed it; older releases only have the first name.
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()

        resume_from = self._resume_point()
        self.resumed = resume_from is not None
        if resume_from is not None:
            ckpt.load_model_weights(model, resume_from)
        optimizer = self._optimizer(model)
        if t.compile:
            model = torch.compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # The schedule is a pure function of the step; not prepared, so accelerate cannot step it per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            lambda s: lr_factor(s, self.total_steps, t),
        )
        if resume_from is not None:
            self.load_state_dict(ckpt.load_trainer_state(resume_from))
            if self.is_main:
                _truncate_metrics(self.run_dir / METRICS_FILE, self.step)
            if self.sharded:  # optimizer shards (and sharded weights) come back through accelerate
                acc.load_state(str(resume_from / SHARDED_STATE))
            self.info(f"resumed from {resume_from} at step {self.step} ({self.tokens:,} tokens)")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / CONFIG_FILE)
        if trackers:
            acc.init_trackers("tb", config=_flat_hparams(config_to_dict(cfg)))

    def _resume_point(self) -> Path | None:
        if not self.resume:
            return None
        root = self.run_dir / "checkpoints"
        latest = ckpt.latest_checkpoint(root)
        broken = sorted(root.glob(f"{ckpt.PREFIX}*")) if latest is None and root.is_dir() else []
        if broken:
            # Restarting from step 0 would silently throw the run away: make the user decide.
            problem = ckpt.verify_checkpoint(broken[-1], checksums=True)
            raise SmalllmError(
                f"{broken[-1]}: no usable checkpoint to resume from ({problem}); "
                "restore it, or start over with --overwrite"
            )
        if latest is None:
            self.info("no complete checkpoint found; starting from step 0")
            return latest
        self._check_resumable(latest)
        return latest

    def _check_resumable(self, checkpoint: Path) -> None:
        """Refuse overrides that would make the resumed stream differ from the one trained on."""
        from smalllm.config import load_config

        saved_file = self.run_dir / CONFIG_FILE
        if not saved_file.is_file():
            return
        saved = load_config(saved_file)
        if config_to_dict(saved)["data"] != config_to_dict(self.cfg)["data"]:
            raise SmalllmError(
                f"data: differs from the run in {self.run_dir}; a resumed run must read the same stream"
            )
        if saved.train.global_batch_size != self.cfg.train.global_batch_size:
            raise SmalllmError(
                f"train.global_batch_size: {self.cfg.train.global_batch_size} differs from the resumed run's "
                f"{saved.train.global_batch_size} (the stream position is counted in its batches)"
            )
        if saved.train.max_tokens != self.cfg.train.max_tokens and self.cfg.train.schedule != "constant":
            self.info(
                f"note: train.max_tokens changed on resume; the {self.cfg.train.schedule} schedule is "
                f"recomputed for the new length from {checkpoint.name} on"
            )

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        t = self.cfg.train
        embeddings = {id(model.get_input_embeddings().weight)}
        decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in embeddings]
        no_decay = [p for p in model.parameters() if p.ndim < 2 or id(p) in embeddings]
        fused = self.plan.device == "cuda"
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr,
            betas=(t.beta1, t.beta2),
            eps=t.eps,
            fused=fused,
            foreach=None if fused else True,
        )

    # --------------------------------------------------------------------------------------- fit

    def fit(self) -> dict:
        """Train until the token budget is spent or a stop is requested; return the run summary."""
        start = time.perf_counter()
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, self._request_stop)
        status = "completed"
        try:
            # Set once, not per step (a walk over every module); evaluation restores it when done.
            self.model.train()
            for cb in self.callbacks:
                cb.on_fit_start(self)
            while self.step < self.total_steps and self.stop_requested is None:
                metrics = self.train_step()
                self.step += 1
                self.tokens += self.plan.tokens_per_step
                self._agree_on_stop()
                for cb in self.callbacks:
                    cb.on_step_end(self, metrics)
            if self.stop_requested is not None:
                status = "interrupted"
        except TrainingDiverged:
            status = "diverged"
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.wall_seconds = time.perf_counter() - start
            self.status = status
            for cb in self.callbacks:
                cb.on_fit_end(self)
            self.accelerator.end_training()
            summary = self.summary()  # written for every outcome, divergence included
        return summary

    def _request_stop(self, signum, _frame) -> None:
        self.stop_requested = signal.Signals(signum).name

    def _agree_on_stop(self) -> None:
        """All processes stop after the same step when any of them got a signal (else: deadlock in
        the next collective while one rank waits to checkpoint)."""
        if self.world == 1:
            return
        flag = torch.tensor(0.0 if self.stop_requested is None else 1.0, device=self.accelerator.device)
        if float(self.accelerator.reduce(flag, reduction="sum")) > 0 and self.stop_requested is None:
            self.stop_requested = "signal on another process"

    def train_step(self) -> dict:
        """One optimizer step over this process's share of global batch ``self.step``."""
        t0 = time.perf_counter()
        model, acc = self.model, self.accelerator
        batch = self.stream.batch(self.step, self.rank, self.world)
        micro = self.cfg.train.micro_batch_size
        n_labels = len(self.stream.labels)
        label_loss = torch.zeros(n_labels, device=acc.device)
        label_count = torch.zeros(n_labels, device=acc.device)
        total_loss = torch.zeros((), device=acc.device)
        for i in range(self.plan.accumulation):
            rows = slice(i * micro, (i + 1) * micro)
            ids = torch.from_numpy(batch.input_ids[rows]).to(acc.device)
            sync = i == self.plan.accumulation - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                logits = model(input_ids=ids).logits
                targets = _targets(ids, batch.loss_mask[rows])
                loss = _lm_loss(logits, targets)
                acc.backward(loss / self.plan.accumulation)
            total_loss += loss.detach() / self.plan.accumulation
            _per_label(logits.detach(), targets, loss.detach(), batch, rows, label_loss, label_count)
        grad_norm = self._clip()
        lr = self.scheduler.get_last_lr()[0]
        finite = math.isfinite(grad_norm) and bool(torch.isfinite(total_loss))
        if self.plan.precision == "fp16":
            # The grad scaler skips overflowing steps and lowers its scale itself; that is not divergence.
            self.optimizer.step()
            finite = finite or acc.optimizer_step_was_skipped
        elif finite:
            self.optimizer.step()
        else:
            label_loss.zero_()
            label_count.zero_()
            self._non_finite(total_loss)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed
        return {
            "loss": total_loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "step_time": elapsed,
            "label_loss": label_loss,
            "label_count": label_count,
            "skipped": not finite,
        }

    def _clip(self) -> float:
        clip = self.cfg.train.grad_clip
        params = self.model.parameters()
        norm = self.accelerator.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        return float(norm)

    def _non_finite(self, loss: torch.Tensor) -> None:
        self.skipped_steps += 1
        if self.cfg.train.nan_policy == "skip":
            self.info(f"step {self.step}: non-finite loss/gradient ({float(loss):.4g}); batch skipped")
            return
        raise TrainingDiverged(
            f"train.nan_policy=stop: loss became {float(loss):.4g} at step {self.step}; "
            "the last good checkpoint is kept (lower train.lr or set train.nan_policy=skip)"
        )

    # ------------------------------------------------------------------------------ state / save

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this step left off."""
        state = {
            "step": self.step,
            "tokens": self.tokens,
            # Sharded optimizers are saved by accelerate.save_state (see save); plain ones live here.
            "optimizer": None if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "data": {"next_row": self.step * self.cfg.train.global_batch_size, "seed": self.cfg.data.seed},
            "world": self.world,
            "skipped_steps": self.skipped_steps,
        }
        if self.accelerator.scaler is not None:
            state["grad_scaler"] = self.accelerator.scaler.state_dict()
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["world"] != self.world:
            self.info(f"note: resuming a {state['world']}-process run with {self.world} processes")
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if "grad_scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        if state["data"]["next_row"] != self.step * self.cfg.train.global_batch_size:
            raise SmalllmError(
                "train.global_batch_size: the checkpoint's stream position does not match this batch size"
            )

    def save(self) -> Path | None:
        """Write a checkpoint of the current step. The main process writes; under FSDP/DeepSpeed
        every process takes part in gathering the weights and writing its optimizer shard."""
        acc = self.accelerator
        root = self.run_dir / "checkpoints"
        tmp = ckpt.stage_checkpoint(root, self.step) if self.is_main else ckpt.staging_dir(root, self.step)
        acc.wait_for_everyone()
        weights = None
        if self.sharded:
            weights = acc.get_state_dict(self.model)  # collective: gathers the full weights on rank 0
            acc.save_state(str(tmp / SHARDED_STATE))
        path = None
        if self.is_main:
            meta = {"tokens": self.tokens, "preset": self.cfg.model.preset}
            model = acc.unwrap_model(self.model)
            path = ckpt.publish_checkpoint(
                tmp, self.step, model, self.tokenizer, self.state_dict(), meta, weights
            )
            ckpt.prune_checkpoints(root, self.cfg.train.keep_last)
        acc.wait_for_everyone()
        return path

    # ----------------------------------------------------------------------------------- logging

    def info(self, message: str) -> None:
        if getattr(self, "accelerator", None) is None or self.accelerator.is_main_process:
            self.log_line(message)

    def write_record(self, record: dict) -> None:
        """Append one metrics record (JSONL) and forward its numbers to the trackers."""
        if not self.is_main:
            return
        with open(self.run_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k not in ("step",)}
        if self.accelerator.trackers:
            self.accelerator.log(numbers, step=record["step"])

    def summary(self) -> dict:
        total_rows = self.step * self.cfg.train.global_batch_size
        summary = {
            "status": getattr(self, "status", "running"),
            "steps": self.step,
            "tokens": self.tokens,
            "params": self.num_params,
            "non_embedding_params": self.num_non_embedding,
            "wall_seconds": getattr(self, "wall_seconds", 0.0),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "eval_share": self.eval_seconds / max(1e-9, getattr(self, "wall_seconds", 0.0)),
            "skipped_steps": self.skipped_steps,
            "frequencies": self.stream.frequency_table(total_rows),
        }
        summary.update(getattr(self, "extra_summary", {}))
        if self.is_main:
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float))
        return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after ``step`` (and a torn last line) before a resumed run appends.

    Without this, steps between the checkpoint and a crash would appear twice in the curves.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss (fp32) over the targets that are not -100, fused in one kernel."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def _targets(ids: torch.Tensor, loss_mask: np.ndarray) -> torch.Tensor:
    """Next-token targets [b, L-1]; positions outside the loss mask are -100 (ignored)."""
    targets = ids[:, 1:]
    if loss_mask.all():  # packed rows have no padding: nothing to mask
        return targets
    keep = torch.from_numpy(loss_mask[:, 1:]).to(ids.device)
    return targets.masked_fill(~keep, -100)


def _per_label(
    logits: torch.Tensor, targets: torch.Tensor, mean_loss: torch.Tensor, batch, rows, sums, counts
) -> None:
    """Accumulate loss per stream label: the *answer* tokens of each task, and background tokens.

    The fused mean loss already holds the sum over all targets, so per-token losses are computed
    only at task positions (a small share of the row); background = total - task tokens.
    """
    device = targets.device
    labels = torch.from_numpy(batch.task_ids[rows, 1:].astype(np.int64)).to(device)
    answer = torch.from_numpy(batch.answer_mask[rows, 1:]).to(device)
    valid = targets != -100
    task = (labels > 0) & valid
    ce = F.cross_entropy(logits[:, :-1][task].float(), targets[task], reduction="none")
    lab, ans = labels[task], answer[task]
    sums.index_add_(0, lab[ans], ce[ans])
    counts.index_add_(0, lab[ans], torch.ones_like(ce[ans]))
    n_valid = valid.sum()
    sums[0] += mean_loss * n_valid - ce.sum()
    counts[0] += n_valid - task.sum()


def _flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, int | float | str | bool):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


def default_callbacks(trainer: Trainer) -> list[Callback]:
    from smalllm.train.callbacks.checkpointer import Checkpointer
    from smalllm.train.callbacks.metrics_logger import MetricsLogger
    from smalllm.train.callbacks.speed_monitor import SpeedMonitor

    callbacks: list[Callback] = [SpeedMonitor()]
    if trainer.cfg.eval.enabled:
        from smalllm.train.callbacks.evaluator import EvaluatorCallback

        callbacks.append(EvaluatorCallback())
    callbacks += [MetricsLogger(), Checkpointer()]
    return callbacks


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """Run (or resume) training for ``cfg``; returns the summary written to ``summary.json``."""
    if os.environ.get("RANK", "0") == "0":  # one process checks and creates it; the others follow
        # Everything that can refuse the config comes before the run directory is touched, so a
        # bad config (or a typo next to --overwrite) writes nothing and deletes nothing.
        check_run_dir(cfg, resume=resume, overwrite=overwrite)  # fast refusals first
        checked = check_config(cfg, build_corpus=True, log=log)
        prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    else:
        checked = None
    trainer = Trainer(cfg, resume=resume, log=log, checked=checked)
    return trainer.fit()
