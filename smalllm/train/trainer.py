"""The training loop, on accelerate: ``train(cfg)`` = ``Trainer(cfg)`` (set up) -> ``open_run`` -> ``fit()``.

The same code runs on one CPU process, several CPU processes (gloo) and GPUs (DDP, FSDP,
DeepSpeed): accelerate owns devices, precision and process groups; the stream hands each process
its own rows; the model is a stock transformers model. Read it top to bottom:

1. ``setup``: accelerator, corpus and stream, model, optimizer, schedule, resume. Everything a run
   can refuse is refused here, before the run directory is written to;
2. ``open_run``: the run directory (marker, one-writer lock, status ``running``, config);
3. ``fit``: ``begin``, then ``run_step`` (one optimizer step, then the callbacks) until the token
   budget is spent or a stop is requested; whatever ends it is recorded in the run's status record
   (completed, interrupted, diverged, or failed with its error);
4. ``save`` / ``state_dict``: the whole resumable state is one dict, the callbacks' included.

Callbacks see the run only through the contract in :mod:`smalllm.train.callbacks.base`: a
:class:`RunContext`, a :class:`StepRecord` per step, a :class:`FitEnd`, and the :class:`Control`
surface this module implements (``_TrainerControl``).

The hot path does not wait for the device: a step queues its work and returns. Loss, gradient norm
and the non-finite flag stay on the device; a non-finite step is skipped there (fused AdamW reads
``found_inf``, as under a grad scaler). The host reads them only at *sync steps* (log, eval and
checkpoint steps, the last step, a checkpoint or evaluation requested in between): there the
trainer settles the steps since the last one (counts skips, applies ``train.nan_policy``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from tensorboard.compat.proto.summary_pb2 import Summary
from transformers.utils import logging as hf_logging

from smalllm import checkpoints as ckpt
from smalllm.config import RunConfig, config_to_dict, save_config
from smalllm.data.eval_sets import TaskEvalSet
from smalllm.data.mixture_policy import metric_key
from smalllm.data.passes import passes_line
from smalllm.data.shards import corpus_dir, ensure_corpus
from smalllm.data.stream import STREAM_FORMAT, TaskStream
from smalllm.errors import SmalllmError
from smalllm.eval.config import EvalConfig
from smalllm.eval.evaluator import evaluate
from smalllm.eval.retention import bracket_steps, eval_steps_of
from smalllm.eval.samples import greedy_complete
from smalllm.eval.schedule import eval_steps
from smalllm.labels import Label
from smalllm.model.build import build_model, count_params
from smalllm.model.forward import Forward, agrees, training_forward
from smalllm.run_record import (
    CHECKPOINT_SHARDED_STATE,
    TRACKER_DIR,
    RunDir,
    atomic_write,
    error_line,
    is_empty_dir,
)
from smalllm.tasks.base import Instance
from smalllm.train.callbacks.base import (
    Callback,
    Control,
    FitEnd,
    GradientSplit,
    Reduction,
    RunContext,
    StepRecord,
)
from smalllm.train.config import TrainConfig
from smalllm.train.environment import collect_environment, startup_seconds
from smalllm.train.gradients import reference_gradient, split_gradients
from smalllm.train.launch import check_local_rank, check_world_size, target_of
from smalllm.train.loss import next_token_targets, to_device, token_losses
from smalllm.train.plan import resolve_device, resolve_precision
from smalllm.train.preflight import check_run, check_trackers
from smalllm.train.schedule import lr_factor


class TrainingDiverged(SmalllmError):
    """The loss became NaN or infinite and ``train.nan_policy=stop``."""


class TrainingFailed(SmalllmError):
    """An exception ended the run; the message is the one line recorded in the run's status record."""


TENSORBOARD_FLUSH_S = 10
"""Seconds between flushes of the TensorBoard event file (records are written without a flush)."""

TENSORBOARD_BATCH = 64
"""TensorBoard events are handed to the writer this many records at a time, or at the first record
TENSORBOARD_FLUSH_S after the last hand-over (so sparse logging hands each record over at once),
at checkpoints and at the end: one wake-up of its writer thread per batch rather than per record."""


class Trainer:
    """Pretrains one model on one stream; see the module docstring for the order of things."""

    def __init__(
        self,
        cfg: RunConfig,
        resume: bool = False,
        callbacks: list[Callback] | None = None,
        log=print,
        run: RunDir | None = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.run = run if run is not None else RunDir(cfg.run_dir)
        self.log_line = log
        self.status = "running"
        self.error: BaseException | None = None
        self._opened = False
        self._callback_state: dict = {}
        self.step = 0
        self.tokens = 0
        self.stop_requested: str | None = None
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.skipped_steps = 0
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        """(step, non-finite flag, loss) of the steps since the last sync step, on the device."""
        # (event, step, wall time) not yet handed to the writer, and when the last hand-over was.
        self._tensorboard_events: list[tuple[Summary, int, float]] = []
        self._tensorboard_handed_over = 0.0
        self._last_eval: dict | None = None
        """The last ``kind: eval`` record written (the model card quotes it); None: not known yet."""
        self._mixture_set: TaskEvalSet | None = None
        """The held-out instances scored at each round of an online mixture (built on first use)."""
        self.mixture_eval_seconds = 0.0
        """Seconds this attempt spent scoring the online mixture's rounds (not in ``eval_seconds``)."""
        self._signal: str | None = None
        self._begun = False
        self.startup_seconds: float | None = None
        self._summary_fields: dict = {}
        self.control: Control = _TrainerControl(self)
        self.setup()
        self.callbacks = callbacks if callbacks is not None else default_callbacks(cfg)
        """Run in this order after every step; the list may be changed until ``fit``/``run_step`` begins."""

    # ------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        check_trackers(cfg.logging)  # a missing tracker package is a startup error, not silence
        hf_logging.disable_progress_bar()  # no "Writing model shards" bars in the middle of our own
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        # Resolved once, here: the accelerator, the plan and the run record all use these.
        device = resolve_device(t.device)
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            # Before anything touches CUDA, so no process opens a context on GPU 0 by accident.
            torch.cuda.set_device(check_local_rank(torch.cuda.device_count()))
        precision = resolve_precision(t.precision, device)
        if device == "cuda":  # TF32 matmuls (fp32 runs, and fp32 parts of mixed precision)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        mixed = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
        trackers = (["tensorboard"] if cfg.logging.tensorboard else []) + (
            ["wandb"] if cfg.logging.wandb else []
        )
        self.trackers = trackers
        self.accelerator = Accelerator(
            cpu=device == "cpu",
            mixed_precision=mixed,
            log_with=trackers or None,
            project_dir=str(self.run_dir),
        )
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        check_world_size(self.world)
        self.target = target_of(acc, precision)
        self.environment = self._environment() if self.is_main else {}  # only the main one records it
        self.info(
            f"device {_device_label(acc.device)}, precision {precision}, world size {self.world} "
            f"({acc.distributed_type.value}, sharding {self.target.sharding})"
        )

        if self.resume:  # before building anything: a changed corpus would be built only to be refused
            self._check_same_corpus(corpus_dir(cfg.data).name)
        with acc.main_process_first():
            corpus = ensure_corpus(cfg.data, num_proc=min(4, os.cpu_count() or 1), log=self.info)
        self.corpus_name = corpus.path.name
        self.tokenizer = corpus.tokenizer
        self.sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if cfg.interference.enabled and self.sharded:
            raise SmalllmError(
                "interference.enabled: the measurement needs whole gradients on every process "
                f"(one process or DDP), not {acc.distributed_type.value}'s sharded ones"
            )
        # The dry run's checks (preflight.check_config runs this same check_run), with the real world
        # size and sharding; `train` sets the trainer up before it touches the run directory.
        families, self.plan = check_run(cfg, self.tokenizer, corpus, target=self.target)
        if cfg.interference.enabled and self.plan.precision == "fp16":
            # The split backpropagates each part scaled by 1/targets with no grad scaler: a small
            # task part underflows in fp16 (bf16 has fp32's range).
            raise SmalllmError(
                "interference.enabled: not under fp16 (its gradients are unscaled and underflow); "
                "use train.precision=bf16 or fp32"
            )
        for family in families:  # the checks passed: later runs may read these pools from the cache
            for pool in family.pools:
                pool.keep_in_cache()
        self.stream = TaskStream(cfg.data, corpus, t.global_batch_size, families=families)
        self.total_steps = self.plan.steps
        self.info(passes_line(self.total_steps * t.global_batch_size, self.stream.n_windows, exact=True))
        dropped = {task: n for task, n in self.stream.held_out_dropped.items() if n}
        searched, background = self.stream.decontaminated_tokens, len(corpus.train)
        if dropped:
            self.info(
                "held-out sets: dropped "
                + ", ".join(f"{n} {task}" for task, n in dropped.items())
                + " instance(s) found verbatim in the training background (data.decontaminate)"
            )
        if 0 < searched < background:
            self.info(
                f"note: data.decontaminate searched the first {searched:,} of the {background:,} training "
                "background tokens; `smalllm audit` scans the rows the run reads"
            )

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
        optimizer = build_optimizer(model, t, self.plan.device)
        if t.compile:
            model = torch.compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self._found_inf = self._device_skip(precision)
        # Whole-tensor gradients without a grad scaler (one process, or DDP): accelerate's optimizer
        # and clipping wrappers add nothing there but Python time on every step (about 1% of a
        # micro model's), so the loop calls torch directly. FSDP, DeepSpeed, XLA and fp16 keep them.
        self._direct = precision != "fp16" and acc.distributed_type in _WHOLE_GRADIENTS
        self._params = list(self.model.parameters())
        self._forward, self.forward_kind = self._training_forward()
        # (Looked up per step, not bound here: the LR scheduler wraps the inner optimizer's step later.)
        self._stepped = (
            getattr(self.optimizer, "optimizer", self.optimizer) if self._direct else self.optimizer
        )
        # The schedule is a pure function of the step; not prepared, so accelerate cannot step it per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            lambda s: lr_factor(s, self.total_steps, t),
        )
        if resume_from is not None:
            self.load_state_dict(ckpt.load_trainer_state(resume_from))
            if self.sharded:  # optimizer shards (and sharded weights) come back through accelerate
                acc.load_state(str(resume_from / CHECKPOINT_SHARDED_STATE))
            self.info(f"resumed from {resume_from} at step {self.step} ({self.tokens:,} tokens)")
        self.injection_brackets = (
            bracket_steps(
                self.stream.injection_steps(cfg.eval.around_injections, self.total_steps),
                cfg.eval.injection_cycles,
                self.total_steps,
            )
            if cfg.eval.enabled and cfg.eval.around_injections
            else []
        )
        self._eval_steps = (
            frozenset(
                eval_steps(
                    self.total_steps,
                    cfg.eval,
                    self.plan.tokens_per_step,
                    extra=eval_steps_of(self.injection_brackets),
                )
            )
            if cfg.eval.enabled
            else frozenset()
        )
        self.context = RunContext(
            plan=self.plan,
            train=t,
            eval=cfg.eval,
            logging=cfg.logging,
            labels=list(self.stream.labels),
            total_steps=self.total_steps,
            eval_steps=self._eval_steps,
            start_step=self.step,
            start_tokens=self.tokens,
            resumed=self.resumed,
            is_main=self.is_main,
            rank=self.rank,
            world=self.world,
            device=acc.device,
            run_dir=self.run,
            reduce=self._reduce,
            gather=self._gather,
            eval_sets=self.stream.eval_sets,
            background_holdout=self.stream.background_holdout,
            fit_instances=self.stream.fit_instances,
            decode=self._decode,
            batch_instances=self.stream.batch_instances,
            reference_instances=self.stream.reference_instances,
        )

    def _training_forward(self) -> tuple[Forward, str]:
        """The step's forward pass and its kind: ``lean`` (:func:`smalllm.model.forward.training_forward`,
        under the accelerator's autocast as the prepared model's forward runs) where the model is not
        wrapped (one process, not compiled) and the lean pass gives exactly the model's logits on a
        probe row; else ``model``, the model's own forward (DDP and FSDP must see the call)."""
        model, acc = self.model, self.accelerator

        def own(ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids).logits

        # Wrapped (compiled, here or by accelerate's dynamo setting): the wrapper must see the call.
        wrapped = self.cfg.train.compile or acc.unwrap_model(model) is not model
        lean = None if wrapped or acc.distributed_type != DistributedType.NO else training_forward(model)
        if lean is None:
            return own, "model"
        forward = lean
        if acc.mixed_precision != "no":

            def forward(ids: torch.Tensor) -> torch.Tensor:
                with acc.autocast():
                    return lean(ids)

        # A probe row of the run's vocabulary without its pad and end-of-document tokens (the model's
        # forward warns about padding at a row's ends): two forward passes of a few tokens, no random draws.
        specials = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        tokens = [i for i in range(min(len(self.tokenizer), 18)) if i not in specials]
        probe = torch.tensor([tokens[: min(16, self.cfg.data.seq_len)]], device=acc.device)
        if not agrees(model, forward, probe):
            self.info("note: the lean training forward differs from the model's own; using the model's")
            return own, "model"
        return forward, "lean"

    def _device_skip(self, precision: str) -> torch.Tensor | None:
        """The ``found_inf`` flag fused AdamW skips its update by (on the device, no sync), or None
        where the step is decided on the host: fp16 (the grad scaler owns the flag), DeepSpeed and
        optimizers that do not read it."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        fused = isinstance(inner, torch.optim.AdamW) and inner.defaults.get("fused")
        if precision == "fp16" or not fused or self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return None
        inner.found_inf = torch.zeros((), device=self.accelerator.device)
        return inner.found_inf

    def _environment(self) -> dict:
        """The run's facts for its summary and hparams: the machine's, then what this run uses."""
        acc = self.accelerator
        return {
            **collect_environment(),
            "device": _device_label(acc.device),
            "precision": self.target.precision,
            "world_size": self.world,
            "distributed_type": acc.distributed_type.value,
            "sharding": self.target.sharding,
        }

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model being trained, without accelerate's wrappers (DDP, compile, mixed precision)."""
        return self.accelerator.unwrap_model(self.model)

    def _resume_point(self) -> Path | None:
        if not self.resume:
            return None
        if self.is_main:
            self.run.check_start(resume=True)  # no config or no checkpoint: a one-line refusal
        root = self.run.checkpoints_dir
        latest = ckpt.latest_checkpoint(root)
        if latest is None:
            # Restarting from step 0 would silently throw the run away: make the user decide.
            broken = sorted(root.glob(f"{ckpt.PREFIX}*"))
            problem = ckpt.verify_checkpoint(broken[-1], checksums=True) if broken else "none published"
            where = broken[-1] if broken else root
            raise SmalllmError(
                f"{where}: no usable checkpoint to resume from ({problem}); "
                "restore it, or start over with --overwrite"
            )
        self._check_resumable(latest)
        return latest

    def open_run(self) -> None:
        """Make the run directory this trainer's: refusals, marker (first), lock, ``running``, config.

        Called once setup has validated everything, so a refused run writes nothing. Only the main
        process owns the directory; the others write checkpoint shards into it through ``save``.
        """
        if self._opened:
            return
        if self.is_main:
            run = self.run
            if not run.holds_lock:
                run.check_start(resume=self.resume)
            run.create()
            run.acquire()
            try:
                run.mark_running(
                    self.step,
                    facts={
                        "environment": self.environment,
                        "stream_format": STREAM_FORMAT,
                        "corpus": self.corpus_name,
                        "held_out_dropped": self.stream.held_out_dropped,
                    },
                )
                if self.resumed:
                    run.truncate_metrics(self.step)
                    run.truncate_mixture(self.step)
                atomic_write(run.config_file, lambda tmp: save_config(self.cfg, tmp))
            except BaseException as exc:
                self._record_failure(exc)
                run.release()
                if isinstance(exc, OSError):
                    raise SmalllmError(f"run_dir: cannot write to '{run.path}' ({error_line(exc)})") from exc
                raise
        if self.trackers:
            hparams = {**config_to_dict(self.cfg), "environment": self.environment}
            self.accelerator.init_trackers(
                TRACKER_DIR,
                config=_flat_hparams(hparams),
                init_kwargs={"tensorboard": {"flush_secs": TENSORBOARD_FLUSH_S}},
            )
        self._opened = True

    def _check_same_corpus(self, corpus: str) -> None:
        """Refuse to resume on another background corpus than the run started on: its cache entry is
        named by content, so an edited corpus file gives another name under the same data config."""
        started_on = self.run.read_summary().get("corpus")
        if started_on is not None and started_on != corpus:  # None: recorded before runs named it
            raise SmalllmError(
                f"data: the background corpus changed since this run started ({started_on} -> {corpus}); "
                "a resumed run must read the same stream: restore the corpus files, or start over "
                "with --overwrite"
            )

    def _check_resumable(self, checkpoint: Path) -> None:
        """Refuse overrides that would make the resumed stream differ from the one trained on."""
        from smalllm.config import load_run_config

        saved_file = self.run.config_file
        if not saved_file.is_file():
            return
        # The same data config meant other rows before a format change (issue 12: task tables from
        # background tokens, placement independent between tasks); continuing would splice two streams.
        trained_on = self.run.read_summary().get("stream_format", 1)
        if trained_on != STREAM_FORMAT:
            raise SmalllmError(
                f"run_dir: {self.run_dir} was trained on stream format {trained_on} and this smalllm builds "
                f"format {STREAM_FORMAT} (see smalllm/data/stream.py); finish it with the smalllm version "
                "that started it, or start it again with --overwrite"
            )
        saved = load_run_config(saved_file)
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

    # --------------------------------------------------------------------------------------- fit

    def fit(self) -> dict:
        """Train until the token budget is spent or a stop is requested; return the run summary.

        Whatever ends the run is recorded in its status record before this returns or raises: completed,
        interrupted (SIGTERM/SIGINT or a callback's stop request), diverged, or failed with its one-line
        error and step. A failure is raised again as a one-line :class:`SmalllmError`, so the command
        exits non-zero.
        """
        self.open_run()
        start = time.perf_counter()
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        error: BaseException | None = None
        try:
            for s in previous:
                signal.signal(s, self._request_stop)
            self.begin()
            while self.step < self.total_steps and self.stop_requested is None:
                self.run_step()
            self.settle()  # a stop between sync steps: its skips are counted before the end
        except BaseException as exc:  # recorded below, then raised again
            error = exc
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.wall_seconds = time.perf_counter() - start
        if error is None and self.stop_requested is None and 0 < self.step <= self.skipped_steps:
            error = TrainingFailed(
                f"train.nan_policy=skip: all {self.step} steps had a non-finite loss or gradient and were "
                "skipped, so nothing was trained (lower train.lr)"
            )
        self.status = _status_of(error, self.stop_requested)
        try:
            error = self._end(error)
        finally:
            if self.is_main:
                self.run.release()
        if error is not None:
            if isinstance(error, SmalllmError | KeyboardInterrupt):
                raise error
            raise TrainingFailed(f"training failed at step {self.step}: {error_line(error)}") from error
        return self.last_summary

    def _end(self, error: BaseException | None) -> BaseException | None:
        """Run the callbacks' ends and write the summary, whatever failed before; return the error
        that ends the run (the first one: later ones are usually its consequences)."""
        self.error = error  # callbacks see it: nothing is checkpointed after an exception
        for cb in self.callbacks:
            end = FitEnd(
                status=self.status,
                step=self.step,
                tokens=self.tokens,
                error=None if self.error is None else error_line(self.error),
                stop_reason=self.stop_requested,
                wall_seconds=self.wall_seconds,
            )
            try:
                cb.on_fit_end(end, self.control)
            except Exception as exc:
                if self.error is None:
                    self.error, self.status = exc, "failed"
        try:
            if self.is_main:  # before end_training closes (and flushes) the writers
                self._hand_over_tensorboard_events()
        except Exception as exc:
            if self.error is None:
                self.error, self.status = exc, "failed"
        try:
            self.accelerator.end_training()
        except Exception as exc:
            if self.error is None:
                self.error, self.status = exc, "failed"
        error = self.error
        try:
            self.last_summary = self.summary()
        except Exception as exc:
            if error is None:
                error, self.status, self.error = exc, "failed", exc
            self.last_summary = {"status": self.status, "steps": self.step, "tokens": self.tokens}
            self._record_failure(error)
        return error

    def _record_failure(self, exc: BaseException) -> None:
        """Best effort: mark the run failed when the full summary could not be written (its small
        record may still fit where the big write did not)."""
        if not self.is_main:
            return
        with contextlib.suppress(Exception):
            self.run.mark_failed(error_line(exc), self.step)

    def begin(self) -> None:
        """Ready the loop, once: training mode, and the callbacks started with the state they had at
        the checkpoint (e.g. the open logging window). ``fit`` and ``run_step`` call it."""
        if self._begun:
            return
        self._begun = True
        # Set once, not per step (a walk over every module); evaluation restores it when done.
        self.model.train()
        for cb in self.callbacks:
            state = self._callback_state.get(type(cb).__name__)
            if state is not None:
                cb.load_state_dict(state, self.context)
        if self.stream.mixture is not None and self.step == 0:
            self._log_round(0)
        for cb in self.callbacks:
            cb.on_fit_start(self.context, self.control)
        # Process start (imports included) to the first step: the start-up a user waits through.
        self.startup_seconds = startup_seconds()

    def run_step(self) -> StepRecord:
        """One step of the loop: an optimizer step over global batch ``self.step``, the stop agreed
        across processes, then every callback's ``on_step_end``; returns the step's record.

        ``fit`` is this in a loop, plus the run's start and end; a benchmark may call it directly
        (it begins the loop first if ``fit`` has not).
        """
        if not self._begun:
            self.begin()
        record = self._train_step()
        self._agree_on_stop()
        self._mixture_round()  # before the callbacks: a checkpoint of this step holds the new round
        for cb in self.callbacks:
            cb.on_step_end(record, self.control)
        return record

    def _request_stop(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self._signal is None:
            self._signal = name
        if self.world == 1 and self.stop_requested is None:  # nothing to agree on: stop after this step
            self.stop_requested = name

    def _agree_on_stop(self) -> None:
        """Turn a signal into a stop request. All processes stop after the same step when any of them
        got a signal (else: deadlock in the next collective while one rank waits to checkpoint); with
        several processes they agree at sync steps only (a reduction waits for the device), so a
        signal stops the run at the next log, eval or checkpoint step."""
        if self.world == 1 or not self._is_sync_step(self.step):
            return
        flag = torch.tensor(0.0 if self._signal is None else 1.0, device=self.accelerator.device)
        if float(self.accelerator.reduce(flag, reduction="sum")) > 0 and self.stop_requested is None:
            self.stop_requested = self._signal or "signal on another process"

    def _train_step(self) -> StepRecord:
        """One optimizer step over this process's share of global batch ``self.step``; advances
        ``step`` and ``tokens``."""
        t0 = time.perf_counter()
        model, acc = self.model, self.accelerator
        batch = self.stream.batch(self.step, self.rank, self.world)
        micro = self.plan.micro_batch
        n_labels = len(self.stream.labels)
        label_loss = torch.zeros(n_labels, device=acc.device)
        counts = np.zeros(n_labels, dtype=np.int64)  # known on the host: no device work for them
        total_loss = None
        for i in range(self.plan.accumulation):
            rows = slice(i * micro, (i + 1) * micro)
            ids = to_device(batch.input_ids[rows], acc.device)
            sync = i == self.plan.accumulation - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                logits = self._forward(ids)
                token_loss = token_losses(logits, next_token_targets(ids, batch.loss_mask[rows]))
                summed = token_loss.sum()
                n_targets = int(batch.loss_mask[rows, 1:].sum())
                loss = summed / n_targets  # the mean over the targets
                if self.plan.accumulation > 1:
                    loss = loss / self.plan.accumulation
                self._backward(loss)
            total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
            _per_label(token_loss.detach(), summed.detach(), n_targets, batch, rows, label_loss, counts)
        label_count = to_device(counts.astype(np.float32), acc.device)
        grad_norm = self._clip()
        lr = self.scheduler.get_last_lr()[0]
        if self.plan.precision == "fp16":
            # The grad scaler skips overflowing steps (on the device) and lowers its scale itself; that
            # is not divergence, a non-finite loss is.
            skipped = ~torch.isfinite(total_loss)
            self.optimizer.step()
        else:
            skipped = ~(torch.isfinite(grad_norm) & torch.isfinite(total_loss))
            if self._found_inf is not None:
                self._found_inf.copy_(skipped)  # fused AdamW leaves weights and moments as they are
                self._stepped.step()
            elif not skipped.item():  # no device-side skip for this optimizer: decide on the host
                self._stepped.step()
        label_loss = torch.where(skipped, 0.0, label_loss)
        label_count = torch.where(skipped, 0.0, label_count)
        self.scheduler.step()
        self._stepped.zero_grad(set_to_none=True)
        self._pending.append((self.step, skipped, total_loss))
        self.step += 1
        self.tokens += self.plan.tokens_per_step
        if self._is_sync_step(self.step):
            # Inside the timed part: the wait for the device is the steps' own time.
            self.settle()
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed
        return StepRecord(
            step=self.step,
            tokens=self.tokens,
            loss=total_loss,
            grad_norm=grad_norm,
            lr=lr,
            step_time=elapsed,
            skipped=skipped,
            label_loss=label_loss,
            label_count=label_count,
        )

    # ---------------------------------------------------------------------------- mixture rounds

    def _mixture_round(self) -> None:
        """At a round boundary of ``data.mixture``: hand the policy the held-out losses of the round
        just ended (online policy; the data layer cannot evaluate), then log the next round's weights.
        Runs on every process: the evaluation is a collective under FSDP/DeepSpeed."""
        mixture = self.stream.mixture
        if mixture is None or self.step % mixture.round_steps:
            return
        if self.step >= self.total_steps:  # no round follows the last step: nothing to weight or score
            return
        r = self.step // mixture.round_steps
        if mixture.needs_eval and len(mixture.losses) < r:
            mixture.record(r - 1, self._round_losses())
        self._log_round(r)

    def _round_losses(self) -> np.ndarray:
        """Validation answer loss per sub-skill of the mixture family, on ``data.mixture.eval_size``
        instances each (held out, and not those the run's evaluation reports); every process takes
        the main one's, so all place the same instances."""
        if self._mixture_set is None:
            self._mixture_set = self.stream.mixture_eval_set(self.cfg.data.mixture.eval_size)
        held_out = self._mixture_set
        t0 = time.perf_counter()
        metrics = self.control.evaluate([held_out], None, self.cfg.eval)
        self.mixture_eval_seconds += time.perf_counter() - t0
        losses = [metrics[Label(held_out.task, skill).key("loss")] for skill in held_out.skills]
        return np.asarray(self._gather(losses)[0], dtype=np.float64)

    def _log_round(self, r: int) -> None:
        """Round ``r``'s weights (and the losses they came from) to metrics.jsonl and mixture.jsonl."""
        mixture = self.stream.mixture
        assert mixture is not None
        line = mixture.round_record(r, self.step, self.tokens)
        record = {"kind": "mixture", "step": self.step, "tokens": self.tokens, "round": r}
        record.update({metric_key(label): w for label, w in line["weights"].items()})
        record.update({f"{metric_key(label)}/loss": x for label, x in line.get("losses", {}).items()})
        self._write_metrics(record)
        if self.is_main:
            self.run.append_mixture(line)

    def _backward(self, loss: torch.Tensor) -> None:
        if self._direct:  # accelerate's backward would only divide by its accumulation steps (1)
            loss.backward()
        else:  # the grad scaler (fp16) or DeepSpeed's engine takes the loss
            self.accelerator.backward(loss)

    def _clip(self) -> torch.Tensor:
        """Clip the gradients; returns their norm before clipping (0-dim, on the device)."""
        clip = self.cfg.train.grad_clip
        max_norm = clip if clip > 0 else float("inf")
        if self._direct:
            norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        else:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        if isinstance(norm, torch.Tensor):
            return norm.detach()
        return torch.tensor(float(norm), device=self.accelerator.device)

    def _is_sync_step(self, step: int) -> bool:
        """A step after which the host reads the device: a log, checkpoint or evaluation step, or the last."""
        t = self.cfg.train
        return (
            step % t.log_every == 0
            or step == self.total_steps
            or (bool(t.checkpoint_every) and step % t.checkpoint_every == 0)
            or step in self._eval_steps
        )

    def settle(self) -> None:
        """Read the non-finite flags of the steps since the last call (one wait for the device) and
        apply ``train.nan_policy`` to them: count the skips, log each, or raise :class:`TrainingDiverged`
        at the first one. Called at sync steps, before a checkpoint or an evaluation, and at the end.

        The non-finite step itself was skipped on the device (weights and Adam moments untouched); with
        ``stop``, the steps after it until this sync step were trained, and nothing was checkpointed.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.stack([flag for _, flag, _ in pending]).tolist()
        if not any(flags):
            return
        losses = torch.stack([loss.float() for _, _, loss in pending]).tolist()
        for (step, _, _), bad, loss in zip(pending, flags, losses, strict=True):
            if bad:
                self._non_finite(step, loss)

    def _non_finite(self, step: int, loss: float) -> None:
        self.skipped_steps += 1
        if self.cfg.train.nan_policy == "skip":
            self.info(f"step {step}: non-finite loss/gradient ({loss:.4g}); batch skipped")
            return
        raise TrainingDiverged(
            f"train.nan_policy=stop: loss became {loss:.4g} at step {step}; "
            "the last good checkpoint is kept (lower train.lr or set train.nan_policy=skip)"
        )

    # ------------------------------------------------------------------------------ state / save

    def state_dict(self, callbacks: dict | None = None) -> dict:
        """Everything needed to continue exactly where this step left off. ``callbacks``: their
        states when already collected (a collective, so ``save`` collects them on every process)."""
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
            # What the callbacks accumulated since their last output: without it, a run resumed from a
            # step that is not a multiple of train.log_every would log a shorter window.
            "callbacks": self._callback_states() if callbacks is None else callbacks,
        }
        if self.stream.mixture is not None:  # the weights of past rounds place their rows
            state["mixture"] = self.stream.mixture.state_dict()
        if self.accelerator.scaler is not None:
            state["grad_scaler"] = self.accelerator.scaler.state_dict()
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _callback_states(self) -> dict:
        # Called on every process: a callback may gather its per-process state (a collective).
        states = {}
        for cb in self.callbacks:
            state = cb.state_dict(self.context)
            if state is not None:
                states[type(cb).__name__] = state
        return states

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
        self._callback_state = dict(state.get("callbacks") or {})
        if self.stream.mixture is not None:
            if "mixture" not in state:
                raise SmalllmError("data.mixture: the checkpoint holds no mixture state to resume from")
            self.stream.mixture.load_state_dict(state["mixture"])
        if "grad_scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        if state["data"]["next_row"] != self.step * self.cfg.train.global_batch_size:
            raise SmalllmError(
                "train.global_batch_size: the checkpoint's stream position does not match this batch size"
            )

    def save(self) -> Path | None:
        """Write a checkpoint of the current step. The main process writes; under FSDP/DeepSpeed
        every process takes part in gathering the weights and writing its optimizer shard."""
        self.settle()  # a diverged run is not checkpointed; the skip count is part of the state
        self._flush_trackers()  # the curves a resumed run continues are on disk with the checkpoint
        acc = self.accelerator
        root = self.run.checkpoints_dir
        tmp = ckpt.stage_checkpoint(root, self.step) if self.is_main else ckpt.staging_dir(root, self.step)
        acc.wait_for_everyone()
        weights = None
        if self.sharded:
            weights = acc.get_state_dict(self.model)  # collective: gathers the full weights on rank 0
            acc.save_state(str(tmp / CHECKPOINT_SHARDED_STATE))
        callbacks = self._callback_states()  # on every process: a callback may gather its state
        path = None
        if self.is_main:
            state = self.state_dict(callbacks=callbacks)
            meta = {"tokens": self.tokens, "preset": self.plan.shape.name}  # the preset, or the custom shape
            model = self.unwrapped_model
            path = ckpt.publish_checkpoint(
                tmp, self.step, model, self.tokenizer, state, meta, weights, card=self._model_card()
            )
            for kept in ckpt.prune_checkpoints(root, self.cfg.train.keep_last):
                self.info(f"note: kept {kept} past train.keep_last: it holds files smalllm did not write")
        acc.wait_for_everyone()
        return path

    def _model_card(self) -> str:
        """The checkpoint's README.md; its metrics are the run's last evaluation up to this step."""
        from smalllm.train.model_card import CardFacts, model_card

        facts = CardFacts(self.step, self.tokens, self.num_params, self.num_non_embedding)
        if self._last_eval is None:  # a resumed run before its first evaluation: read the file once
            evals = [r for r in self.run.read_metrics() if r.get("kind") == "eval"]
            self._last_eval = evals[-1] if evals else {}
        return model_card(self.cfg, facts, [self._last_eval] if self._last_eval else [])

    # ----------------------------------------------------------------------------------- logging

    def info(self, message: str) -> None:
        if getattr(self, "accelerator", None) is None or self.accelerator.is_main_process:
            self.log_line(message)

    def _reduce(self, tensor: torch.Tensor, reduction: Reduction) -> torch.Tensor:
        if self.world == 1:  # what accelerate returns for one process, without its Python per call
            return tensor.clone()
        return self.accelerator.reduce(tensor, reduction=reduction)

    def _gather(self, obj: object) -> list:
        return gather_object([obj]) if self.world > 1 else [obj]

    def _decode(self, ids) -> str:
        """Token ids as text with the run's tokenizer, special tokens kept (an EOD shows)."""
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=False)

    def _write_metrics(self, record: dict) -> None:
        """Append one metrics record (JSONL) and forward its numbers to the trackers (main process)."""
        if not self.is_main:
            return
        self.run.append_metrics(record)
        if record.get("kind") == "eval":
            self._last_eval = record
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k not in ("step",)}
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                # One event holding every scalar of the record, handed over in batches and written
                # without a flush: accelerate's log() adds one event per scalar and flushes, about
                # 1 ms a record. The writer's thread flushes every TENSORBOARD_FLUSH_S; checkpoints
                # and the end of the run flush too.
                values = [Summary.Value(tag=key, simple_value=value) for key, value in numbers.items()]
                self._tensorboard_events.append((Summary(value=values), record["step"], time.time()))
            else:
                tracker.log(numbers, step=record["step"])
        if len(self._tensorboard_events) >= TENSORBOARD_BATCH or (
            self._tensorboard_events
            and time.monotonic() - self._tensorboard_handed_over >= TENSORBOARD_FLUSH_S
        ):
            self._hand_over_tensorboard_events()

    def _hand_over_tensorboard_events(self) -> None:
        events, self._tensorboard_events = self._tensorboard_events, []
        self._tensorboard_handed_over = time.monotonic()
        for tracker in self.accelerator.trackers if events else []:
            if tracker.name == "tensorboard":
                for summary, step, wall_time in events:  # stamped when recorded, not when handed over
                    tracker.writer.file_writer.add_summary(summary, step, wall_time)

    def _flush_trackers(self) -> None:
        if not self.is_main:
            return
        self._hand_over_tensorboard_events()
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.flush()

    def summary(self) -> dict:
        """The run's status record (written by the main process) and its return value: the fields
        of :data:`TRAINER_SUMMARY_FIELDS`, then what the callbacks contributed."""
        total_rows = self.step * self.cfg.train.global_batch_size
        summary = {
            "status": self.status,
            "steps": self.step,
            "tokens": self.tokens,
            "params": self.num_params,
            "non_embedding_params": self.num_non_embedding,
            "wall_seconds": self.wall_seconds,
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps,
            "corpus": self.corpus_name,  # the cache entry read (named by content): resume checks it
            "frequencies": self.stream.frequency_table(total_rows),
            "environment": self.environment,
            "stream_format": STREAM_FORMAT,
            # Epochs over the background corpus so far (above 1: documents were seen again).
            "background_passes": self.stream.background_passes(total_rows),
            # Evaluated instances left out because the training background holds them verbatim.
            "held_out_dropped": self.stream.held_out_dropped,
            # This process's start (interpreter and imports included) to its first step; None off
            # Linux and for a later run of the same process.
            "startup_seconds": self.startup_seconds,
            # "lean": the step's forward pass skipped transformers' input preparation; "model": it
            # called the model (Trainer._training_forward says when).
            "training_forward": self.forward_kind,
        }
        if self.injection_brackets:  # what smalllm.eval.retention reads the cycles back with
            summary["injections"] = {
                "task": self.cfg.eval.around_injections,
                "brackets": [list(b) for b in self.injection_brackets],
            }
        if self.stream.mixture is not None and self.stream.mixture.needs_eval:
            summary["mixture_eval_seconds"] = self.mixture_eval_seconds
        summary.update(self._summary_fields)  # what the callbacks contributed (eval time, emergence)
        if self.error is not None:  # diverged, failed, or interrupted by an exception
            summary["error"] = error_line(self.error)
        if self.status == "failed":
            summary["failed_at_step"] = self.step
        if self.is_main:
            previous = self.run.read_summary()
            summary.update({k: previous[k] for k in ("attempt", "started") if k in previous})
            self.run.write_summary(summary)
        return summary


TRAINER_SUMMARY_FIELDS = frozenset(
    {
        "status",
        "steps",
        "tokens",
        "params",
        "non_embedding_params",
        "wall_seconds",
        "train_seconds",
        "skipped_steps",
        "corpus",
        "frequencies",
        "environment",
        "stream_format",
        "background_passes",
        "held_out_dropped",
        "startup_seconds",
        "training_forward",
        "injections",
        "mixture_eval_seconds",
        "error",
        "failed_at_step",
        "attempt",
        "started",
    }
)
"""The summary fields the trainer owns; a callback's contribution may not replace them."""


class _TrainerControl(Control):
    """The callbacks' control surface (see :class:`~smalllm.train.callbacks.base.Control`)."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def request_stop(self, reason: str) -> None:
        if self._trainer.stop_requested is None:
            self._trainer.stop_requested = reason

    @property
    def stop_reason(self) -> str | None:
        return self._trainer.stop_requested

    def save_checkpoint(self) -> Path | None:
        return self._trainer.save()

    def evaluate(
        self, eval_sets: list[TaskEvalSet], background: np.ndarray | None, cfg: EvalConfig
    ) -> dict[str, float]:
        trainer = self._trainer
        trainer.settle()
        with trainer.accelerator.autocast():
            return evaluate(
                trainer.unwrapped_model,
                eval_sets,
                background,
                batch_size=cfg.batch_size,
                pad_id=trainer.tokenizer.pad_token_id,
                batch_tokens=cfg.batch_tokens,
            )

    def generate(self, prompts: list, max_new_tokens: int) -> list[list[int]]:
        trainer = self._trainer
        trainer.settle()
        with trainer.accelerator.autocast():
            return greedy_complete(trainer.unwrapped_model, prompts, max_new_tokens)

    def gradient_split(
        self,
        labels: Sequence[int],
        reference: Sequence[Instance],
        prefix: Sequence[int] = (),
        select: Callable[[str], bool] | None = None,
    ) -> GradientSplit:
        trainer = self._trainer
        if trainer.sharded:
            raise SmalllmError("gradient_split: needs whole gradients (one process or DDP), not sharded ones")
        acc, plan = trainer.accelerator, trainer.plan
        # The unwrapped model: no DDP hooks fire in its backward, so nothing is all-reduced behind our
        # back; the one reduction below averages over processes as DDP does.
        model = trainer.unwrapped_model
        named = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad and (select is None or select(n))
        ]
        names, params = [n for n, _ in named], [p for _, p in named]
        if not params:
            raise ValueError("gradient_split: select accepts none of the model's parameters")
        batch = trainer.stream.batch(trainer.step, trainer.rank, trainer.world)
        wanted = np.asarray(sorted(set(labels)), dtype=batch.task_ids.dtype)

        def micro_batches():
            for i in range(plan.accumulation):
                rows = slice(i * plan.micro_batch, (i + 1) * plan.micro_batch)
                ids = to_device(batch.input_ids[rows], acc.device)
                targets = next_token_targets(ids, batch.loss_mask[rows])
                task = np.isin(batch.task_ids[rows, 1:], wanted) & batch.loss_mask[rows, 1:]
                yield ids, targets, task

        mine = list(reference)[trainer.rank :: trainer.world]  # each process scores a share
        devices = [acc.device] if acc.device.type == "cuda" else []
        # Forked RNG: a model with dropout draws here as in a step; the run's stream of draws is untouched.
        with torch.random.fork_rng(devices=devices), acc.autocast():
            g_t, g_nt = split_gradients(model, micro_batches(), plan.accumulation, params)
            g_r, count = reference_gradient(
                model, mine, params, prefix=prefix, batch_tokens=plan.micro_batch * trainer.cfg.data.seq_len
            )
        task_tokens = torch.tensor(
            float((np.isin(batch.task_ids[:, 1:], wanted) & batch.loss_mask[:, 1:]).sum())
        )
        counts = torch.stack([task_tokens, torch.tensor(float(count))]).to(acc.device)
        sizes = [p.numel() for p in params]
        flat = torch.cat([torch.cat([g.flatten().float() for g in gs]) for gs in (g_t, g_nt, g_r)])
        if trainer.world > 1:  # one all-reduce for the three gradients: the mean, as DDP's
            flat = acc.reduce(flat, reduction="mean")
            counts = acc.reduce(counts, reduction="sum")
        task_total, ref_total = (int(round(float(c))) for c in counts)
        n = sum(sizes)
        # The reference shares were sums: the mean over processes, times world, over the total count.
        parts = [flat[:n], flat[n : 2 * n], flat[2 * n :] * (trainer.world / max(ref_total, 1))]
        split = [
            dict(zip(names, (t.view_as(p) for t, p in zip(part.split(sizes), params)))) for part in parts
        ]
        return GradientSplit(split[0], split[1], split[2], task_total, ref_total)

    def write_metrics(self, record: dict) -> None:
        self._trainer._write_metrics(record)

    def write_text(self, texts: dict[str, str], step: int) -> None:
        trainer = self._trainer
        # accelerate's trackers take a string value as text (TensorBoard: SummaryWriter.add_text).
        if trainer.is_main and trainer.accelerator.trackers and texts:
            trainer.accelerator.log(dict(texts), step=step)

    def add_summary(self, **fields: Any) -> None:
        owned = sorted(TRAINER_SUMMARY_FIELDS & fields.keys())
        if owned:
            raise ValueError(f"summary field(s) {', '.join(owned)} are written by the trainer itself")
        self._trainer._summary_fields.update(fields)

    def log(self, message: str) -> None:
        self._trainer.info(message)


_WHOLE_GRADIENTS = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
"""Distribution types whose processes hold whole (unsharded) gradients: none, or DDP."""


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: str) -> torch.optim.Optimizer:
    """Fused AdamW over ``model``; no weight decay on biases, norms and the input embeddings.

    Fused on every device (CPU included): its kernel skips a step whose ``found_inf`` flag is set
    without the host reading the flag, which is how the trainer skips non-finite steps without a
    wait for the device. (On the CPU it differs from the foreach AdamW in the last bits of the
    weights; runs stay bit-reproducible.) ``device`` is kept for callers."""
    del device
    embeddings = {id(model.get_input_embeddings().weight)}
    decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.ndim < 2 or id(p) in embeddings]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        eps=t.eps,
        fused=True,
    )


def _device_label(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return device.type


def _status_of(error: BaseException | None, stop_requested: str | None) -> str:
    if error is None:
        return "interrupted" if stop_requested is not None else "completed"
    if isinstance(error, TrainingDiverged):
        return "diverged"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return "failed"


def _per_label(
    token_loss: torch.Tensor,
    total: torch.Tensor,
    n_targets: int,
    batch,
    rows,
    sums: torch.Tensor,
    counts: np.ndarray,
) -> None:
    """Accumulate loss per stream label: the *answer* tokens of each task, and background tokens.

    ``token_loss`` holds every target position's loss (0 where ignored), ``total`` their sum and
    ``n_targets`` how many targets there are (the loss mask's count, taken once by the step), so
    background = total − the task positions' losses: only the few task positions are read on the
    device, through one transfer of host-computed indices (no masked selection waits for the device).
    ``counts`` (host) gets the number of targets behind each sum: the batch's arrays say it.
    """
    labels = batch.task_ids[rows, 1:]
    task_at = (labels > 0) & batch.loss_mask[rows, 1:]
    if not task_at.any():  # background only: nothing to read on the device
        sums[0] += total
        counts[0] += n_targets
        return
    flat = np.flatnonzero(task_at)  # in [b * (L-1)], the targets' positions
    answer = np.flatnonzero(batch.answer_mask[rows, 1:].reshape(-1)[flat])  # indices into task
    answer_labels = labels.reshape(-1)[flat[answer]].astype(np.int64)
    task = flat + flat // labels.shape[1]  # in [b * L], token_loss's layout (smalllm.train.loss)
    moved = to_device(np.concatenate([task, answer, answer_labels]), token_loss.device)
    at, pick, lab = moved.split([len(task), len(answer), len(answer_labels)])
    task_loss = token_loss[at]
    sums.index_add_(0, lab, task_loss[pick])
    sums[0] += total - task_loss.sum()
    counts += np.bincount(answer_labels, minlength=len(counts))
    counts[0] += n_targets - len(task)


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


def default_callbacks(cfg: RunConfig) -> list[Callback]:
    """The callbacks of a ``smalllm train`` run: evaluation and its samples (when enabled), metrics,
    checkpoints.

    Each works alone; the order only decides what a step's hooks see first (an evaluation record is
    written before the training record of the same step, a checkpoint after both).
    """
    from smalllm.train.callbacks.checkpointer import Checkpointer
    from smalllm.train.callbacks.metrics_logger import MetricsLogger

    callbacks: list[Callback] = []
    if cfg.eval.enabled:
        from smalllm.train.callbacks.evaluator import EvaluatorCallback

        callbacks.append(EvaluatorCallback())
    if cfg.eval.samples_on:  # after the evaluator: a step's eval record comes before its samples
        from smalllm.train.callbacks.samples import SamplesCallback

        callbacks.append(SamplesCallback())
    if cfg.interference.enabled:  # before the checkpointer: a checkpoint holds its last measured step
        from smalllm.train.callbacks.interference import InterferenceCallback

        callbacks.append(InterferenceCallback(cfg.interference))
    callbacks += [MetricsLogger(), Checkpointer()]
    return callbacks


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """Run (or resume) training for ``cfg``; returns the summary it records.

    The order keeps a researcher's files safe: refuse what ``run_dir`` does not allow (a foreign
    directory, a run in use, a resume without checkpoint), validate everything by setting the trainer
    up, and only then touch the directory. ``overwrite`` moves the old run aside, starts the new one
    in its place, and deletes the old one only once the new one is set up (else it is moved back).
    """
    if threading.current_thread() is threading.main_thread():
        # Python already ignores SIGXFSZ; kept explicit because a write past `ulimit -f` must raise
        # EFBIG (recorded as the run's failure), not kill the process without a word.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if os.environ.get("RANK", "0") != "0":  # one process owns the run directory; the others follow
        return Trainer(cfg, resume=resume, log=log).fit()
    run = RunDir(cfg.run_dir)
    run.check_start(resume=resume, overwrite=overwrite)
    replace = overwrite and not resume and run.path.is_dir() and not is_empty_dir(run.path)
    if resume or replace:
        run.acquire()  # held from here on: nobody may resume or replace it meanwhile
    try:
        trainer = Trainer(cfg, resume=resume, log=log, run=run if resume else None)
        if replace:
            run.replace_with(lambda _original: _start(trainer))
        else:
            trainer.open_run()
    except BaseException:
        run.release()  # a resumed run's lock passes to the trainer; a replaced one's ends with it
        raise
    return trainer.fit()


def _start(trainer: Trainer) -> None:
    """Open ``trainer``'s run, dropping its lock if that fails (the old run is then put back)."""
    try:
        trainer.open_run()
    except BaseException:
        trainer.run.release()
        raise
