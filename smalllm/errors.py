"""User-facing errors.

Anything the user can fix (a config typo, a missing file, a model that cannot fit) raises
:class:`SmalllmError`. The CLI prints it as one line and exits non-zero; tracebacks are kept for
``--debug`` and for genuine bugs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SmalllmError(Exception):
    """An error caused by user input; its message is one line naming the offending field or file."""

    exit_status = 2
    """What the ``smalllm`` command exits with on this error."""


class ConfigError(SmalllmError):
    """A configuration value is unknown, mistyped or out of range."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def require(condition: bool, field: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
