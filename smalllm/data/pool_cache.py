"""A disk cache for large finite pools, so a run's start-up does not redraw them.

Drawing ``n`` *distinct* instances by rejection is a coupon collector's problem: when ``n`` is most
of a sub-skill's instance space (the default config's 2-digit addition: all 10,000 sums of each
digit position), it takes ``n · ln n`` draws, about two seconds of pure Python at every start. The
draw is a pure function of the task (its code, parameters and tables), the sub-skill, ``n`` and the
seed, so its result is kept in ``<cache>/pools/`` and read back by later runs.

A file is keyed by the task's name, parameters, sub-skill, size, seed, vocabulary and the source
file of its generator, and trusted only after a check: the first :data:`CHECK_DRAWS` draws are made
again and must reproduce the cached pool's first distinct instances in order. Any change to the
generator or its tables (a code edit, another tokenizer, other eligible table tokens) changes the key
or those draws, so a stale file is redrawn rather than used. Files are written atomically; a file that
cannot be read, or a cache directory that cannot be written, only costs the draw.

The same directory keeps which held-out instances occur in a corpus's training background
(:func:`found_in_background`, for decontamination), so a run does not search the corpus again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from smalllm.data.shards import TokenShards
from smalllm.data.token_search import PatternIndex
from smalllm.run_record import atomic_write, atomic_write_text
from smalllm.tasks import Instance, Task

POOLS_DIR = "pools"
"""Subdirectory of the data cache (``data.cache_dir``) that holds the pool files."""
MIN_CACHED = 2048
"""Smallest pool worth a file: smaller ones draw in milliseconds."""
CHECK_DRAWS = 64
"""Draws repeated to check a cached pool against the generator as it is now."""
_FORMAT = 1


def cached_distinct(
    task: Task,
    skill: int,
    n: int,
    seed: list[int],
    draw: Callable[..., list[Instance]],
    cache_dir: Path | None,
) -> tuple[list[Instance], Callable[[], None] | None]:
    """``draw(np.random.default_rng(seed), n)``, read from ``cache_dir`` when a checked copy is there;
    with it, the function that keeps a freshly drawn pool in the cache (None: nothing to keep).

    Keeping is left to the caller, so that a config refused by its checks (or a dry run) writes
    nothing. ``draw(rng, n, max_draws=None)`` must return up to ``n`` distinct instances in
    first-drawn order, stopping after ``max_draws`` draws when given, so that its first
    :data:`CHECK_DRAWS` draws alone give a prefix of the full result.
    """
    if cache_dir is None or n < MIN_CACHED:
        return draw(np.random.default_rng(seed), n), None
    path = cache_dir / f"{_key(task, skill, n, seed)}.npz"
    cached = _read(path, skill)
    if cached is not None:
        head = draw(np.random.default_rng(seed), min(n, CHECK_DRAWS), max_draws=CHECK_DRAWS)
        if cached[: len(head)] == head:
            return cached, None
    instances = draw(np.random.default_rng(seed), n)

    def keep() -> None:
        with contextlib.suppress(OSError):  # a read-only or full cache only costs the next start the draw
            cache_dir.mkdir(parents=True, exist_ok=True)
            _write(path, instances)

    return instances, keep


def _key(task: Task, skill: int, n: int, seed: list[int]) -> str:
    params = asdict(task.params) if is_dataclass(task.params) else task.params
    ident = {
        "format": _FORMAT,
        "task": task.name,
        "class": f"{type(task).__module__}.{type(task).__qualname__}",
        "params": params,
        "skill": skill,
        "n": n,
        "seed": list(seed),
        # The generator's own source (its module file): an edit that changes only draws after the
        # first CHECK_DRAWS gets a new key instead of reusing the old pool.
        "source": _source_digest(type(task)),
        "vocab_size": task.vocab.vocab_size,
        "table_ids": hashlib.sha256(np.asarray(task.vocab.table_ids, dtype=np.int64).tobytes()).hexdigest(),
    }
    text = json.dumps(ident, sort_keys=True, default=str)
    return f"{task.name}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _source_digest(cls: type) -> str:
    try:
        return hashlib.sha256(Path(inspect.getfile(cls)).read_bytes()).hexdigest()
    except (OSError, TypeError):  # defined in an interactive session: no file to read
        return ""


def _write(path: Path, instances: list[Instance]) -> None:
    prompts = [i.prompt for i in instances]
    answers = [i.answer for i in instances]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                prompt=np.fromiter((t for p in prompts for t in p), dtype=np.int32),
                prompt_len=np.array([len(p) for p in prompts], dtype=np.int32),
                answer=np.fromiter((t for a in answers for t in a), dtype=np.int32),
                answer_len=np.array([len(a) for a in answers], dtype=np.int32),
            )

    atomic_write(path, write)


def _read(path: Path, skill: int) -> list[Instance] | None:
    """The pool in ``path``; None when it is missing or not a well-formed pool file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            prompt, prompt_len = f["prompt"], f["prompt_len"]
            answer, answer_len = f["answer"], f["answer_len"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if (
        len(prompt_len) != len(answer_len)
        or prompt_len.sum() != len(prompt)
        or answer_len.sum() != len(answer)
        or (prompt_len < 0).any()
        or (answer_len < 0).any()
    ):
        return None
    p_ends, a_ends = np.cumsum(prompt_len).tolist(), np.cumsum(answer_len).tolist()
    prompt, answer = prompt.tolist(), answer.tolist()
    out, p0, a0 = [], 0, 0
    for p1, a1 in zip(p_ends, a_ends):
        out.append(Instance(tuple(prompt[p0:p1]), tuple(answer[a0:a1]), skill))
        p0, a0 = p1, a1
    return out


def found_in_background(
    sequences: Sequence[Sequence[int]], corpus: TokenShards, limit: int, cache_dir: Path | None
) -> set[int]:
    """Indices of the ``sequences`` that occur in the first ``limit`` training background tokens of
    ``corpus``. The answer is kept in ``cache_dir`` (None: not kept) under a key of the corpus (its
    cache entry, named by content), ``limit`` and the sequences, so a later run on the same corpus
    and held-out sets reads it instead of searching again (a search of 2^30 tokens takes minutes).
    A file that cannot be read or written only costs the search."""
    digest = hashlib.sha256(json.dumps({"format": 1, "corpus": corpus.path.name, "limit": limit}).encode())
    for seq in sequences:
        digest.update(len(seq).to_bytes(4, "little") + np.asarray(seq, dtype=np.int64).tobytes())
    path = cache_dir / f"background-matches-{digest.hexdigest()[:24]}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            found = {int(i) for i in json.loads(path.read_text())["found"]}
            if all(0 <= i < len(sequences) for i in found):
                return found
    found = PatternIndex(sequences).found_in(corpus.train.parts, limit)
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"found": sorted(found)}))
    return found
