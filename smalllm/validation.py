"""Range rules shared by the config sections: one-line :class:`~smalllm.errors.ConfigError` messages
that name the dotted field, the rule and the offending value.

Every numeric field of every section goes through one of these, so infinities, NaN, negative and
absurdly large values are refused when the config is loaded, not as a traceback (or a NaN loss)
somewhere inside a run. Bottom layer: imports only :mod:`smalllm.errors`.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Any

from smalllm.errors import ConfigError, did_you_mean, require

SEED_MAX = 2**32 - 1
"""Largest seed: ``numpy.random.seed`` (called by ``accelerate.utils.set_seed``) takes at most 32 bits."""

TOKENS_MAX = 10**15
"""Upper bound for token counts (budgets, eval periods): far beyond any run, well inside int64."""

COUNT_MAX = 10**9
"""Upper bound for step counts and other plain counters."""


def _fmt(value: float) -> str:
    """Bounds as people write them: 64, 0.5, 1e15 (not 1000000000000000)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 10**7:
            return str(value)
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def choices(literal: Any) -> tuple[str, ...]:
    """The allowed values of a ``Literal[...]`` type, in declaration order."""
    return tuple(typing.get_args(literal))


def one_of(value: str, allowed: Sequence[str], field: str) -> None:
    """``value`` must be one of ``allowed`` (a suggestion is added for near misses)."""
    require(
        value in allowed,
        field,
        f"'{value}' is not one of {', '.join(allowed)}{did_you_mean(str(value), allowed)}",
    )


def integer(value: int, field: str, *, ge: int | None = None, gt: int | None = None, le: int) -> None:
    """An integer above ``ge`` (or ``gt``) and at most ``le``; the message names the crossed bound."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}: expected an integer, got {value!r}")
    if ge is not None:
        require(value >= ge, field, f"must be >= {_fmt(ge)}, got {value}")
    if gt is not None:
        require(value > gt, field, f"must be > {_fmt(gt)}, got {value}")
    # Exact unless it is too long to read (1e29 rather than 29 digits, or the float it came from).
    got = str(value) if len(str(value)) <= 16 else _fmt(value)
    require(value <= le, field, f"must be <= {_fmt(le)}, got {got}")


def seed(value: int, field: str) -> None:
    """A seed: an integer in ``[0, 2**32 - 1]`` (what numpy, torch and accelerate all accept)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{field}: a seed must be an integer in [0, {SEED_MAX}], got {value}")


def number(
    value: float,
    field: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    interval: bool = False,
) -> None:
    """A finite number within the given bounds.

    ``interval=True`` states both bounds at once (``must be in [0, 1), got 1.5``), which reads
    better for fractions; otherwise the message names the bound that was crossed.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field}: expected a number, got {value!r}")
    lower = ("[", ">=", ge) if ge is not None else ("(", ">", gt) if gt is not None else None
    upper = ("]", "<=", le) if le is not None else (")", "<", lt) if lt is not None else None
    finite = math.isfinite(value)
    ok_lower = lower is None or (value >= lower[2] if lower[1] == ">=" else value > lower[2])
    ok_upper = upper is None or (value <= upper[2] if upper[1] == "<=" else value < upper[2])
    if interval and lower is not None and upper is not None:
        desc = f"in {lower[0]}{_fmt(lower[2])}, {_fmt(upper[2])}{upper[0]}"
        require(finite and ok_lower and ok_upper, field, f"must be {desc}, got {value}")
        return
    if not finite:
        bound = f" {lower[1]} {_fmt(lower[2])}" if lower is not None else ""
        raise ConfigError(f"{field}: must be a finite number{bound}, got {value}")
    if lower is not None:
        require(ok_lower, field, f"must be {lower[1]} {_fmt(lower[2])}, got {value}")
    if upper is not None:
        require(ok_upper, field, f"must be {upper[1]} {_fmt(upper[2])}, got {value}")
