"""The callback contract: what a callback is told, and the few things it may do.

A callback never sees the trainer. It gets:

- :class:`RunContext` once, at fit start (and with its checkpointed state): the plan, the config
  sections, the labels, the process group's reductions and the run directory;
- a :class:`StepRecord` after every optimizer step: everything the step measured, as the trainer
  measured it, so no callback needs another one's output (throughput: ``step_time`` and the plan;
  see :meth:`~smalllm.train.plan.Plan.mfu`);
- a :class:`FitEnd` when training stops, whatever stopped it;
- with each hook, the :class:`Control` surface: the only way to act on the run (stop it, checkpoint
  it, evaluate the model, write a metrics record, contribute to the summary, log a line), and to
  measure it: :meth:`Control.gradient_split` returns the gradient the next optimizer step will take,
  split into the part from a task's tokens and the rest, with a task's reference gradient (see
  :class:`GradientSplit`); it leaves ``.grad``, the optimizer and the RNG state as they were.

Hooks run on every process, in the order of the trainer's callback list. A record's ``step``,
``tokens``, ``grad_norm``, ``lr`` and ``skipped`` are the same on every process (its loss and
per-label sums are this process's until reduced), and the trainer agrees on signals before the hooks
run: a decision made from them is taken alike everywhere, as collective actions (``save_checkpoint``,
``evaluate``, ``generate``, ``reduce``, ``gather``) need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from smalllm.data.eval_sets import TaskEvalSet
from smalllm.eval.config import EvalConfig
from smalllm.labels import Label
from smalllm.run_record import RunDir
from smalllm.tasks.base import Instance
from smalllm.train.config import LoggingConfig, TrainConfig
from smalllm.train.plan import Plan

Reduction = Literal["sum", "mean"]


@dataclass(frozen=True, slots=True, eq=False)
class StepRecord:
    """One optimizer step on this process.

    Tensors stay on the device: reading them (``float(record.loss)``, ``bool(record.skipped)``)
    waits for the device, so that cost is paid only by a callback that needs the value, and only
    when it needs it (the trainer's own hot path reads none of them outside log, eval and checkpoint
    steps; a callback reading one every step makes every step wait). Records compare by identity
    (each is one event; tensors have no single truth value to compare by).
    """

    step: int
    """Optimizer steps done, this one included."""
    tokens: int
    """Tokens trained on so far, over all processes."""
    loss: torch.Tensor
    """This process's mean next-token loss of the step (0-dim, on the device)."""
    grad_norm: torch.Tensor
    """Gradient norm before clipping, over all processes (0-dim, on the device)."""
    lr: float
    """Learning rate the step was taken with."""
    step_time: float
    """Seconds the step took on this process (training only: no callbacks, evaluation or saves)."""
    skipped: torch.Tensor
    """0-dim bool on the device: the loss or gradient was not finite, so the optimizer step was
    skipped on the device (weights and Adam moments unchanged). ``train.nan_policy`` is applied to
    it at the next log, eval or checkpoint step (see :meth:`~smalllm.train.trainer.Trainer.settle`).
    Under fp16 only a non-finite loss counts: gradient overflow is the grad scaler's to skip."""
    label_loss: torch.Tensor
    """Per-label sums of token loss on this process, indexed like :attr:`RunContext.labels` (zero
    when skipped): task answer tokens, and every background token for label 0."""
    label_count: torch.Tensor
    """How many tokens each ``label_loss`` sum holds."""


@dataclass(frozen=True)
class RunContext:
    """What a callback may know about the run; the same object for every hook of one trainer."""

    plan: Plan
    """Every derived number: steps, tokens per step, FLOPs per token, peak FLOP/s, world size."""
    train: TrainConfig
    eval: EvalConfig
    logging: LoggingConfig
    labels: list[Label]
    """The stream's labels; index ``i`` is entry ``i`` of the step records' per-label tensors."""
    total_steps: int
    eval_steps: frozenset[int]
    """Steps at which the run evaluates (:func:`smalllm.eval.schedule.eval_steps`, with the brackets
    of ``eval.around_injections``); empty when evaluation is off."""
    start_step: int
    """The step fit starts from: 0, or the step of the checkpoint a resumed run continues."""
    start_tokens: int
    resumed: bool
    is_main: bool
    """This process writes the run directory; the others only take part in collectives."""
    rank: int
    world: int
    device: torch.device
    run_dir: RunDir
    reduce: Callable[[torch.Tensor, Reduction], torch.Tensor]
    """Reduce a tensor over all processes (a collective: every process must call it)."""
    gather: Callable[[Any], list[Any]]
    """Every process's object, in rank order (a collective; ``[obj]`` in a one-process run)."""
    eval_sets: Callable[[], list[TaskEvalSet]]
    """The run's held-out task instances, built on call (the same on every call)."""
    background_holdout: Callable[[int], np.ndarray]
    """Up to ``n`` held-out background rows of the run's corpus, ``[n, seq_len]``."""
    fit_instances: Callable[[int], list[list[Instance]]] | None = None
    """Per task (in ``eval_sets()`` order), training instances to fit baselines on: a finite pool's
    train part, or the first ``n`` training instances of a fresh pool. None: no rule baselines."""
    decode: Callable[[Sequence[int]], str] | None = None
    """Token ids as text, with the run's tokenizer (special tokens kept, so an EOD shows). None: the
    trainer has no tokenizer to offer, and text-writing callbacks show ids."""
    batch_instances: Callable[[int], list[int]] | None = None
    """Per task (in ``eval_sets()`` order), the instances global batch ``k`` holds (the batch of
    optimizer step ``k + 1``; the same on every process). None: the trainer does not say."""
    reference_instances: Callable[[int, int | None], list[Instance]] | None = None
    """``(task, size)``: the first ``size`` distinct training instances of task ``task`` (``eval_sets()``
    order), the same on every call; ``size`` None: a finite pool's whole train part."""


@dataclass(frozen=True, eq=False)
class GradientSplit:
    """What :meth:`Control.gradient_split` measured, per parameter name (``named_parameters`` of the
    unwrapped model), as fp32 tensors on the device, averaged over processes like the trainer's."""

    task: dict[str, torch.Tensor]
    """g_t: the gradient of the task tokens' part of the batch loss."""
    other: dict[str, torch.Tensor]
    """g_nt: the gradient of the rest of the batch loss; g_t + g_nt is the step's gradient (before
    clipping), since both parts keep the trainer's normalisation: to float rounding in fp32, to the
    rounding of two separate low-precision backward passes under bf16/fp16 (about 2e-3 relative)."""
    reference: dict[str, torch.Tensor]
    """g_r: the gradient of the mean answer-token loss over the reference instances."""
    task_tokens: int
    """Targets of the batch, over all processes, that are task tokens."""
    reference_tokens: int
    """Answer tokens g_r's mean is taken over."""


@dataclass(frozen=True)
class FitEnd:
    """How training ended, as far as it is known when a callback's ``on_fit_end`` runs (a failing
    ``on_fit_end`` of an earlier callback turns the status into ``failed``)."""

    status: Literal["completed", "interrupted", "diverged", "failed"]
    step: int
    tokens: int
    error: str | None
    """The one-line error that ends the run; None when no exception ended it."""
    stop_reason: str | None
    """Why a stop was requested (a signal's name, or a callback's reason); None when none was."""
    wall_seconds: float
    """Seconds ``fit`` ran until the last step (before the callbacks' ends)."""


class Control(ABC):
    """Everything a callback may do to the run. The trainer implements it; a test may fake it."""

    @abstractmethod
    def request_stop(self, reason: str) -> None:
        """Stop after this step, as a signal would: the run ends ``interrupted`` with a checkpoint
        (when a :class:`~smalllm.train.callbacks.checkpointer.Checkpointer` is present). The first
        reason is kept. Request it on every process alike: the trainer agrees on signals, not on this."""

    @property
    @abstractmethod
    def stop_reason(self) -> str | None:
        """The reason of the stop requested so far (signal or callback), None while training goes on."""

    @abstractmethod
    def save_checkpoint(self) -> Path | None:
        """Checkpoint the current step now, callbacks' states included; returns its path on the main
        process. A collective: every process must call it at the same step."""

    @abstractmethod
    def evaluate(
        self, eval_sets: list[TaskEvalSet], background: np.ndarray | None, cfg: EvalConfig
    ) -> dict[str, float]:
        """Evaluate the model being trained on ``eval_sets`` and ``background`` rows, batched as
        ``cfg.batch_size``/``cfg.batch_tokens`` say (flat ``eval/…`` metrics, see
        :func:`smalllm.eval.evaluator.evaluate`); training mode is restored after. A collective
        under FSDP/DeepSpeed: every process must call it."""

    @abstractmethod
    def generate(self, prompts: list[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of ``prompts`` (token ids) by the model being trained, exactly
        ``max_new_tokens`` each (no stop at EOD, so every process runs the same number of forward
        passes), fewer only where the model's positions run out. Eval mode, no gradients, the KV
        cache on; training mode is restored after. A collective under FSDP/DeepSpeed: every process
        must call it with the same prompts."""

    @abstractmethod
    def gradient_split(
        self,
        labels: Sequence[int],
        reference: Sequence[Instance],
        prefix: Sequence[int] = (),
        select: Callable[[str], bool] | None = None,
    ) -> GradientSplit:
        """The gradient the next optimizer step will take (its batch, the current weights, the
        trainer's loss normalisation), split into g_t from the targets whose stream label is in
        ``labels`` (a task's tokens: prompt, answer and its EOD) and g_nt from the others; and g_r,
        the gradient of the mean answer-token loss of ``reference`` (each one scored as
        ``prefix + prompt + answer``). Only the parameters whose names ``select`` accepts (None: all).

        Cost: one forward and two backward passes per micro-batch, and one forward and backward pass
        over the reference tokens (shared between processes). ``.grad``, the optimizer and the RNG
        state are left as they were, so training goes on exactly as without the call. A collective:
        every process must call it with the same arguments. Refused under FSDP/DeepSpeed (sharded
        parameters)."""

    @abstractmethod
    def write_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to the run's ``metrics.jsonl`` and send its numbers to the trackers
        (TensorBoard, W&B) at ``record["step"]``. Only the main process writes; elsewhere a no-op."""

    @abstractmethod
    def write_text(self, texts: dict[str, str], step: int) -> None:
        """Send ``texts`` (tag -> markdown text) to the trackers at ``step`` (TensorBoard's text tab,
        W&B); not to ``metrics.jsonl``, which takes records through :meth:`write_metrics`. Only the
        main process writes; a no-op elsewhere and when no tracker is on."""

    @abstractmethod
    def add_summary(self, **fields: Any) -> None:
        """Add fields to the run's summary (``summary.json`` and ``fit()``'s return value). A later
        contribution of a field replaces an earlier one; a field the trainer writes itself (``status``,
        ``steps``, ``error``, …) is refused with a ValueError, so the status record stays honest."""

    @abstractmethod
    def log(self, message: str) -> None:
        """Print a line through the trainer's log (main process only)."""


class Callback:
    """No-op hooks; override the ones you need.

    ``state_dict``/``load_state_dict`` make a callback resumable: what it returns is saved in every
    checkpoint under the callback's class name, and handed back before ``on_fit_start`` of the
    resumed run, so a resumed run logs and evaluates exactly what an uninterrupted one does.
    """

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        """Before the first step (after a resume: before the first new step)."""

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        """After every optimizer step."""

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        """After the last step, or when training stops early (signal, stop request, divergence,
        failure): ``end.status`` says which. Runs even when an earlier callback's end failed."""

    def state_dict(self, run: RunContext) -> dict | None:
        """What a resumed run needs to continue exactly, or None.

        Called on every process when a checkpoint is written, so it may gather across processes.
        """
        return None

    def load_state_dict(self, state: dict, run: RunContext) -> None:
        """Restore what :meth:`state_dict` returned, before ``on_fit_start`` of the resumed run."""
