"""The ``train`` and ``logging`` sections of a run config: optimisation, the loop, and trackers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from smalllm.errors import did_you_mean, require
from smalllm.validation import COUNT_MAX, TOKENS_MAX, choices, integer, number, one_of, seed

LrSchedule = Literal["cosine", "wsd", "linear", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
NanPolicy = Literal["stop", "skip"]

LR_SCHEDULES = choices(LrSchedule)
PRECISIONS = choices(Precision)
DEVICES = choices(Device)
NAN_POLICIES = choices(NanPolicy)

BATCH_MAX = 10_000_000
"""Most sequences in one batch."""


@dataclass
class TrainConfig:
    max_tokens: int = 2_000_000
    """Training budget in tokens; the number of steps is derived from it."""
    global_batch_size: int = 32
    """Sequences per optimizer step, over all processes and accumulation steps."""
    micro_batch_size: int = 32
    """Most sequences per forward pass on one process (capped at its share of the global batch);
    accumulation makes up the rest."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    schedule: LrSchedule = "cosine"
    """cosine (warmup then cosine), wsd (warmup-stable-decay), linear or constant."""
    warmup_fraction: float = 0.05
    """Share of steps spent in linear warmup."""
    decay_fraction: float = 0.2
    """For wsd: share of steps spent in the final decay."""
    weight_decay: float = 0.1
    """AdamW weight decay on weight matrices (not on embeddings, norms or biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Maximum global gradient norm (0 disables clipping)."""
    precision: Precision = "auto"
    """auto (bf16 on a GPU that supports it, else fp32), fp32, bf16 or fp16."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    device: Device = "auto"
    """auto, cpu or cuda."""
    seed: int = 0
    """Seed of model initialisation."""
    num_threads: int | None = None
    """CPU threads for torch (None: leave torch's default)."""
    log_every: int = 10
    """Steps between metric log lines."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted; the final one is always kept)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU (None: a built-in guess for the device and precision)."""
    nan_policy: NanPolicy = "stop"
    """On a NaN/inf loss: stop (keep the last good checkpoint) or skip (drop the batch)."""
    memory_fraction: float = 0.9
    """Share of the device memory the pre-flight estimate may use."""

    def validate(self, prefix: str = "train") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        integer(self.max_tokens, f"{prefix}.max_tokens", gt=0, le=TOKENS_MAX)
        integer(self.global_batch_size, f"{prefix}.global_batch_size", ge=1, le=BATCH_MAX)
        integer(self.micro_batch_size, f"{prefix}.micro_batch_size", ge=1, le=BATCH_MAX)
        require(
            self.global_batch_size % self.micro_batch_size == 0,
            f"{prefix}.global_batch_size",
            f"{self.global_batch_size} is not a multiple of {prefix}.micro_batch_size={self.micro_batch_size}",
        )
        # No upper bound: a huge rate is how the divergence handling is exercised on purpose.
        number(self.lr, f"{prefix}.lr", gt=0)
        number(self.min_lr_ratio, f"{prefix}.min_lr_ratio", ge=0, le=1, interval=True)
        one_of(self.schedule, LR_SCHEDULES, f"{prefix}.schedule")
        number(self.warmup_fraction, f"{prefix}.warmup_fraction", ge=0, lt=1, interval=True)
        number(self.decay_fraction, f"{prefix}.decay_fraction", ge=0, le=1, interval=True)
        number(self.weight_decay, f"{prefix}.weight_decay", ge=0)
        number(self.beta1, f"{prefix}.beta1", ge=0, lt=1, interval=True)
        number(self.beta2, f"{prefix}.beta2", ge=0, lt=1, interval=True)
        # eps = 0 divides 0 by 0 for parameters without gradient; above 1 it silently stops training.
        number(self.eps, f"{prefix}.eps", gt=0, le=1)
        number(self.grad_clip, f"{prefix}.grad_clip", ge=0)
        one_of(self.precision, PRECISIONS, f"{prefix}.precision")
        one_of(self.device, DEVICES, f"{prefix}.device")
        one_of(self.nan_policy, NAN_POLICIES, f"{prefix}.nan_policy")
        seed(self.seed, f"{prefix}.seed")
        if self.num_threads is not None:
            integer(self.num_threads, f"{prefix}.num_threads", ge=1, le=4096)
        integer(self.log_every, f"{prefix}.log_every", ge=1, le=COUNT_MAX)
        integer(self.checkpoint_every, f"{prefix}.checkpoint_every", ge=0, le=COUNT_MAX)
        integer(self.keep_last, f"{prefix}.keep_last", ge=1, le=1_000_000)
        if self.peak_flops is not None:
            number(self.peak_flops, f"{prefix}.peak_flops", gt=0, le=1e18)
        number(self.memory_fraction, f"{prefix}.memory_fraction", gt=0, le=1, interval=True)


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Write TensorBoard event files under the run directory."""
    wandb: bool = False
    """Log to Weights & Biases (opt-in; needs the wandb package)."""
    wandb_project: str = "smalllm"
    """W&B project name."""
    progress: bool = True
    """Show progress: a bar on a terminal; when stdout is not one (Slurm, nohup), a plain line
    (step, tokens, loss, lr, tok/s, MFU, ETA) every ``train.log_every`` steps."""
    progress_seconds: float = 0.0
    """When stdout is not a terminal, also print a progress line once this many seconds have passed
    since the last one (between two records its loss is the main process's own; 0: off)."""

    def validate(self, prefix: str = "logging") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        require(
            not self.wandb or bool(self.wandb_project.strip()),
            f"{prefix}.wandb_project",
            "must not be empty with wandb=true",
        )
        number(self.progress_seconds, f"{prefix}.progress_seconds", ge=0, le=1e7)


ModuleSet = Literal["all", "mlp", "top_k"]
MODULE_SETS = choices(ModuleSet)


@dataclass
class InterferenceConfig:
    """Gradient interference between a task and the rest of the batch (Huang et al. 2026, Fig. 9);
    see :mod:`smalllm.train.callbacks.interference` and ``docs/mechanisms.md``."""

    enabled: bool = False
    """Measure during training (off: no callback, no cost)."""
    every_steps: int = 100
    """Measure every this many steps (0: only at injections)."""
    at_injections: bool = True
    """Also measure at every step whose batch holds instances of ``task`` (meant for a ``gap``
    schedule; at a uniform schedule of one instance per batch or more that is every step)."""
    task: str | None = None
    """Name of the measured task in ``data.tasks`` (None: the first one)."""
    reference_size: int | None = 1000
    """Training instances of the task whose answer-token loss gives the reference gradient g_r: the
    first this many the stream trains on, fixed for the run (None: a finite pool's whole train part)."""
    module_sets: list[str] = field(default_factory=lambda: ["all", "mlp", "top_k"])
    """Parameter sets the cosines are taken over: all (every parameter), mlp (the MLP of ``layer``),
    top_k (the ``top_k`` neurons of that MLP with the largest reference gradient)."""
    top_k: int = 16
    """Neurons in the top_k set."""
    layer: int = 0
    """Transformer block whose MLP the mlp and top_k sets read (0: the first, Huang et al.'s choice)."""

    def task_of(self, names: list[str]) -> str | None:
        """The measured task among the run's task ``names``: ``task``, else the first one."""
        return self.task if self.task is not None else (names[0] if names else None)

    def validate(self, prefix: str = "interference") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        require(isinstance(self.enabled, bool), f"{prefix}.enabled", "expected true/false")
        integer(self.every_steps, f"{prefix}.every_steps", ge=0, le=COUNT_MAX)
        require(isinstance(self.at_injections, bool), f"{prefix}.at_injections", "expected true/false")
        require(self.task is None or bool(self.task.strip()), f"{prefix}.task", "must name a task or be null")
        if self.reference_size is not None:
            integer(self.reference_size, f"{prefix}.reference_size", ge=1, le=10_000_000)
        require(
            bool(self.module_sets), f"{prefix}.module_sets", f"must list some of {', '.join(MODULE_SETS)}"
        )
        for i, name in enumerate(self.module_sets):
            one_of(name, MODULE_SETS, f"{prefix}.module_sets.{i}")
        require(
            len(set(self.module_sets)) == len(self.module_sets), f"{prefix}.module_sets", "lists a set twice"
        )
        integer(self.top_k, f"{prefix}.top_k", ge=1, le=10_000_000)
        integer(self.layer, f"{prefix}.layer", ge=0, le=100_000)
        if self.enabled:
            require(
                self.every_steps > 0 or self.at_injections,
                f"{prefix}.every_steps",
                "0 with at_injections=false: nothing would be measured",
            )

    def check_run(
        self, tasks: list[tuple[str, str]], layers: int, intermediate: int, prefix: str = "interference"
    ) -> None:
        """The rules that need the rest of the run: ``tasks`` as (name, pool) of ``data.tasks``, and
        the model's blocks and MLP width. Checked only when enabled."""
        if not self.enabled:
            return
        names = [name for name, _ in tasks]
        if self.task is None:
            require(bool(tasks), f"{prefix}.enabled", "needs a task in data.tasks to measure")
        else:
            require(
                self.task in names,
                f"{prefix}.task",
                f"'{self.task}' is not in data.tasks ({', '.join(names) or 'none'}){did_you_mean(self.task, names)}",
            )
        pool = dict(tasks)[self.task if self.task is not None else names[0]]
        require(
            self.reference_size is not None or pool == "finite",
            f"{prefix}.reference_size",
            "null (the whole train part) needs a finite pool; this task's pool is fresh",
        )
        require(
            self.layer < layers, f"{prefix}.layer", f"must be < the model's {layers} blocks, got {self.layer}"
        )
        if "top_k" in self.module_sets:
            require(
                self.top_k <= intermediate,
                f"{prefix}.top_k",
                f"must be <= the MLP's {intermediate} neurons, got {self.top_k}",
            )
