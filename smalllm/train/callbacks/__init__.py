"""One concern per file: speed_monitor, evaluator, metrics_logger, checkpointer."""

from smalllm.train.callbacks.base import Callback

__all__ = ["Callback"]
