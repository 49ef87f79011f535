"""Huang et al.'s injected token tasks: comparison (``t_cmp``) and modular addition (``t_add``).

Both read the same table: ``num_values`` distinct random ordinary tokens S with the bijection
``val: S -> 0..n-1`` given by the order they were drawn. The table depends only on the task seed and
``num_values``, so ``t_cmp`` and ``t_add`` built with the same seed share one value table, as in the
paper (one set S of 100 tokens used by both tasks). The tokens come from the ids the run allows
for task tables (``data.task_tokens``, see :mod:`smalllm.data.task_tokens`): by default tokens the
background uses, each with a text form of its own.

Pool sizes: ``t_cmp`` has n·(n−1) ordered pairs (TOK1 ≠ TOK2), 9,900 at the default n = 100; a
finite pool with the default ``pool_size`` 10,000 therefore holds all of them, and the default
``test_fraction`` 0.5 holds 4,950 out of training. ``t_add`` has n² = 10,000 (pairs may repeat a
token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smalllm.tasks import register
from smalllm.tasks.base import Instance, Task, TaskVocab


def value_table(
    vocab: TaskVocab, rng: np.random.Generator, n: int, extra: int = 0
) -> tuple[list[int], list[int]]:
    """Draw the value table (``n`` distinct tokens, token ``i`` has value ``i``) and ``extra`` more tokens.

    The table is drawn first and on its own, so it is identical whatever ``extra`` is; the extra
    tokens (labels) are distinct from the table and from each other.
    """
    table = vocab.random_tokens(n, rng)
    if not extra:
        return table, []
    in_table = set(table)
    # n + extra distinct draws contain at least `extra` tokens outside the table.
    candidates = vocab.random_tokens(n + extra, rng)
    others = [t for t in candidates if t not in in_table][:extra]
    return table, others


@dataclass
class TableParams:
    """Parameters of a task on the shared value table (``t_cmp`` and ``t_add`` alike)."""

    num_values: int = 100
    """Size of the random token table S (values 0..n-1, and T_ADD's modulus); the complexity knob
    (paper: 100)."""

    def validate(self) -> None:
        if self.num_values < 2:
            raise ValueError(f"num_values: must be at least 2, got {self.num_values}")


class ValueTableTask(Task):
    """A task on the shared value table: draws it in ``setup`` (with ``num_labels`` label tokens
    outside it) and reads two table tokens per instance. Subclasses write ``generate``."""

    Params = TableParams

    num_labels = 0
    """Tokens drawn besides the table, e.g. T_CMP's two answer labels."""

    def setup(self, rng: np.random.Generator) -> None:
        self.table, self.labels = value_table(self.vocab, rng, self.params.num_values, extra=self.num_labels)

    def table_tokens(self) -> list[int]:
        return [*self.table, *self.labels]

    def max_length(self) -> int:
        return 4


@register
class TCmp(ValueTableTask):
    """``TOK1 TOK2 -> A`` if ``val(TOK1) < val(TOK2)`` else ``B`` (Huang et al.'s T_CMP)."""

    name = "t_cmp"
    description = "Huang et al. T_CMP: two value-table tokens -> label A if val1 < val2 else B"
    num_labels = 2

    @property
    def label_less(self) -> int:
        return self.labels[0]

    @property
    def label_not_less(self) -> int:
        return self.labels[1]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        n = self.params.num_values
        i = int(rng.integers(n))
        # Draw j from the n-1 values other than i, so TOK1 != TOK2 without rejection.
        j = int(rng.integers(n - 1))
        if j >= i:
            j += 1
        label = self.label_less if i < j else self.label_not_less
        return Instance((self.table[i], self.table[j]), (label,), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return (self.label_less, self.label_not_less)

    def instance_space(self) -> int:
        n = self.params.num_values
        return n * (n - 1)


@register
class TAdd(ValueTableTask):
    """``TOK1 TOK2 -> TOK3`` with ``val(TOK3) = (val(TOK1) + val(TOK2)) mod n`` (Huang et al.'s T_ADD)."""

    name = "t_add"
    description = "Huang et al. T_ADD: two value-table tokens -> the token of (val1 + val2) mod n"

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        n = self.params.num_values
        i = int(rng.integers(n))
        j = int(rng.integers(n))
        return Instance((self.table[i], self.table[j]), (self.table[(i + j) % n],), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(self.table)

    def instance_space(self) -> int:
        return self.params.num_values**2
