"""Which tokens a run's task tables are drawn from (``data.task_tokens``).

Tasks such as ``t_cmp``/``t_add`` draw a table of random tokens (Huang et al.: "S is a set of 100
randomly chosen vocabulary tokens", example instance "address analyze pony"). Drawn from the whole
vocabulary, a table holds ids the background never uses and lone bytes with no text of their own: a
token seen only inside task instances is a different problem, since only the task shapes its
embedding. With ``source: background`` (the default) a token is eligible when

1. it occurs in the run's training background token shards at least ``min_count`` times (counted
   over their first :data:`COUNTED_TOKENS` tokens);
2. its text is visible and round-trips: ``encode(decode([id])) == [id]`` (no lone byte, no broken
   UTF-8, no bare whitespace, no merge that the tokenizer would never produce from its own text);
3. with ``word_initial``, its text is a space followed by letters only (a whole word, as
   in the paper) — for tokenizers that have any such token. Byte and char tokenizers have none, so
   there the rule is skipped and rules 1–2 decide.

Measured on the default corpus (built-in synthetic background, 40,000 documents, 512-token BPE,
2.6M training tokens): 267 of the 510 ordinary ids never occur, and 21 of a whole-vocabulary
``t_add`` table are lone bytes. With ``min_count: 100`` 232 tokens are eligible (231 letter pieces
such as " t", "ind" or " with", and "."; a bare space is left out), 94 of them word-initial — fewer
than the 102 a default ``t_cmp`` needs, so ``word_initial`` is off by default and is meant for
larger vocabularies (a 768-token BPE of the same corpus has 191 word-initial tokens, 1,024 has
303). With ``min_count`` 100 every table token is read at least 100 times as ordinary text per
pass over the corpus, so the background trains its embedding too, not only the task.

``source: vocabulary`` keeps the old behaviour: any non-special id. Either way the eligible ids are
sorted and the table is drawn from them with the task's seed, so a table is a pure function of
(task seed, tokenizer, corpus) and identical in every process; ``t_cmp`` and ``t_add`` with one seed
share one table.

A dry run without a cached corpus has no counts (and for ``bpe`` only a stand-in tokenizer): it
draws stand-in tables from the whole vocabulary, so it refuses only a table larger than the
vocabulary; the exact eligible-token check happens once the corpus exists — in the run, or in a dry
run once the corpus is cached (the same line as the run then).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smalllm.data.config import DataConfig, TaskTokensConfig
from smalllm.data.shards import TokenShards
from smalllm.tasks import TaskVocab

COUNTED_TOKENS = 1 << 30
"""Background tokens counted for ``min_count``: the first 2^30 training tokens (the whole corpus at
CPU scale; at Huang et al.'s 210B tokens, a fixed prefix that one pass of a few seconds can read)."""


def background_counts(corpus: TokenShards) -> np.ndarray:
    """Occurrences of every token id in the first :data:`COUNTED_TOKENS` tokens of the training
    background shards (the held-out part is never counted).

    Counted once per opened corpus (``np.bincount`` per shard) and kept on it.
    """
    cached = getattr(corpus, "_token_counts", None)
    if cached is None:
        size = len(corpus.tokenizer)
        cached = np.zeros(size, dtype=np.int64)
        left = COUNTED_TOKENS
        for part in corpus.train.parts:
            chunk = np.asarray(part[:left])
            cached += np.bincount(chunk, minlength=size)[:size]
            left -= len(chunk)
            if left <= 0:
                break
        corpus._token_counts = cached  # type: ignore[attr-defined]
    return cached


def is_word(text: str) -> bool:
    """True for a space followed by one or more letters (``" address"``)."""
    return len(text) > 1 and text[0] == " " and text[1:].isalpha()


def round_trips(tokenizer: Any, token_id: int) -> bool:
    """True if the text of ``token_id`` is visible (not only whitespace) and encodes back to exactly
    that one id."""
    text = tokenizer.decode([token_id])
    return (
        bool(text.strip())
        and "\ufffd" not in text
        and list(tokenizer.encode(text, add_special_tokens=False)) == [token_id]
    )


def eligible_table_tokens(cfg: TaskTokensConfig, tokenizer: Any, counts: np.ndarray | None) -> np.ndarray:
    """Sorted ids that task tables may use under ``cfg`` (see the module docstring).

    ``counts`` are :func:`background_counts`; with ``source=vocabulary`` they are not needed.
    """
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    if cfg.source == "vocabulary":
        return np.array(ordinary, dtype=np.int64)
    if counts is None:
        raise ValueError("data.task_tokens.source=background needs the background token counts")
    seen = [i for i in ordinary if i < len(counts) and counts[i] >= cfg.min_count]
    texts = {i: tokenizer.decode([i]) for i in seen}
    if cfg.word_initial and any(is_word(t) for t in texts.values()):
        seen = [i for i in seen if is_word(texts[i])]
    return np.array([i for i in seen if round_trips(tokenizer, i)], dtype=np.int64)


WORD_INITIAL_RULE = (
    "word-initial tokens of the model's tokenizer (a space then letters) that round-trip alone"
)


def word_initial_tokens(tokenizer: Any) -> np.ndarray:
    """Sorted ids whose text is a space followed by letters and that re-encode to themselves alone.

    The table policy for a model smalllm did not train (``smalllm eval --model``): there is no
    background corpus to count, and whole words with a leading space (the paper's "address analyze
    pony") are what keeps a table instance's text re-tokenizing to the same ids in context.
    """
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(tokenizer)):
        if i in special:
            continue
        if is_word(tokenizer.decode([i])) and round_trips(tokenizer, i):
            out.append(i)
    return np.array(out, dtype=np.int64)


def word_initial_vocab(tokenizer: Any) -> TaskVocab:
    """The :class:`TaskVocab` of an outside model: tables drawn from :func:`word_initial_tokens`."""
    return TaskVocab(tokenizer, word_initial_tokens(tokenizer), WORD_INITIAL_RULE)


def describe_rule(cfg: TaskTokensConfig) -> str:
    """The policy in words, naming its fields (shown with a table and in the too-few-tokens error)."""
    if cfg.source == "vocabulary":
        return "data.task_tokens.source=vocabulary"
    words = ", word-initial" if cfg.word_initial else ""
    return f"data.task_tokens: seen >= {cfg.min_count} times in the background{words}, round-trip"


def task_vocab(cfg: DataConfig, tokenizer: Any, corpus: TokenShards | None) -> TaskVocab:
    """The :class:`TaskVocab` a run's tasks are built against.

    Without ``corpus`` (a dry run before the corpus is built) a ``background`` policy cannot be
    applied: the tables are stand-ins drawn from the whole vocabulary (see the module docstring).
    """
    policy = cfg.task_tokens
    if policy.source == "background" and corpus is None:
        return TaskVocab(
            tokenizer, table_rule="at most: data.task_tokens counts them once the corpus is built"
        )
    counts = background_counts(corpus) if corpus is not None else None
    return TaskVocab(tokenizer, eligible_table_tokens(policy, tokenizer, counts), describe_rule(policy))


def table_lines(vocab: TaskVocab, ids: list[int], counts: np.ndarray | None, per_line: int = 4) -> list[str]:
    """A task's table as text, ``per_line`` tokens a line: ``id 'text' ×count`` (``×?`` without a
    corpus), for ``smalllm tasks show`` and ``smalllm data inspect``."""
    cells = [
        f"{int(i):>6} {vocab.decode([int(i)])!r:<14} ×{int(counts[i]) if counts is not None else '?'}"
        for i in ids
    ]
    return ["  " + "   ".join(cells[k : k + per_line]) for k in range(0, len(cells), per_line)]
