"""String-manipulation tasks (``copy``, ``reverse``, ``sort``) and bracket matching (``dyck``).

The string tasks draw ``length`` letters uniformly from the first ``alphabet_size`` lowercase
letters and write ``abca|``; the answer is the string copied, reversed or sorted (``aabc``).

``dyck`` is a classification task: ``length`` brackets of ``num_types`` kinds, then ``=``; the answer is
``1`` if the sequence is balanced, else ``0`` (half of the instances each). Balanced sequences are
uniform over those whose nesting depth never exceeds ``max_depth``. Unbalanced ones are such a
sequence with one corruption — a bracket retyped (``(]``) or an opener swapped with a later closer —
so they have the same length and bracket counts and never nest deeper than ``max_depth``; neither
length, counts nor depth gives the answer away.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smalllm.tasks import register
from smalllm.tasks.base import Instance, Task

_LETTERS = string.ascii_lowercase


@dataclass
class StringParams:
    length: int = 8
    """Letters per string; the complexity knob."""
    alphabet_size: int = 26
    """Letters used, the first ones of a-z (also the answer space)."""

    def validate(self) -> None:
        if not 1 <= self.length <= 512:
            raise ValueError(f"length: must be between 1 and 512, got {self.length}")
        if not 2 <= self.alphabet_size <= len(_LETTERS):
            raise ValueError(
                f"alphabet_size: must be between 2 and {len(_LETTERS)}, got {self.alphabet_size}"
            )


class _StringTask(Task):
    """Shared generator of the string tasks; subclasses define :meth:`transform`."""

    Params = StringParams

    def setup(self, rng: np.random.Generator) -> None:
        self._letter = self.vocab.symbols(list(_LETTERS[: self.params.alphabet_size]))
        self._sep = self.vocab.symbol("|")

    @staticmethod
    def transform(letters: list[int]) -> list[int]:
        """The answer string (as letter indices) for the prompt string."""
        raise NotImplementedError

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        p = self.params
        letters = rng.integers(0, p.alphabet_size, size=p.length).tolist()
        ids = self._letter
        prompt = (*(ids[x] for x in letters), self._sep)
        return Instance(prompt, tuple(ids[x] for x in self.transform(letters)), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(self._letter)

    def instance_space(self) -> int:
        return self.params.alphabet_size**self.params.length

    def max_length(self) -> int:
        return 2 * self.params.length + 2


@register
class Copy(_StringTask):
    name = "copy"
    description = "Copy a random string: 'abca|' -> 'abca'"

    @staticmethod
    def transform(letters: list[int]) -> list[int]:
        return letters


@register
class Reverse(_StringTask):
    name = "reverse"
    description = "Reverse a random string: 'abca|' -> 'acba'"

    @staticmethod
    def transform(letters: list[int]) -> list[int]:
        return letters[::-1]


@register
class Sort(_StringTask):
    name = "sort"
    description = "Sort the letters of a random string: 'bdca|' -> 'abcd'"

    @staticmethod
    def transform(letters: list[int]) -> list[int]:
        return sorted(letters)


_BRACKETS = ("()", "[]", "{}", "<>")


def is_balanced(seq: Sequence[int]) -> bool:
    """Balance of a bracket sequence coded as ``2 * type`` (opener) and ``2 * type + 1`` (closer)."""
    stack: list[int] = []
    for s in seq:
        if s & 1:
            if not stack or stack.pop() != s - 1:
                return False
        else:
            stack.append(s)
    return not stack


@register
class Dyck(Task):
    """Is a bracket sequence balanced? Answer ``1``/``0``, half of the instances each."""

    name = "dyck"
    description = "Dyck bracket matching: '([)]=' -> 1 if balanced else 0 (balanced half the time)"

    @dataclass
    class Params:
        length: int = 16
        """Brackets per sequence (even)."""
        num_types: int = 2
        """Bracket kinds, from (), [], {}, <>."""
        max_depth: int = 4
        """Deepest nesting of any sequence (balanced or not); the complexity knob with length."""

        def validate(self) -> None:
            if not 2 <= self.length <= 512 or self.length % 2:
                raise ValueError(f"length: must be even and between 2 and 512, got {self.length}")
            if not 1 <= self.num_types <= len(_BRACKETS):
                raise ValueError(f"num_types: must be between 1 and {len(_BRACKETS)}, got {self.num_types}")
            if self.max_depth < 1:
                raise ValueError(f"max_depth: must be at least 1, got {self.max_depth}")

    def setup(self, rng: np.random.Generator) -> None:
        p = self.params
        self._sym = self.vocab.symbols([c for pair in _BRACKETS[: p.num_types] for c in pair])
        self._eq = self.vocab.symbol("=")
        self._bit = self.vocab.symbols(["0", "1"])
        n, depth = p.length, min(p.max_depth, p.length // 2)
        # ways[i][d]: number of depth-bounded completions from position i at depth d (exact ints), so
        # that opening with probability ways[i+1][d+1] / ways[i][d] samples balanced sequences uniformly.
        ways = [[0] * (depth + 2) for _ in range(n + 1)]
        ways[n][0] = 1
        for i in range(n - 1, -1, -1):
            for d in range(depth + 1):
                ways[i][d] = (ways[i + 1][d + 1] if d < depth else 0) + (ways[i + 1][d - 1] if d else 0)
        self._p_open = [
            [ways[i + 1][d + 1] / ways[i][d] if ways[i][d] and d < depth else 0.0 for d in range(depth + 1)]
            for i in range(n)
        ]

    def _balanced(self, rng: np.random.Generator) -> list[int]:
        p = self.params
        u = rng.random(p.length).tolist()
        types = rng.integers(0, p.num_types, size=p.length // 2).tolist()
        seq: list[int] = []
        stack: list[int] = []
        for i in range(p.length):
            if u[i] < self._p_open[i][len(stack)]:
                t = 2 * types.pop()
                stack.append(t)
                seq.append(t)
            else:
                seq.append(stack.pop() + 1)
        return seq

    def _corrupt(self, seq: list[int], rng: np.random.Generator) -> list[int]:
        t = self.params.num_types
        for _ in range(16):
            out = list(seq)
            if t > 1 and rng.integers(2):
                # Retype one bracket: its partner no longer matches, so this is always unbalanced.
                i = int(rng.integers(len(out)))
                new_type = (out[i] // 2 + 1 + int(rng.integers(t - 1))) % t
                out[i] = 2 * new_type + (out[i] & 1)
            else:
                # Swap an opener with a later closer: depth only drops, usually below zero.
                openers = [i for i, s in enumerate(out) if not s & 1]
                i = openers[int(rng.integers(len(openers)))]
                closers = [j for j in range(i + 1, len(out)) if out[j] & 1]
                j = closers[int(rng.integers(len(closers)))]
                out[i], out[j] = out[j], out[i]
            if not is_balanced(out):
                return out
        # Fallback (rare): a closer first is unbalanced whatever follows.
        j = next(j for j, s in enumerate(seq) if s & 1)
        out = list(seq)
        out[0], out[j] = out[j], out[0]
        return out

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        seq = self._balanced(rng)
        balanced = bool(rng.integers(2))
        if not balanced:
            seq = self._corrupt(seq, rng)
        prompt = (*(self._sym[s] for s in seq), self._eq)
        return Instance(prompt, (self._bit[int(balanced)],), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(self._bit)

    def instance_space(self) -> int | None:
        # Unbalanced instances are not enumerable in closed form; balanced ones bound it from below.
        return None

    def max_length(self) -> int:
        return self.params.length + 3
