"""One concern per file: evaluator, metrics_logger, checkpointer; the contract they follow is in base."""

from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord

__all__ = ["Callback", "Control", "FitEnd", "RunContext", "StepRecord"]
