"""Background corpora: the text the task instances are injected into.

* ``synthetic`` – a built-in English-like corpus: a lexicon of pronounceable pseudo-words split into
  parts of speech, Zipfian word choice within each, and a small sentence grammar with agreement
  between a subject and its preferred verbs (so there is structure to learn). A small ``num_words``
  gives a simplified vocabulary in the spirit of Muckatira et al. Deterministic; no downloads.
* ``files`` – local ``.txt`` (one document per blank-line-separated block), ``.jsonl``/``.json`` and
  ``.parquet`` files, read through ``datasets``.
* ``hub`` – any ``datasets.load_dataset`` name (cached or streaming). Never used by the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from smalllm.data.config import BackgroundConfig, SyntheticCorpusConfig
from smalllm.errors import ConfigError

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "st",
    "tr",
    "pl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "oo"]
_CODAS = ["", "", "n", "r", "s", "t", "m", "l", "nd", "st"]
_DETERMINERS = ["the", "a", "this", "every", "some", "my"]
_PREPOSITIONS = ["on", "in", "near", "under", "with", "from", "over"]
_CONJUNCTIONS = ["and", "but", "so", "while"]


class SyntheticCorpus:
    """Deterministic generator of Zipfian pseudo-English documents."""

    def __init__(self, cfg: SyntheticCorpusConfig, seed: int = 0) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([seed, 0xC0, 0x12])
        words = self._lexicon(cfg.num_words, rng)
        # Parts of speech: half nouns, a quarter verbs, a quarter adjectives.
        n_noun, n_verb = len(words) // 2, len(words) // 4
        self.nouns = words[:n_noun]
        self.verbs = words[n_noun : n_noun + n_verb]
        self.adjectives = words[n_noun + n_verb :]
        self._zipf = {k: self._zipf_probs(len(v), cfg.zipf_exponent) for k, v in self._pos().items()}
        # Each noun prefers a small set of verbs: the learnable dependency of the grammar.
        self.preferred_verbs = rng.integers(0, len(self.verbs), size=(len(self.nouns), 4))
        self.seed = seed

    def _pos(self) -> dict[str, list[str]]:
        return {"noun": self.nouns, "verb": self.verbs, "adj": self.adjectives}

    @staticmethod
    def _zipf_probs(n: int, exponent: float) -> np.ndarray:
        p = 1.0 / np.arange(1, n + 1) ** exponent
        return p / p.sum()

    @staticmethod
    def _lexicon(n: int, rng: np.random.Generator) -> list[str]:
        seen: dict[str, None] = {}
        reserved = set(_DETERMINERS + _PREPOSITIONS + _CONJUNCTIONS)
        while len(seen) < n:
            syllables = rng.integers(1, 4)
            word = "".join(
                _ONSETS[rng.integers(len(_ONSETS))]
                + _VOWELS[rng.integers(len(_VOWELS))]
                + _CODAS[rng.integers(len(_CODAS))]
                for _ in range(syllables)
            )
            if word not in reserved:
                seen.setdefault(word, None)
        return list(seen)

    def _pick(self, rng: np.random.Generator, pos: str) -> str:
        words = self._pos()[pos]
        return words[rng.choice(len(words), p=self._zipf[pos])]

    def _noun_phrase(self, rng: np.random.Generator) -> tuple[str, int]:
        idx = int(rng.choice(len(self.nouns), p=self._zipf["noun"]))
        parts = [_DETERMINERS[rng.integers(len(_DETERMINERS))]]
        if rng.random() < 0.4:
            parts.append(self._pick(rng, "adj"))
        parts.append(self.nouns[idx])
        return " ".join(parts), idx

    def _clause(self, rng: np.random.Generator) -> str:
        subject, noun = self._noun_phrase(rng)
        if rng.random() < 0.8:
            verb = self.verbs[self.preferred_verbs[noun, rng.integers(4)]]
        else:
            verb = self._pick(rng, "verb")
        obj, _ = self._noun_phrase(rng)
        clause = f"{subject} {verb} {obj}"
        if rng.random() < 0.3:
            place, _ = self._noun_phrase(rng)
            clause += f" {_PREPOSITIONS[rng.integers(len(_PREPOSITIONS))]} {place}"
        return clause

    def document(self, index: int) -> str:
        """Document ``index`` (random access: each document has its own RNG stream)."""
        rng = np.random.default_rng([self.seed, index])
        sentences = []
        for _ in range(int(rng.integers(2, 6))):
            clause = self._clause(rng)
            if rng.random() < 0.25:
                clause += f" {_CONJUNCTIONS[rng.integers(len(_CONJUNCTIONS))]} {self._clause(rng)}"
            sentences.append(clause[0].upper() + clause[1:] + ".")
        return " ".join(sentences)

    def documents(self, start: int, stop: int) -> Iterator[str]:
        """Documents ``start`` … ``stop - 1``."""
        for i in range(start, stop):
            yield self.document(i)


def load_texts(cfg: BackgroundConfig, seed: int = 0) -> Iterator[str]:
    """Documents of the configured background corpus, in order (held-out ones included)."""
    if cfg.source == "synthetic":
        corpus = SyntheticCorpus(cfg.synthetic, seed)
        n = cfg.synthetic.num_documents
        if cfg.max_documents is not None:
            n = min(n, cfg.max_documents)
        yield from corpus.documents(0, n)
        return
    dataset = load_text_dataset(cfg)
    for i, row in enumerate(dataset):
        if cfg.max_documents is not None and i >= cfg.max_documents:
            break
        text = row.get(cfg.text_field)
        if text is None:
            raise ConfigError(
                f"data.background.text_field: column '{cfg.text_field}' not found (have {sorted(row)})"
            )
        if text:
            yield text


_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def check_local_files(cfg: BackgroundConfig) -> tuple[list[Path], str]:
    """The files of ``source=files`` and their ``datasets`` format, after checking that each exists
    and that all share one known extension (nothing is read: a dry run calls this too)."""
    paths = [Path(p) for p in cfg.paths]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"data.background.paths: file '{p}' not found")
    formats = {_FORMATS.get(p.suffix.lower()) for p in paths}
    if None in formats or len(formats) != 1:
        raise ConfigError(
            f"data.background.paths: files must share one of the extensions {', '.join(_FORMATS)}"
        )
    (fmt,) = formats
    assert fmt is not None
    return paths, fmt


def load_text_dataset(cfg: BackgroundConfig):  # -> datasets.Dataset | IterableDataset
    """Open a local-file or hub dataset with ``datasets`` (hub loading needs network access)."""
    import datasets

    if cfg.source == "files":
        paths, fmt = check_local_files(cfg)
        kwargs = {"sample_by": "paragraph"} if fmt == "text" else {}
        return datasets.load_dataset(
            fmt, data_files=[str(p) for p in paths], split=cfg.split, streaming=cfg.streaming, **kwargs
        )
    if cfg.streaming and cfg.max_documents is None:
        raise ConfigError(
            "data.background.max_documents: required with streaming=true (the stream has no end)"
        )
    return datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.split, streaming=cfg.streaming)
