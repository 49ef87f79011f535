"""smalllm: a small-LM pretraining testbed for studying when rare skills emerge.

Data flows through the package in this order:
``tasks`` (instance generators) -> ``data`` (tokenizer, background corpus, frequency-controlled
stream) -> ``model`` (Hugging Face model ladder) -> ``train`` (accelerate trainer) -> ``eval``
(per-task metrics, emergence) -> ``sweep`` (grids, aggregation, plots).

The Python API (``docs/api.md``) is reached from here: ``smalllm.train(...)``, ``smalllm.load_run``,
``smalllm.evaluate`` and ``smalllm.sweep(...)``. Each is imported on first use (PEP 562), so
``import smalllm`` stays cheap (no torch, no transformers) and the package root depends on no layer
above it until the API is called.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    # smalllm.train and smalllm.sweep are their subpackages, which are callable.
    "train": "smalllm.train",
    "sweep": "smalllm.sweep",
    "load_run": "smalllm.api",
    "evaluate": "smalllm.api",
    "Run": "smalllm.api",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'smalllm' has no attribute {name!r}")
    module = import_module(_API[name])
    return module if module.__name__ == f"smalllm.{name}" else getattr(module, name)
