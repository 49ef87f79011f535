"""Arithmetic tasks rendered with one token per character.

* ``addition`` — Skill-It's digit-wise addition: ``123+456,1=`` -> ``7`` (digit 1 of 579, digit 0 is
  the ones digit). Sub-skill ``i`` is digit position ``i``.
* ``multi_digit_add`` — the whole sum: ``123+456=`` -> ``0579`` (optionally least-significant first).
* ``modular`` — ``a op b mod p`` with decimal operands and a decimal, multi-token answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smalllm.tasks import register
from smalllm.tasks.base import Instance, Task

_DIGITS = "0123456789"


def _digits(x: int, width: int) -> list[int]:
    """Decimal digits of ``x``, most significant first, zero-padded to ``width``."""
    out = [0] * width
    for i in range(width - 1, -1, -1):
        x, out[i] = divmod(x, 10)
    return out


def _check_num_digits(n: int, most: int) -> None:
    if not 1 <= n <= most:
        raise ValueError(f"num_digits: must be between 1 and {most}, got {n}")


@register
class Addition(Task):
    """Fixed-width addition; the query names one digit of the sum and the answer is that digit."""

    name = "addition"
    description = "Skill-It addition: '123+456,i=' -> digit i of the sum (skill = digit position, 0 = ones)"

    @dataclass
    class Params:
        num_digits: int = 3
        """Digits per operand (zero-padded, uniform over 0..10^n-1); Skill-It uses 3."""
        include_carry: bool = False
        """Add a sub-skill for the final carry digit (position num_digits, only ever 0 or 1).
        Off by default, as in Skill-It, where the skills are the num_digits digit positions."""

        def validate(self) -> None:
            # The queried position is written as one digit, so positions stop at 9.
            _check_num_digits(self.num_digits, 9)

    def setup(self, rng: np.random.Generator) -> None:
        self._digit = self.vocab.symbols(list(_DIGITS))
        self._plus, self._comma, self._eq = self.vocab.symbols(["+", ",", "="])
        self._bound = 10**self.params.num_digits

    @property
    def skills(self) -> list[str]:
        n = self.params.num_digits + int(self.params.include_carry)
        return [f"addition/digit{i}" for i in range(n)]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        n, d = self.params.num_digits, self._digit
        a = int(rng.integers(self._bound))
        b = int(rng.integers(self._bound))
        answer = (a + b) // 10**skill % 10
        prompt = [d[x] for x in _digits(a, n)]
        prompt.append(self._plus)
        prompt += [d[x] for x in _digits(b, n)]
        prompt += [self._comma, d[skill], self._eq]
        return Instance(tuple(prompt), (d[answer],), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        # The final carry digit (the include_carry sub-skill) is only ever 0 or 1.
        return tuple(self._digit[:2] if skill == self.params.num_digits else self._digit)

    def instance_space(self) -> int:
        return self._bound**2 * len(self.skills)

    def max_length(self) -> int:
        return 2 * self.params.num_digits + 4 + 1 + 1


@register
class MultiDigitAdd(Task):
    """Fixed-width addition with the whole (zero-padded) sum as a multi-token answer."""

    name = "multi_digit_add"
    description = "Multi-digit addition: '123+456=' -> '0579' (num_digits+1 answer digits)"

    @dataclass
    class Params:
        num_digits: int = 3
        """Digits per operand (zero-padded, uniform over 0..10^n-1)."""
        reverse_answer: bool = False
        """Write the sum least-significant digit first (the carry then flows left to right)."""

        def validate(self) -> None:
            _check_num_digits(self.num_digits, 30)

    def setup(self, rng: np.random.Generator) -> None:
        self._digit = self.vocab.symbols(list(_DIGITS))
        self._plus, self._eq = self.vocab.symbols(["+", "="])

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        n, d = self.params.num_digits, self._digit
        # Digits drawn one by one so that num_digits may exceed the int64 range.
        a_digits = rng.integers(0, 10, size=n).tolist()
        b_digits = rng.integers(0, 10, size=n).tolist()
        a = int("".join(map(str, a_digits)))
        b = int("".join(map(str, b_digits)))
        total = _digits(a + b, n + 1)
        if self.params.reverse_answer:
            total.reverse()
        prompt = [d[x] for x in a_digits] + [self._plus] + [d[x] for x in b_digits] + [self._eq]
        return Instance(tuple(prompt), tuple(d[x] for x in total), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        # Any digit at any answer position: a residue mod p is written with the same digits.
        return tuple(self._digit)

    def instance_space(self) -> int:
        return 10 ** (2 * self.params.num_digits)

    def max_length(self) -> int:
        return 2 * self.params.num_digits + 2 + self.params.num_digits + 1 + 1


_OPS = {"add": "+", "sub": "-", "mul": "*"}


@register
class Modular(Task):
    """``a op b = c (mod p)`` with operands in 0..p-1, written in decimal without padding."""

    name = "modular"
    description = "Modular arithmetic: '12*34=' -> (12*34) mod p in decimal (multi-token answer)"

    @dataclass
    class Params:
        modulus: int = 97
        """The modulus p; operands are uniform over 0..p-1 (the complexity knob)."""
        op: str = "add"
        """Operation: add, sub or mul."""

        def validate(self) -> None:
            if not 2 <= self.modulus <= 10**9:
                raise ValueError(f"modulus: must be between 2 and 10^9, got {self.modulus}")
            if self.op not in _OPS:
                raise ValueError(f"op: must be one of {', '.join(_OPS)}, got {self.op!r}")

    def setup(self, rng: np.random.Generator) -> None:
        self._digit = self.vocab.symbols(list(_DIGITS))
        self._op, self._eq = self.vocab.symbols([_OPS[self.params.op], "="])

    def _number(self, x: int) -> list[int]:
        return [self._digit[int(c)] for c in str(x)]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        p, op = self.params.modulus, self.params.op
        a = int(rng.integers(p))
        b = int(rng.integers(p))
        c = (a + b) % p if op == "add" else (a - b) % p if op == "sub" else (a * b) % p
        prompt = self._number(a) + [self._op] + self._number(b) + [self._eq]
        return Instance(tuple(prompt), tuple(self._number(c)), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        # Any digit at any answer position: every digit of a residue mod p can be any of them.
        return tuple(self._digit)

    def instance_space(self) -> int:
        return self.params.modulus**2

    def max_length(self) -> int:
        width = len(str(self.params.modulus - 1))
        return 3 * width + 2 + 1
