"""When to evaluate: log-spaced early steps, then a fixed period in steps or tokens (Pythia-style).

Emergence of a rare skill can happen early or late, and curves are read on a log-token axis, so a
purely periodic schedule either wastes evaluations late or misses the start. Pythia's checkpoints
(0, 1, 2, 4, …, 512, then every 1000 steps) resolve both ends; this module reproduces that pattern.
"""

from __future__ import annotations

from collections.abc import Iterable

from smalllm.eval.config import EvalConfig


def eval_steps(
    total_steps: int, cfg: EvalConfig, tokens_per_step: int, extra: Iterable[int] = ()
) -> list[int]:
    """Steps (number of optimizer steps completed) at which to evaluate, sorted and unique.

    Step 0 is the initial model and ``total_steps`` the final one; both are always included.

    * Periodic part: with ``cfg.every_tokens`` set, the first step at which the tokens seen
      (``step * tokens_per_step``) reach each multiple of ``every_tokens`` (every step if a step is
      longer than the period); otherwise every multiple of ``cfg.every_steps`` (none if it is 0).
    * With ``cfg.log_spaced``: also 1, 2, 4, 8, … — the powers of two below the first periodic
      evaluation, or all powers of two up to ``total_steps`` when there is no periodic part.
    * ``extra`` steps within ``0 … total_steps`` (e.g. the brackets of ``cfg.around_injections``).
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    steps = {0, total_steps}
    periodic: list[int] = []
    if cfg.every_tokens is not None:
        if tokens_per_step <= 0:
            raise ValueError(f"tokens_per_step must be > 0 with eval.every_tokens, got {tokens_per_step}")
        m = 1
        while True:
            # Smallest step s with s * tokens_per_step >= m * every_tokens (integer ceil division).
            s = -(-m * cfg.every_tokens // tokens_per_step)
            if s > total_steps:
                break
            periodic.append(s)
            # Jump straight past every multiple this step already covers, so small periods stay O(steps).
            m = s * tokens_per_step // cfg.every_tokens + 1
    elif cfg.every_steps > 0:
        periodic = list(range(cfg.every_steps, total_steps + 1, cfg.every_steps))
    steps.update(periodic)
    steps.update(s for s in extra if 0 <= s <= total_steps)
    if cfg.log_spaced:
        limit = periodic[0] if periodic else total_steps + 1
        p = 1
        while p < limit and p <= total_steps:
            steps.add(p)
            p *= 2
    return sorted(steps)
