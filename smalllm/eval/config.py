"""The ``eval`` section of a run config: when to evaluate and when a task counts as learned."""

from __future__ import annotations

from dataclasses import dataclass

from smalllm.validation import COUNT_MAX, TOKENS_MAX, integer, number


@dataclass
class EvalConfig:
    enabled: bool = True
    """Evaluate held-out task instances and background text during training."""
    every_steps: int = 100
    """Steps between evaluations after the log-spaced start (0: log-spaced only)."""
    log_spaced: bool = True
    """Also evaluate at steps 0, 1, 2, 4, 8, … (Pythia-style) before ``every_steps`` takes over."""
    every_tokens: int | None = None
    """Tokens between evaluations; overrides ``every_steps`` when set."""
    batch_size: int = 128
    """Sequences per evaluation forward pass."""
    background_sequences: int = 64
    """Held-out background sequences scored for the background loss."""
    accuracy_threshold: float = 0.9
    """Exact-match accuracy at which a task counts as learned."""
    loss_ratio_threshold: float | None = None
    """Alternatively: learned when answer loss falls below this fraction of chance loss."""
    patience: int = 2
    """Evaluations after the crossing that must confirm it (one isolated dip is tolerated)."""

    def validate(self, prefix: str = "eval") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        integer(self.every_steps, f"{prefix}.every_steps", ge=0, le=COUNT_MAX)
        if self.every_tokens is not None:
            integer(self.every_tokens, f"{prefix}.every_tokens", gt=0, le=TOKENS_MAX)
        integer(self.batch_size, f"{prefix}.batch_size", ge=1, le=1_000_000)
        integer(self.background_sequences, f"{prefix}.background_sequences", ge=0, le=10_000_000)
        number(self.accuracy_threshold, f"{prefix}.accuracy_threshold", gt=0, le=1, interval=True)
        if self.loss_ratio_threshold is not None:
            # A ratio at or above 1 is chance level: nothing would have been learned.
            number(self.loss_ratio_threshold, f"{prefix}.loss_ratio_threshold", gt=0, lt=1, interval=True)
        integer(self.patience, f"{prefix}.patience", ge=0, le=1_000_000)
