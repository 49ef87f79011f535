"""Pretraining on accelerate: setup -> fit, with callbacks for logging, evaluation and checkpoints.

The package is also callable: ``smalllm.train(...)`` is :func:`smalllm.train.api.train`. The Python
API's name and this package's are the same attribute of ``smalllm`` (importing any
``smalllm.train.*`` module sets it to this package), so the package itself answers the call.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from smalllm.train.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
