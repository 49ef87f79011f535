"""Recall tasks: in-context key-value recall (``kv_recall``) and memorised facts (``fact_lookup``).

``kv_recall`` tests retrieval from the context: ``a3c5b1?c=`` -> ``5``.

``fact_lookup`` tests retrieval from the weights: a fixed table of ``num_facts``
(entity, relation) -> value facts over random ordinary tokens, drawn once from the task seed.
An instance is ``ENTITY RELATION`` -> ``VALUE``. Because the point is memorisation, there is no
unseen instance to hold out: ``instance_space() == num_facts`` and the class sets
``memorization = True`` so that evaluation scores the same facts that training shows.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from math import ceil, perm
from typing import ClassVar

import numpy as np

from smalllm.tasks import register
from smalllm.tasks.base import Instance, Task

_LETTERS = string.ascii_lowercase
_DIGITS = "0123456789"


@register
class KVRecall(Task):
    """Key-value pairs in context, then a query key; the answer is its value."""

    name = "kv_recall"
    description = "In-context key-value recall: 'a3c5b1?c=' -> '5'"

    @dataclass
    class Params:
        num_pairs: int = 4
        """Key-value pairs in the context; the complexity knob."""
        num_keys: int = 26
        """Possible keys, the first letters of a-z (keys in one instance are distinct)."""
        num_values: int = 10
        """Possible values, the digits 0..num_values-1 (values may repeat)."""

        def validate(self) -> None:
            if not 1 <= self.num_keys <= len(_LETTERS):
                raise ValueError(f"num_keys: must be between 1 and {len(_LETTERS)}, got {self.num_keys}")
            if not 1 <= self.num_pairs <= self.num_keys:
                raise ValueError(
                    f"num_pairs: must be between 1 and num_keys ({self.num_keys}), got {self.num_pairs}"
                )
            if not 2 <= self.num_values <= len(_DIGITS):
                raise ValueError(f"num_values: must be between 2 and {len(_DIGITS)}, got {self.num_values}")

    def setup(self, rng: np.random.Generator) -> None:
        self._key = self.vocab.symbols(list(_LETTERS[: self.params.num_keys]))
        self._value = self.vocab.symbols(list(_DIGITS[: self.params.num_values]))
        self._query, self._eq = self.vocab.symbols(["?", "="])

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        p = self.params
        keys = rng.choice(p.num_keys, size=p.num_pairs, replace=False).tolist()
        values = rng.integers(0, p.num_values, size=p.num_pairs).tolist()
        q = int(rng.integers(p.num_pairs))
        prompt: list[int] = []
        for k, v in zip(keys, values):
            prompt += [self._key[k], self._value[v]]
        prompt += [self._query, self._key[keys[q]], self._eq]
        return Instance(tuple(prompt), (self._value[values[q]],), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(self._value)

    def instance_space(self) -> int:
        p = self.params
        return perm(p.num_keys, p.num_pairs) * p.num_values**p.num_pairs * p.num_pairs

    def max_length(self) -> int:
        return 2 * self.params.num_pairs + 5


@register
class FactLookup(Task):
    """A fixed table of (entity, relation) -> value facts over random tokens, to be memorised."""

    name = "fact_lookup"
    description = "Memorised facts: ENTITY RELATION -> VALUE over random tokens (eval reuses train facts)"
    memorization: ClassVar[bool] = True
    """The instances are the whole fact table: evaluation measures recall of trained facts, not
    generalisation, so no train/test split applies (the pool should not hold any facts out)."""

    @dataclass
    class Params:
        num_facts: int = 200
        """Facts in the table (= distinct instances); the complexity knob."""
        num_relations: int = 4
        """Relation tokens; entities number ceil(num_facts / num_relations)."""
        num_values: int = 32
        """Value tokens a fact can have (the answer space)."""

        def validate(self) -> None:
            if self.num_facts < 1:
                raise ValueError(f"num_facts: must be at least 1, got {self.num_facts}")
            if self.num_relations < 1:
                raise ValueError(f"num_relations: must be at least 1, got {self.num_relations}")
            if self.num_values < 2:
                raise ValueError(f"num_values: must be at least 2, got {self.num_values}")

    def setup(self, rng: np.random.Generator) -> None:
        p = self.params
        num_entities = ceil(p.num_facts / p.num_relations)
        # Entities, relations and values are disjoint token sets, so a token's role is unambiguous.
        tokens = self.vocab.random_tokens(num_entities + p.num_relations + p.num_values, rng)
        self.entities = tokens[:num_entities]
        self.relations = tokens[num_entities : num_entities + p.num_relations]
        self.values = tokens[num_entities + p.num_relations :]
        pairs = rng.choice(num_entities * p.num_relations, size=p.num_facts, replace=False).tolist()
        answers = rng.integers(0, p.num_values, size=p.num_facts).tolist()
        self.facts: list[tuple[int, int, int]] = [
            (self.entities[x // p.num_relations], self.relations[x % p.num_relations], self.values[a])
            for x, a in zip(pairs, answers)
        ]
        """(entity, relation, value) token ids of every fact, in a fixed order."""

    def table_tokens(self) -> list[int]:
        return [*self.entities, *self.relations, *self.values]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        e, r, v = self.facts[int(rng.integers(self.params.num_facts))]
        return Instance((e, r), (v,), skill)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return tuple(self.values)

    def instance_space(self) -> int:
        return self.params.num_facts

    def max_length(self) -> int:
        return 4
