"""The ``eval`` section of a run config: when to evaluate and when a task counts as learned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from smalllm.errors import require
from smalllm.validation import COUNT_MAX, TOKENS_MAX, choices, integer, number, one_of

CriterionMetric = Literal["acc", "choice_acc", "loss_ratio", "choice_loss", "label_mass"]
AtEnd = Literal["unconfirmed", "learned", "not_learned"]

LOWER_IS_BETTER = frozenset({"loss_ratio", "choice_loss"})
"""Criterion metrics that are learned when they fall to the threshold (the others when they rise)."""
LEGACY_CRITERION_KEYS = ("accuracy_threshold", "loss_ratio_threshold", "patience")
"""``eval`` keys of runs saved before ``eval.criterion``; only read back from old run directories."""


def upgrade_legacy_eval(section: dict) -> dict:
    """An ``eval`` section as saved before ``eval.criterion`` existed, rewritten into it.

    Old runs stated their criterion as ``accuracy_threshold`` (on ``acc``), ``loss_ratio_threshold``
    (on ``loss_ratio`` when set) and ``patience``; their saved configs keep loading (for reports, and
    for the refusal that explains why such a run cannot be resumed) instead of failing on unknown keys.
    A section without those keys is returned unchanged.
    """
    if not any(key in section for key in LEGACY_CRITERION_KEYS):
        return section
    out = {k: v for k, v in section.items() if k not in LEGACY_CRITERION_KEYS}
    criterion = dict(out.get("criterion") or {})
    if section.get("loss_ratio_threshold") is not None:
        criterion.setdefault("metric", "loss_ratio")
        criterion.setdefault("threshold", section["loss_ratio_threshold"])
    elif section.get("accuracy_threshold") is not None:
        criterion.setdefault("metric", "acc")
        criterion.setdefault("threshold", section["accuracy_threshold"])
    if section.get("patience") is not None:
        criterion.setdefault("patience", section["patience"])
    out["criterion"] = criterion
    return out


ACCURACY_METRICS = frozenset({"acc", "choice_acc"})
"""Criterion metrics whose threshold must exceed the run's best baseline accuracy."""
ANSWER_SET_METRICS = frozenset({"choice_acc", "choice_loss", "label_mass"})
"""Criterion metrics that exist only for tasks declaring their answer set (``Task.answer_set``)."""


def higher_is_better(metric: str) -> bool:
    """Whether ``metric`` (a criterion metric, or an accuracy/loss column) improves as it rises."""
    return metric not in LOWER_IS_BETTER and "loss" not in metric


@dataclass
class CriterionConfig:
    """The pre-registered rule that decides when a task counts as learned (see
    :func:`smalllm.eval.emergence.detect_emergence`)."""

    metric: CriterionMetric = "acc"
    """acc (exact match), choice_acc (argmax restricted to the task's answer set), loss_ratio (answer
    loss over chance), choice_loss (nats, softmax restricted to the answer set) or label_mass
    (probability on the answer set). Losses are learned at or below the threshold, the rest at or above."""
    threshold: float = 0.9
    """Value the metric must reach; for acc/choice_acc it must exceed every task's best baseline
    accuracy (chance, best one-position rule), checked at run start."""
    patience: int = 2
    """Evaluations after the crossing that must confirm it (one isolated dip is tolerated)."""
    at_end: AtEnd = "unconfirmed"
    """What a crossing that still holds at the last evaluation but lacks its confirmation window
    counts as: unconfirmed (status unconfirmed, not learned), learned (status unconfirmed, counted
    learned) or not_learned (status not_learned, as if it had not crossed)."""

    @property
    def higher_is_better(self) -> bool:
        """The metric is learned when at or above the threshold (False: at or below)."""
        return higher_is_better(self.metric)

    def validate(self, prefix: str = "eval.criterion") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        one_of(self.metric, choices(CriterionMetric), f"{prefix}.metric")
        where = f"{prefix}.threshold"
        if self.metric == "loss_ratio":
            # A ratio at or above 1 is chance level: nothing would have been learned.
            number(self.threshold, where, gt=0, lt=1, interval=True)
        elif self.metric == "choice_loss":
            number(self.threshold, where, gt=0, le=1e6)
        else:
            number(self.threshold, where, gt=0, le=1, interval=True)
        integer(self.patience, f"{prefix}.patience", ge=0, le=1_000_000)
        one_of(self.at_end, choices(AtEnd), f"{prefix}.at_end")


@dataclass
class EvalConfig:
    enabled: bool = True
    """Evaluate held-out task instances and background text during training."""
    every_steps: int = 200
    """Steps between evaluations after the log-spaced start (0: log-spaced only). Each evaluation
    scores every held-out instance (4,950 for T_CMP), so 200 keeps evaluation near 5% of a CPU run."""
    log_spaced: bool = True
    """Also evaluate at steps 0, 1, 2, 4, 8, … (Pythia-style) before ``every_steps`` takes over."""
    every_tokens: int | None = None
    """Tokens between evaluations; overrides ``every_steps`` when set."""
    batch_size: int = 128
    """Background sequences per evaluation forward pass (and task instances, with batch_tokens null)."""
    batch_tokens: int | None = 8192
    """Most tokens (padded) in one forward pass over task instances: short instances such as T_CMP's
    3-token rows are packed thousands to a pass. Logits take batch_tokens x vocab x 4 bytes."""
    background_sequences: int = 64
    """Held-out background sequences scored for the background loss."""
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    """When a task counts as learned: metric, threshold, confirmation and what an unconfirmed end means."""
    samples: int = 2
    """Greedy completions written at each evaluation, per task and of background prefixes (0: none),
    so a run shows what its model says, not only how it scores. The same held-out prompts every time:
    the log reads as one prompt's answer changing over training."""
    sample_tokens: int = 8
    """Tokens generated per sample (0: no samples). Small, so samples add little to evaluation time."""
    around_injections: str | None = None
    """A task (``data.tasks`` name) whose injection cycles are bracketed by extra evaluations: right
    before an injection batch, right after it, and right before the next one, so each bracketed cycle
    has its loss gain at injection and its decay until the next (Huang et al. Fig. 6b; see
    :mod:`smalllm.eval.retention`). Meant for a ``gap`` schedule. None: no extra evaluations."""
    injection_cycles: int = 16
    """Injection cycles bracketed with ``around_injections``, spread evenly over the run (first and
    last included): up to three evaluations each."""

    def validate(self, prefix: str = "eval") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        integer(self.every_steps, f"{prefix}.every_steps", ge=0, le=COUNT_MAX)
        if self.every_tokens is not None:
            integer(self.every_tokens, f"{prefix}.every_tokens", gt=0, le=TOKENS_MAX)
        integer(self.batch_size, f"{prefix}.batch_size", ge=1, le=1_000_000)
        if self.batch_tokens is not None:
            integer(self.batch_tokens, f"{prefix}.batch_tokens", ge=1, le=100_000_000)
        integer(self.background_sequences, f"{prefix}.background_sequences", ge=0, le=10_000_000)
        self.criterion.validate(f"{prefix}.criterion")
        integer(self.samples, f"{prefix}.samples", ge=0, le=1000)
        integer(self.sample_tokens, f"{prefix}.sample_tokens", ge=0, le=4096)
        if self.around_injections is not None:
            require(
                isinstance(self.around_injections, str) and bool(self.around_injections.strip()),
                f"{prefix}.around_injections",
                "must name a task of data.tasks, or be null",
            )
        integer(self.injection_cycles, f"{prefix}.injection_cycles", ge=1, le=100_000)

    @property
    def samples_on(self) -> bool:
        """Whether evaluations also write greedy samples."""
        return self.enabled and self.samples > 0 and self.sample_tokens > 0
