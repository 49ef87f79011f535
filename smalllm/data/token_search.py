"""Exact search for many short token sequences at once, in numpy.

Every window of each pattern length is hashed with a polynomial hash (random odd 64-bit
multipliers, arithmetic mod 2^64) and looked up in the sorted pattern hashes with ``searchsorted``;
each hash hit is then compared token by token, so every match reported is exact. The cost is one
multiply-add per token per token of pattern length, whatever the number of patterns (4,950 ``t_cmp``
pairs cost the same as one), plus log2(patterns) per lookup.

Used by the leakage audit (:mod:`smalllm.data.leakage`) and by the decontamination of held-out sets
against the training background (:func:`smalllm.data.pool_cache.found_in_background`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

CHUNK_TOKENS = 1 << 20
"""Tokens hashed at a time when scanning a long array: bounds memory (a few arrays of this many
8-byte values)."""


@functools.cache
def _multipliers(length: int) -> np.ndarray:
    # Odd, so no multiplier loses the low bits of a token; fixed, so the same text hashes the same.
    rng = np.random.default_rng([0x1EA4, length])
    return rng.integers(0, 2**63, size=length, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def window_hashes(ids: np.ndarray, length: int) -> np.ndarray:
    """Hash of every ``length``-token window of each row of ``ids`` [rows, L] -> [rows, L-length+1]."""
    ids = np.atleast_2d(ids)
    width = ids.shape[1] - length + 1
    if width <= 0:
        return np.zeros((ids.shape[0], 0), dtype=np.uint64)
    u = ids.astype(np.uint64)
    mult = _multipliers(length)
    h = u[:, :width] * mult[0]
    for j in range(1, length):
        h += u[:, j : j + width] * mult[j]
    return h


def lookup(sorted_hashes: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Index into ``sorted_hashes`` of each of ``h``, or -1 where absent."""
    if len(sorted_hashes) == 0:
        return np.full(h.shape, -1, dtype=np.int64)
    pos = np.searchsorted(sorted_hashes, h)
    pos[pos == len(sorted_hashes)] = 0
    return np.where(sorted_hashes[pos] == h, pos, -1)


FILTER_BITS = 20
"""Low hash bits of the membership table every window is checked in before the sorted lookup (a
window passes with probability about patterns / 2^20, so the lookup sees few)."""


@dataclass
class _OneLength:
    hashes: np.ndarray
    """Sorted distinct hashes of the patterns of this length."""
    filter: np.ndarray
    """True at the low :data:`FILTER_BITS` bits of each of :attr:`hashes`."""
    owners: dict[int, list[int]]
    """Per hash, the indices of the patterns with it (equal patterns, or a collision)."""


class PatternIndex:
    """Token sequences (``patterns``; empty ones are never found) searchable together in rows of tokens."""

    def __init__(self, patterns: Sequence[Sequence[int]]) -> None:
        self.patterns = [tuple(int(t) for t in p) for p in patterns]
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(self.patterns):
            if p:
                by_length.setdefault(len(p), []).append(i)
        self._by_length: dict[int, _OneLength] = {}
        for n, items in sorted(by_length.items()):
            h = window_hashes(np.array([self.patterns[i] for i in items], dtype=np.int64), n)[:, 0]
            owners: dict[int, list[int]] = {}
            for i, value in zip(items, h.tolist()):
                owners.setdefault(value, []).append(i)
            table = np.zeros(1 << FILTER_BITS, dtype=bool)
            table[h & np.uint64((1 << FILTER_BITS) - 1)] = True
            self._by_length[n] = _OneLength(np.unique(h), table, owners)

    @property
    def max_length(self) -> int:
        return max(self._by_length, default=0)

    def matches(self, ids: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """``(row, offset, pattern)`` of every exact occurrence of a pattern in rows ``ids`` [rows, L]
        (a pattern never spans two rows); by pattern length, then row, then offset."""
        ids = np.atleast_2d(ids)
        for n, one in self._by_length.items():
            h = window_hashes(ids, n)
            rows, offsets = np.nonzero(one.filter[h & np.uint64((1 << FILTER_BITS) - 1)])
            hit = lookup(one.hashes, h[rows, offsets]) >= 0
            for r, o in zip(rows[hit].tolist(), offsets[hit].tolist()):
                window = tuple(ids[r, o : o + n].tolist())
                for p in one.owners[int(h[r, o])]:
                    if self.patterns[p] == window:
                        yield r, o, p

    def found_in(self, arrays: Iterable[np.ndarray], limit: int | None = None) -> set[int]:
        """Indices of the patterns that occur in any of the 1-D token ``arrays`` (each searched on its
        own, a pattern never spans two), reading at most ``limit`` tokens in all (None: all of them),
        :data:`CHUNK_TOKENS` at a time."""
        found: set[int] = set()
        overlap = max(self.max_length - 1, 0)
        left = limit
        for array in arrays:
            end = len(array) if left is None else min(len(array), left)
            for start in range(0, end, CHUNK_TOKENS):
                chunk = np.asarray(array[start : min(end, start + CHUNK_TOKENS + overlap)], dtype=np.int64)
                found.update(p for _, _, p in self.matches(chunk[None, :]))
            if left is not None:
                left -= end
                if left <= 0:
                    break
        return found
