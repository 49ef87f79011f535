"""Michaud et al.'s multitask sparse parity, as a token task.

Subtask ``i`` owns a fixed random ``k``-subset S_i of the ``num_bits`` positions (distinct across
subtasks, drawn in setup). An instance is the subtask's control token, ``n`` random bits and ``=``;
the answer is the parity of the bits in S_i::

    <ctrl_i> 0110…1 =   ->  1

The control token stands in for Michaud's one-hot control bits: one random ordinary token per
subtask, fixed by the task seed and never one of the ``0``/``1``/``=`` symbols. Subtask frequencies
default to Zipf, weight ∝ (i+1)^-alpha (Michaud's code: alpha = 1.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

from smalllm.tasks import register
from smalllm.tasks.base import Instance, Task


def _distinct_subsets(rng: np.random.Generator, n: int, k: int, count: int) -> list[tuple[int, ...]]:
    """``count`` distinct sorted k-subsets of range(n), in random order."""
    total = comb(n, k)
    if total <= 2 * count:
        # Nearly all subsets are needed: rejection sampling would stall, so choose among all of them.
        every = list(combinations(range(n), k))
        return [every[i] for i in rng.choice(total, size=count, replace=False).tolist()]
    subsets: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(subsets) < count:
        s = tuple(sorted(rng.choice(n, size=k, replace=False).tolist()))
        if s not in seen:
            seen.add(s)
            subsets.append(s)
    return subsets


@register
class SparseParity(Task):
    """Parity of a subtask-specific k-subset of n random bits; one sub-skill per subtask."""

    name = "sparse_parity"
    description = "Michaud multitask sparse parity: control token + n bits -> parity of subtask's k bits"

    @dataclass
    class Params:
        num_subtasks: int = 32
        """Number of subtasks (sub-skills), each with its own k-subset and control token."""
        num_bits: int = 32
        """Random bits per instance (n)."""
        k: int = 3
        """Bits per subset whose parity is the answer; the complexity knob."""
        alpha: float = 1.4
        """Zipf exponent of the default subtask weights, (i+1)^-alpha."""

        def validate(self) -> None:
            if self.num_subtasks < 1:
                raise ValueError(f"num_subtasks: must be at least 1, got {self.num_subtasks}")
            if not 1 <= self.num_bits <= 1024:
                raise ValueError(f"num_bits: must be between 1 and 1024, got {self.num_bits}")
            if not 1 <= self.k <= self.num_bits:
                raise ValueError(f"k: must be between 1 and num_bits ({self.num_bits}), got {self.k}")
            if comb(self.num_bits, self.k) < self.num_subtasks:
                raise ValueError(
                    f"num_subtasks: {self.num_subtasks} distinct {self.k}-subsets of {self.num_bits} bits "
                    "do not exist"
                )
            if self.alpha < 0:
                raise ValueError(f"alpha: must be non-negative, got {self.alpha}")

    def setup(self, rng: np.random.Generator) -> None:
        p, v = self.params, self.vocab
        self._bit = np.array(v.symbols(["0", "1"]), dtype=np.int64)
        self._eq = v.symbol("=")
        reserved = {*self._bit.tolist(), self._eq}
        # Drawing 3 spare tokens guarantees num_subtasks of them are not reserved symbols.
        drawn = v.random_tokens(p.num_subtasks + 3, rng)
        self.control = [t for t in drawn if t not in reserved][: p.num_subtasks]
        """Control token of each subtask (stands in for Michaud's one-hot control bits)."""
        self.subsets = _distinct_subsets(rng, p.num_bits, p.k, p.num_subtasks)
        self._subset_idx = [np.array(s, dtype=np.int64) for s in self.subsets]

    def table_tokens(self) -> list[int]:
        return list(self.control)

    @property
    def skills(self) -> list[str]:
        return [f"sparse_parity/{i}" for i in range(self.params.num_subtasks)]

    def default_skill_weights(self) -> list[float]:
        return [float((i + 1) ** -self.params.alpha) for i in range(self.params.num_subtasks)]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        bits = rng.integers(0, 2, size=self.params.num_bits)
        parity = int(bits[self._subset_idx[skill]].sum()) & 1
        prompt = (self.control[skill], *self._bit[bits].tolist(), self._eq)
        return Instance(prompt, (int(self._bit[parity]),), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(int(b) for b in self._bit)

    def instance_space(self) -> int:
        return self.params.num_subtasks * 2**self.params.num_bits

    def max_length(self) -> int:
        return self.params.num_bits + 4
