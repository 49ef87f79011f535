"""Skill-It's LEGO task: resolve a chain of binary variable assignments.

An instance is a chain of ``num_vars`` variables named by distinct random letters. The root is set
to a bit and every other variable copies (``+``) or negates (``-``) its parent. The clauses are
shuffled, then one variable is queried::

    c=+b;a=1;b=-a?c=   ->  0

Sub-skill ``i`` (``lego/depth{i+1}``) queries the variable at depth ``i + 1`` of the chain (the
root has depth 1), as in Skill-It, where deeper variables need more resolution steps.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from math import factorial, perm

import numpy as np

from smalllm.tasks import register
from smalllm.tasks.base import Instance, Task

_LETTERS = string.ascii_lowercase


@register
class Lego(Task):
    """Chain of copy/negate assignments; the answer is the bit of the queried variable."""

    name = "lego"
    description = "Skill-It LEGO: shuffled chain x=b, y=+x|-x, ...; answer the queried bit (skill = depth)"

    @dataclass
    class Params:
        num_vars: int = 5
        """Variables in the chain (Skill-It: 5); also the number of sub-skills (one per depth)."""
        shuffle_clauses: bool = True
        """Present the clauses in random order (False: in chain order, which is much easier)."""

        def validate(self) -> None:
            if not 1 <= self.num_vars <= len(_LETTERS):
                raise ValueError(f"num_vars: must be between 1 and {len(_LETTERS)}, got {self.num_vars}")

    def setup(self, rng: np.random.Generator) -> None:
        v = self.vocab
        self._letter = v.symbols(list(_LETTERS))
        self._bit = v.symbols(["0", "1"])
        self._op = v.symbols(["+", "-"])  # index 0: copy, 1: negate (the index is xor-ed into the bit)
        self._eq, self._sep, self._query = v.symbols(["=", ";", "?"])

    @property
    def skills(self) -> list[str]:
        return [f"lego/depth{d + 1}" for d in range(self.params.num_vars)]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        k = self.params.num_vars
        names = [self._letter[i] for i in rng.choice(len(_LETTERS), size=k, replace=False).tolist()]
        ops = rng.integers(0, 2, size=k).tolist()  # ops[0] is the root's bit
        bits = [ops[0]]
        clauses = [[names[0], self._eq, self._bit[ops[0]]]]
        for d in range(1, k):
            bits.append(bits[-1] ^ ops[d])
            clauses.append([names[d], self._eq, self._op[ops[d]], names[d - 1]])
        order = rng.permutation(k).tolist() if self.params.shuffle_clauses else range(k)
        prompt: list[int] = []
        for n, c in enumerate(order):
            if n:
                prompt.append(self._sep)
            prompt.extend(clauses[c])
        prompt += [self._query, names[skill], self._eq]
        return Instance(tuple(prompt), (self._bit[bits[skill]],), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(self._bit)

    def instance_space(self) -> int:
        k = self.params.num_vars
        orders = factorial(k) if self.params.shuffle_clauses else 1
        return k * perm(len(_LETTERS), k) * 2**k * orders

    def max_length(self) -> int:
        k = self.params.num_vars
        # root clause 3 tokens, others 4, k-1 separators, query 3, answer 1, EOD 1
        return 3 + 4 * (k - 1) + (k - 1) + 3 + 1 + 1
