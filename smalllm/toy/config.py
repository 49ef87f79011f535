"""Configuration of ``smalllm toy``: one dataclass per section, presets ``paper`` and ``quick``.

Every field is checked by its section's ``validate(prefix)``, which raises a one-line
:class:`~smalllm.errors.ConfigError` naming the dotted field (``toy.tasks.alpha: must be > 0, ...``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from smalllm import validation as v
from smalllm.errors import ConfigError, did_you_mean, require

DIM_MAX = 1 << 16
"""Largest input dimension D: the bottleneck stores ``sum(widths) x D`` floats."""


def _widths(values: list[int], name: str, dim: int) -> None:
    require(isinstance(values, list) and len(values) > 0, name, "must be a non-empty list of widths")
    for i, width in enumerate(values):
        v.integer(width, f"{name}[{i}]", ge=1, le=dim)
    require(values == sorted(set(values)), name, f"must be strictly increasing, got {values}")


@dataclass
class ToyTasks:
    """The task mixture: K linear-regression tasks on orthogonal coordinate blocks of R^D."""

    dim: int = 1024
    """Input dimension D (x ~ N(0, I_D), fresh every step)."""
    num_tasks: int = 32
    """Number of tasks K; task k's prior is pi_k ∝ k^-beta."""
    block: int = 32
    """Directions per task d_T; task k owns coordinates [k*d_T, (k+1)*d_T), so K*d_T <= D."""
    alpha: float = 2.0
    """Spectrum decay: lambda_{k,j} = j^-alpha (the complexity knob); ignored when spectra is given."""
    spectra: list[list[float]] | None = None
    """Explicit per-task spectra (K lists of d_T non-increasing, non-negative numbers), or None."""
    betas: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    """Zipf exponents swept by the heatmap and signal experiments (one trained grid per beta)."""

    def validate(self, prefix: str) -> None:
        v.integer(self.dim, f"{prefix}.dim", ge=1, le=DIM_MAX)
        v.integer(self.num_tasks, f"{prefix}.num_tasks", ge=1, le=self.dim)
        v.integer(self.block, f"{prefix}.block", ge=1, le=self.dim)
        require(
            self.num_tasks * self.block <= self.dim,
            f"{prefix}.block",
            f"num_tasks * block = {self.num_tasks * self.block} exceeds dim = {self.dim}",
        )
        v.number(self.alpha, f"{prefix}.alpha", ge=0, le=100)
        require(isinstance(self.betas, list) and self.betas, f"{prefix}.betas", "must be a non-empty list")
        for i, beta in enumerate(self.betas):
            v.number(beta, f"{prefix}.betas[{i}]", ge=0, le=100)
        if self.spectra is not None:
            name = f"{prefix}.spectra"
            require(
                isinstance(self.spectra, list) and len(self.spectra) == self.num_tasks,
                name,
                f"must hold one list per task ({self.num_tasks})",
            )
            for k, row in enumerate(self.spectra):
                require(
                    isinstance(row, list) and len(row) == self.block,
                    f"{name}[{k}]",
                    f"must hold block = {self.block} numbers",
                )
                for j, value in enumerate(row):
                    v.number(value, f"{name}[{k}][{j}]", ge=0, le=1e6)
                require(row == sorted(row, reverse=True), f"{name}[{k}]", "must be non-increasing")
                require(row[0] > 0, f"{name}[{k}]", "needs a positive leading eigenvalue")


@dataclass
class ToyTrain:
    """Optimisation of the student (shared by every experiment)."""

    steps: int = 100_000
    """Optimizer steps per trained grid."""
    batch_size: int = 1024
    """Samples per step; each sample's task is drawn from the priors."""
    lr: float = 1e-3
    """Peak AdamW learning rate (torch defaults otherwise: betas 0.9/0.999, eps 1e-8)."""
    warmup: int = 100
    """Linear warm-up steps; afterwards lr * sqrt(warmup / step) (inverse square root)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (torch's default)."""
    clip: float = 1.0
    """Gradient-norm clipping, applied to each width's model on its own."""
    eval_every: int = 1000
    """Steps between metric records (also logged at step 0 and at the end)."""
    seed: int = 0
    """Seed of the initialisation and of every sample: a run repeats exactly on the same device."""
    cpu_threads: int = 1
    """torch threads while training on the CPU: the toy's tensors are small, and more threads on a
    shared machine were measured 8x slower per step, not faster."""

    def validate(self, prefix: str) -> None:
        v.integer(self.steps, f"{prefix}.steps", ge=1, le=v.COUNT_MAX)
        v.integer(self.batch_size, f"{prefix}.batch_size", ge=1, le=1 << 20)
        v.number(self.lr, f"{prefix}.lr", gt=0, le=10)
        v.integer(self.warmup, f"{prefix}.warmup", ge=1, le=v.COUNT_MAX)
        v.number(self.weight_decay, f"{prefix}.weight_decay", ge=0, le=10)
        v.number(self.clip, f"{prefix}.clip", gt=0, le=1e6)
        v.integer(self.eval_every, f"{prefix}.eval_every", ge=1, le=v.COUNT_MAX)
        v.seed(self.seed, f"{prefix}.seed")
        v.integer(self.cpu_threads, f"{prefix}.cpu_threads", ge=1, le=1024)


@dataclass
class ToyMetrics:
    """Definitions the paper leaves open."""

    frequent_mass: float = 0.8
    """F = the smallest set of top-prior tasks with prior mass >= this (the paper's wording)."""
    frequent_count: int = 0
    """If > 0, F = this many most frequent tasks instead (the paper's |F| = 6, 3, 2, 2 need this)."""
    learned: float = 0.5
    """A feature counts as gained when its share of the task's energy is captured past this fraction."""

    def validate(self, prefix: str) -> None:
        v.number(self.frequent_mass, f"{prefix}.frequent_mass", gt=0, le=1, interval=True)
        v.integer(self.frequent_count, f"{prefix}.frequent_count", ge=0, le=1 << 16)
        v.number(self.learned, f"{prefix}.learned", gt=0, lt=1, interval=True)


@dataclass
class ToyRetention:
    """Experiment (c): matched-frequency injection of the rarest task."""

    beta: float = 2.0
    """Zipf exponent of the mixture; the rare task is the last one (k = K)."""
    widths: list[int] = field(default_factory=lambda: [32, 96, 128, 192, 256])
    """Widths trained side by side (narrow ones below N_r^crit, wide ones above)."""
    gaps: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 1280])
    """Withholding gaps G: the rare task is absent for G steps, then injected over the fewest steps
    that hold its matched share (one step while that share is at most one batch)."""
    cycles: int = 8
    """Withhold-and-inject cycles per gap, at least 2 (after a warm-up of train.steps ordinary steps)."""
    batch_size: int = 512
    """Batch size B of this experiment; an injection over k steps brings round((G + k) * B * rho_r)
    rare samples (experiments.injection_counts)."""

    def validate(self, prefix: str, dim: int) -> None:
        v.number(self.beta, f"{prefix}.beta", ge=0, le=100)
        _widths(self.widths, f"{prefix}.widths", dim)
        require(isinstance(self.gaps, list) and self.gaps, f"{prefix}.gaps", "must be a non-empty list")
        for i, gap in enumerate(self.gaps):
            v.integer(gap, f"{prefix}.gaps[{i}]", ge=1, le=v.COUNT_MAX)
        v.integer(self.cycles, f"{prefix}.cycles", ge=2, le=10_000)  # a decay needs a next cycle
        v.integer(self.batch_size, f"{prefix}.batch_size", ge=1, le=1 << 20)


@dataclass
class ToyRank1:
    """Experiment (d): rank-1 tasks, where Thm. 3 and Prop. 6 give N_crit(k) = k."""

    num_tasks: int = 64
    """Number of rank-1 tasks (one direction each)."""
    beta: float = 1.0
    """Zipf exponent of their priors."""
    widths: list[int] = field(default_factory=lambda: list(range(1, 65)))
    """Widths trained; N_emp(k) = min{N : s_k > threshold}."""
    steps: int = 100_000
    """Optimizer steps (the other train settings are shared)."""
    threshold: float = 0.5
    """Captured signal above which a task counts as learned (the paper's 0.5)."""

    def validate(self, prefix: str, dim: int) -> None:
        v.integer(self.num_tasks, f"{prefix}.num_tasks", ge=1, le=dim)
        v.number(self.beta, f"{prefix}.beta", ge=0, le=100)
        _widths(self.widths, f"{prefix}.widths", dim)
        v.integer(self.steps, f"{prefix}.steps", ge=1, le=v.COUNT_MAX)
        v.number(self.threshold, f"{prefix}.threshold", gt=0, lt=1, interval=True)


@dataclass
class ToyConfig:
    """Everything ``smalllm toy`` runs with; ``PRESETS`` holds the named starting points."""

    tasks: ToyTasks = field(default_factory=ToyTasks)
    """The task mixture."""
    widths: list[int] = field(default_factory=lambda: [2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256])
    """Bottleneck widths N of the heatmap and signal experiments (the rungs of the width grid)."""
    train: ToyTrain = field(default_factory=ToyTrain)
    """Optimisation."""
    metrics: ToyMetrics = field(default_factory=ToyMetrics)
    """Metric definitions."""
    retention: ToyRetention = field(default_factory=ToyRetention)
    """Experiment (c)."""
    rank1: ToyRank1 = field(default_factory=ToyRank1)
    """Experiment (d)."""

    def validate(self, prefix: str = "toy") -> None:
        self.tasks.validate(f"{prefix}.tasks")
        _widths(self.widths, f"{prefix}.widths", self.tasks.dim)
        self.train.validate(f"{prefix}.train")
        self.metrics.validate(f"{prefix}.metrics")
        self.retention.validate(f"{prefix}.retention", self.tasks.dim)
        self.rank1.validate(f"{prefix}.rank1", self.tasks.dim)


def paper_preset() -> ToyConfig:
    """The paper's setting (App. B.1): D = 1024, K = 32, d_T = 32, alpha = 2, batch 1024, 100K steps."""
    return ToyConfig()


def quick_preset() -> ToyConfig:
    """Minutes on 2 CPU cores: D = 128, K = 8, d_T = 16, batch 256, 1500 steps (alpha = 2 as in the paper)."""
    return ToyConfig(
        tasks=ToyTasks(dim=128, num_tasks=8, block=16, betas=[1.0, 2.0]),
        widths=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48],
        train=ToyTrain(steps=1500, batch_size=256, lr=1e-2, warmup=50, eval_every=250),
        retention=ToyRetention(widths=[8, 16, 24, 64], gaps=[16, 64, 256], cycles=4, batch_size=256),
        rank1=ToyRank1(num_tasks=12, widths=list(range(1, 17)), steps=8000),
    )


PRESETS = {"paper": paper_preset, "quick": quick_preset}


def config_from_dict(raw: Any, base: ToyConfig, source: str) -> ToyConfig:
    """``base`` with the keys of a parsed YAML mapping ``raw`` replaced (nested by section).

    Unknown keys are refused with the dotted name and a suggestion; values are checked by
    :meth:`ToyConfig.validate` afterwards.
    """
    return _merge(base, raw, "toy", source)


def _merge(obj: Any, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix}: expected a mapping, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{source}: {prefix}.{key}: unknown field{did_you_mean(str(key), names)}")
        current = getattr(obj, key)
        changes[key] = (
            _merge(current, value, f"{prefix}.{key}", source) if dataclasses.is_dataclass(current) else value
        )
    return dataclasses.replace(obj, **changes)
