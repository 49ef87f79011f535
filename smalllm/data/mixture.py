"""Exact, deterministic placement of task instances in the training stream.

What a frequency counts
-----------------------
Training data is a sequence of rows (training sequences) of ``seq_len`` tokens, numbered globally
``g = 0, 1, 2, …`` (step ``s`` holds rows ``s·B … s·B + B − 1`` for a global batch of ``B`` rows).
A task's frequency is converted to an *expected number of instances per row* ``r``:

* ``per_token``        r = f · seq_len — instances per training token (all tokens of the stream,
  task tokens included; Huang et al.'s unit, e.g. 2.4e-8 … 7.8e-3);
* ``token_fraction``   r = f · seq_len / mean instance length — the share of training tokens that
  belong to this task's instances (EOD included);
* ``example_fraction`` r = f — the share of rows that carry one instance of the task.

A family (a task with sub-skills) is placed as one task at its total frequency, and its instances
are dealt to the sub-skills in proportion to ``skill_weights`` (see :class:`SkillSequence`).

Exactness and independence
--------------------------
Let E(g) be the expected number of instances in rows ``0 … g−1`` (the integral of the schedule).
Rows are grouped in *blocks*: one global batch (uniform and piecewise schedules, whose rate changes
only at step boundaries) or one gap period (gap schedules). Block b covers rows ``b·P … (b+1)·P − 1``
and receives exactly ``N_b = C((b+1)·P) − C(b·P)`` instances, where
``C(g) = floor(E(g) + φ) − floor(φ)`` at block boundaries, with a fixed phase φ ∈ [0, 1) per task
drawn from the data seed. Hence ``|C − E| < 1`` at every block boundary — no Bernoulli noise, and
the long-run frequency is exact — and inside a block the count is off by less than that block's
own instances.

Inside block b the ``N_b`` instances go to rows chosen by a permutation seeded by (data seed, task
index, b): the row ranked j by the permutation gets ``floor(N_b/m) + [j < N_b mod m]`` instances, m
being the rows that may receive them (all P rows; for a gap schedule the first batch of the
period). Each task has its own permutations, so two tasks at per-row rates r1, r2 < 1 share a row
with probability about r1·r2 (independent placement), rather than locking into the same rows.
Instances are numbered in row order, so row g's instances are a pure function of (config, g): the
stream can seek, and data-parallel ranks, which take disjoint rows, see disjoint instances.

At a per-row rate above 1 — Huang et al.'s scale: T_ADD at 7.8e-3 per token with 1,024-token rows
is 8 instances per row — every row receives ``floor(r)`` or ``ceil(r)`` instances, packed one after
another (``stream`` places them). The capacity check refuses a mixture whose fullest row would not
fit ``seq_len`` (for a gap schedule: a period's instances all arrive in its first batch, so its
per-row peak is the rate times ``gap_batches``).

Schedules change E, never the long-run frequency:

* ``uniform``   – E grows linearly;
* ``gap``       – all instances of a period of ``gap_batches`` batches arrive in the first batch of
  the period (Huang et al.'s gap runs);
* ``piecewise`` – the frequency changes at given optimizer steps (curricula).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smalllm.data.config import TaskConfig


@dataclass
class PlacementRule:
    """Where the instances of one task (all its sub-skills together) go."""

    task_index: int
    breakpoints: np.ndarray
    """Row indices at which the per-row rate changes (first is 0)."""
    rates: np.ndarray
    """Expected instances per row from each breakpoint on."""
    gap_rows: int
    """Rows per block: a gap period (``gap_batches · global_batch``), else one global batch."""
    batch_rows: int
    """Rows per global batch."""
    gap: bool
    phase: float
    seed: int = 0
    """Data seed: with ``task_index`` and the block, it seeds the rows chosen inside a block."""

    def expected(self, rows: np.ndarray | int) -> np.ndarray:
        """E(g): expected instances in rows ``0 … g−1`` (uniform or piecewise schedule)."""
        g = np.asarray(rows, dtype=np.float64)
        if len(self.rates) == 1:  # one rate from row 0 (rows are >= 0): the same sum, without the clip
            return g * self.rates[0]
        starts = self.breakpoints.astype(np.float64)
        ends = np.append(starts[1:], np.inf)
        covered = np.clip(g[..., None] - starts, 0.0, ends - starts)
        return (covered * self.rates).sum(axis=-1)

    def scheduled(self, rows: np.ndarray | int) -> np.ndarray:
        """Expected instances in rows ``0 … g−1`` under the schedule (gap periods front-loaded)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.gap:
            return self.expected(rows)
        period_start = (rows // self.gap_rows) * self.gap_rows
        into = np.minimum(rows - period_start, self.batch_rows) / self.batch_rows
        e0 = self.expected(period_start)
        e1 = self.expected(period_start + self.gap_rows)
        return e0 + (e1 - e0) * into

    def _at_boundary(self, blocks: np.ndarray) -> np.ndarray:
        """C at the start of each block in ``blocks``."""
        e = self.expected(blocks * self.gap_rows)
        return (np.floor(e + self.phase) - np.floor(self.phase)).astype(np.int64)

    def block_rows(self, block: int) -> np.ndarray:
        """Instances received by each of the ``gap_rows`` rows of ``block`` (see the module docstring)."""
        n = int(np.diff(self._at_boundary(np.array([block, block + 1])))[0])
        per_row = np.zeros(self.gap_rows, dtype=np.int64)
        if n == 0:
            return per_row
        m = self.batch_rows if self.gap else self.gap_rows
        order = np.random.default_rng([self.seed, self.task_index, block, 0xB10C]).permutation(m)
        rank = np.empty(m, dtype=np.int64)
        rank[order] = np.arange(m)
        whole, rest = divmod(n, m)
        per_row[:m] = whole + (rank < rest)
        return per_row

    def count(self, rows: np.ndarray | int) -> np.ndarray:
        """C(g): instances placed in rows ``0 … g−1`` (an array like ``rows``; 0-dim for a scalar)."""
        given = np.asarray(rows, dtype=np.int64)
        rows = np.atleast_1d(given)  # a scalar inside a gap period must take the per-row path too
        blocks = rows // self.gap_rows
        into = rows - blocks * self.gap_rows
        out = self._at_boundary(blocks)
        inside = into > 0
        for block in np.unique(blocks[inside]):
            sel = inside & (blocks == block)
            cumulative = np.concatenate([[0], np.cumsum(self.block_rows(int(block)))])
            out[sel] += cumulative[into[sel]]
        return out.reshape(given.shape)

    def max_per_row(self) -> int:
        """Most instances one row can receive (for the capacity check)."""
        peak = float(self.rates.max(initial=0.0))
        if self.gap:
            peak *= self.gap_rows / self.batch_rows
        return int(np.ceil(peak)) if peak > 0 else 0


def rate_per_row(frequency: float, unit: str, seq_len: int, mean_length: float) -> float:
    """Expected instances per row for a frequency in ``unit`` (see the module docstring)."""
    if unit == "per_token":
        return frequency * seq_len
    if unit == "token_fraction":
        return frequency * seq_len / mean_length
    return frequency  # example_fraction


def make_rule(
    cfg: TaskConfig,
    task_index: int,
    seq_len: int,
    batch_rows: int,
    mean_length: float,
    seed: int,
) -> PlacementRule:
    """Build the placement rule of task ``cfg`` (a family's sub-skills share it)."""
    points = [(0, cfg.frequency)]
    if cfg.schedule.kind == "piecewise":
        points += [(int(step), float(freq)) for step, freq in cfg.schedule.points]
    # A later point at the same step wins; steps become row indices.
    merged: dict[int, float] = {}
    for step, freq in points:
        merged[step * batch_rows] = freq
    breakpoints = np.array(sorted(merged), dtype=np.int64)
    rates = np.array([rate_per_row(merged[b], cfg.unit, seq_len, mean_length) for b in breakpoints])
    gap = cfg.schedule.kind == "gap" and cfg.schedule.gap_batches > 1
    # The 0 once stood for a sub-skill index; it stays so that the phases of format-1 runs are kept.
    phase = float(np.random.default_rng([seed, task_index, 0, 0xF0]).random())
    return PlacementRule(
        task_index=task_index,
        breakpoints=breakpoints,
        rates=rates,
        gap_rows=batch_rows * (cfg.schedule.gap_batches if gap else 1),
        batch_rows=batch_rows,
        gap=gap,
        phase=phase,
        seed=seed,
    )


class SkillSequence:
    """Which sub-skill the k-th instance of a task family exercises.

    A family is placed as one task (so a row never receives more instances than the family's total
    rate allows); its instances are then dealt to sub-skills by a quota rule: instance k goes to the
    sub-skill ``s`` maximising ``(k + 1)·w_s − n_s(k)`` (``n_s`` = instances dealt so far, ties to the
    lower index). Every prefix then holds close to ``k·w_s`` instances of each sub-skill (within 1.2
    over 300 random weightings x 3000 instances; the tests assert < 2). The
    sequence is extended lazily and cached, so seeking costs a one-off pass over earlier instances.
    """

    def __init__(self, weights: list[float]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self._skills = np.zeros(0, dtype=np.int32)
        self._within = np.zeros(0, dtype=np.int64)
        self._dealt = np.zeros(len(w), dtype=np.int64)

    def __getitem__(self, k: int) -> tuple[int, int]:
        """(sub-skill, index of this instance among that sub-skill's instances)."""
        if len(self.weights) == 1:
            return 0, k
        if k >= len(self._skills):
            self._extend(max(k + 1, 2 * len(self._skills), 1024))
        return int(self._skills[k]), int(self._within[k])

    def _extend(self, n: int) -> None:
        start = len(self._skills)
        skills = np.empty(n - start, dtype=np.int32)
        within = np.empty(n - start, dtype=np.int64)
        dealt, w = self._dealt, self.weights
        for i, k in enumerate(range(start, n)):
            s = int(np.argmax((k + 1) * w - dealt))
            skills[i], within[i] = s, dealt[s]
            dealt[s] += 1
        self._skills = np.concatenate([self._skills, skills])
        self._within = np.concatenate([self._within, within])

    def counts(self, num_instances: int) -> np.ndarray:
        """Instances of each sub-skill among the first ``num_instances`` of the family."""
        if len(self.weights) == 1:
            return np.array([num_instances])
        if num_instances > len(self._skills):
            self._extend(num_instances)
        return np.bincount(self._skills[:num_instances], minlength=len(self.weights))
