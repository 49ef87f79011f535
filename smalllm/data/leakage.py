"""Leakage audit: proof that no held-out instance reaches training, beyond the pools' construction.

The pools keep a task's held-out instances out of its own training instances by construction
(:mod:`smalllm.data.pools`), but the stream a run actually trains on can still carry one: background
text that happens to contain a task's token sequence, or another task on the same table tokens (two
``t_cmp`` entries with one seed draw one table, so one's held-out pairs are the other's training
pairs). Two checks, at two costs:

* :func:`check_leaks` — cheap, run before every run and dry run (:mod:`smalllm.train.preflight`):
  per sub-skill, the pool's train and held-out keys are disjoint; across tasks, no held-out instance
  (its prompt + answer tokens) occurs verbatim inside another task's training instance. A leaking
  config is refused with one line naming both tasks. Fresh pools are checked on their first
  :data:`FRESH_SAMPLE` training instances (a shared table shows up in any sample).
* :func:`audit_stream` — the full scan, opt-in (``smalllm audit``): every training row the run reads,
  through the seekable stream chunk by chunk (bounded memory), searched for every held-out instance
  as an exact token subsequence within a row (the model never sees across rows), and the held-out
  background rows' n-grams searched for in the training rows.

Task instances are searched as exact token matches (:mod:`smalllm.data.token_search`); background
n-grams by their hashes alone (a false match needs a 64-bit collision).

A run's held-out sets are decontaminated before any of this: an instance that occurs verbatim in the
training background is dropped from them (``data.decontaminate``,
:meth:`~smalllm.data.stream.TaskStream.held_out_dropped`), so the scan of a default run finds none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from smalllm.data.stream import Family, TaskStream
from smalllm.data.token_search import CHUNK_TOKENS, PatternIndex, lookup, window_hashes
from smalllm.errors import ConfigError

FRESH_SAMPLE = 2000
"""Training instances of a fresh pool that the cheap check reads (a fresh pool has no end)."""
EXAMPLES = 5
"""Locations kept per task and for the background."""


def _train_sample(family: Family) -> list:
    """The training instances of each pool of ``family`` the cheap check reads, per pool."""
    return [
        pool.train if pool.train else [pool.train_instance(k) for k in range(FRESH_SAMPLE)]
        for pool in family.pools
    ]


def check_leaks(families: list[Family]) -> None:
    """Refuse a task mixture in which a held-out instance is also trained on (module docstring).

    Memorisation tasks are scored on their training instances by design: they are left out as the
    held-out side, but their training instances are still searched for other tasks' held-out ones.
    """
    samples = [_train_sample(f) for f in families]
    patterns: dict[tuple[int, ...], set[int]] = {}
    for ti, f in enumerate(families):
        if f.task.memorization:
            continue
        for pool, train in zip(f.pools, samples[ti]):
            held = pool.eval_instances()
            shared = {i.key for i in held} & {i.key for i in train}
            if shared:
                raise ConfigError(
                    f"data.tasks.{ti}: {len(shared)} held-out instance(s) of '{f.task.name}' are also "
                    "training instances of its pool; the pool split leaks"
                )
            for inst in held:
                patterns.setdefault(inst.prompt + inst.answer, set()).add(ti)
    lengths = sorted({len(p) for p in patterns})
    found: dict[tuple[int, int], set[tuple[int, ...]]] = {}
    for tj, train_pools in enumerate(samples):
        for train in train_pools:
            for inst in train:
                seq = inst.prompt + inst.answer
                for n in lengths:
                    for o in range(len(seq) - n + 1):
                        for ti in patterns.get(seq[o : o + n], ()):
                            if ti != tj:
                                found.setdefault((ti, tj), set()).add(seq[o : o + n])
    if found:
        (ti, tj), leaked = min(found.items(), key=lambda item: item[0])
        a, b = families[ti].task.name, families[tj].task.name
        raise ConfigError(
            f"data.tasks.{ti} ('{a}') and data.tasks.{tj} ('{b}'): {len(leaked)} held-out instance(s) of "
            f"'{a}' occur verbatim inside training instances of '{b}' (the tasks share tokens); "
            "give one of them another seed or other parameters, or drop one"
        )


# ---------------------------------------------------------------------------------------------- full scan


@dataclass
class TaskLeaks:
    """What the scan found of one task's held-out instances."""

    task: str
    instances: int
    """Held-out instances searched for."""
    occurrences: int = 0
    """Places in the training rows where one of them occurs."""
    leaked: int = 0
    """Distinct held-out instances found at least once."""
    where: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MATCH_KINDS, 0))
    """Occurrences by where they start (:func:`match_kind`): inside an injected task instance, opening
    background text (a row's start or right after an EOD, where an instance is presented), or inside
    running background text (where short instances of frequent tokens also occur by chance)."""
    examples: list[dict] = field(default_factory=list)
    """Up to :data:`EXAMPLES` hits: row, offset, the instance's index in the eval set, and the label
    of the token there (``background`` or the task whose injected instance holds it)."""
    decontaminated: int = 0
    """Evaluated instances already dropped from the set because the training background holds them
    (``data.decontaminate``); not among :attr:`instances`."""
    skipped: str = ""
    """Why the task was not searched (a memorisation task is scored on its training instances)."""


@dataclass
class BackgroundOverlap:
    """n-gram overlap of the held-out background rows with the training rows."""

    ngram: int
    holdout_ngrams: int
    """Distinct n-grams of the held-out rows."""
    found: int = 0
    """Of those, how many occur somewhere in the training rows."""
    occurrences: int = 0
    """Training positions where a held-out n-gram starts."""
    examples: list[dict] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.found / self.holdout_ngrams if self.holdout_ngrams else 0.0


@dataclass
class AuditReport:
    """The result of :func:`audit_stream` (``smalllm audit`` prints it and writes it as JSON)."""

    rows: int
    tokens: int
    seconds: float
    tasks: list[TaskLeaks]
    background: BackgroundOverlap | None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def task_occurrences(self) -> int:
        return sum(t.occurrences for t in self.tasks)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tokens_per_second"] = self.tokens_per_second
        if self.background is not None:
            out["background"]["fraction"] = self.background.fraction
        return out

    def lines(self) -> list[str]:
        """The report as text, one line per task, then the background and the speed."""
        out = [f"scanned {self.rows:,} rows, {self.tokens:,} tokens"]
        for t in self.tasks:
            if t.skipped:
                out.append(f"  {t.task}: skipped ({t.skipped})")
                continue
            where = ", ".join(
                f"row {e['row']} offset {e['offset']} (instance {e['instance']}, in {e['in']})"
                for e in t.examples
            )
            kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in t.where.items() if n)
            out.append(
                f"  {t.task}: {t.occurrences} occurrence(s) of {t.leaked} of {t.instances} held-out instances"
                + (f" ({kinds})" if kinds else "")
                + (
                    f"; {t.decontaminated} more were dropped from the set before the scan (in the training background: data.decontaminate)"
                    if t.decontaminated
                    else ""
                )
                + (f"; e.g. {where}" if where else "")
            )
        b = self.background
        if b is not None:
            where = ", ".join(f"row {e['row']} offset {e['offset']}" for e in b.examples)
            out.append(
                f"  background: {b.found:,} of {b.holdout_ngrams:,} held-out {b.ngram}-grams "
                f"({b.fraction:.2%}) occur in training, at {b.occurrences:,} positions"
                + (f"; e.g. {where}" if where else "")
            )
        out.append(f"scan speed: {self.tokens_per_second:,.0f} tokens/s ({self.seconds:.2f} s)")
        return out


MATCH_KINDS = ("in_task_instance", "at_document_start", "in_background_text")


def match_kind(batch, row: int, offset: int, eod: int) -> str:
    """Where an occurrence starts: inside an injected task instance; opening background text (a row's
    start, or right after an EOD: the context an instance is scored in); or inside running text."""
    if batch.task_ids[row, offset] > 0:
        return MATCH_KINDS[0]
    if offset == 0 or batch.input_ids[row, offset - 1] == eod:
        return MATCH_KINDS[1]
    return MATCH_KINDS[2]


def audit_stream(
    stream: TaskStream,
    num_rows: int,
    holdout: np.ndarray | None = None,
    ngram: int = 13,
    chunk_tokens: int = CHUNK_TOKENS,
    log: Callable[[str], None] | None = None,
) -> AuditReport:
    """Scan training rows ``0 … num_rows − 1`` of ``stream`` for its held-out instances, and for the
    ``ngram``-grams of ``holdout`` rows (the held-out background the evaluator scores; None: skip).

    Reads ``chunk_tokens`` tokens of rows at a time, so memory does not grow with ``num_rows``.
    """
    sets = stream.eval_sets()
    tasks, tokens = [], []
    for s, family in zip(sets, stream.families):
        memo = family.task.memorization
        tasks.append(
            TaskLeaks(
                s.task,
                len(s.instances),
                decontaminated=stream.held_out_dropped[s.task],
                skipped="memorisation task, scored on its training set" if memo else "",
            )
        )
        tokens.append([] if memo else [i.prompt + i.answer for i in s.instances])
    seen = [set() for _ in tasks]
    owners = [(ti, ii) for ti, seqs in enumerate(tokens) for ii in range(len(seqs))]
    index = PatternIndex([tokens[ti][ii] for ti, ii in owners])
    background = None
    if holdout is not None and holdout.size:
        grams = np.unique(window_hashes(holdout, ngram))
        background = BackgroundOverlap(ngram, len(grams))
        found = np.zeros(len(grams), dtype=bool)
    per_chunk = max(1, chunk_tokens // stream.seq_len)
    start_time = time.perf_counter()
    for start in range(0, num_rows, per_chunk):
        stop = min(num_rows, start + per_chunk)
        batch = stream.rows(start, stop)
        ids = batch.input_ids
        for r, o, p in index.matches(ids):
            ti, ii = owners[p]
            t = tasks[ti]
            t.occurrences += 1
            kind = match_kind(batch, r, o, stream.eod)
            t.where[kind] += 1
            seen[ti].add(ii)
            if len(t.examples) < EXAMPLES:
                label = stream.labels[int(batch.task_ids[r, o])]
                t.examples.append(
                    {"row": start + r, "offset": o, "instance": ii, "in": str(label), "where": kind}
                )
        if background is not None:
            pos = lookup(grams, window_hashes(ids, ngram))
            hit = pos >= 0
            found[pos[hit]] = True
            background.occurrences += int(hit.sum())
            if len(background.examples) < EXAMPLES:
                for r, o in np.argwhere(hit)[: EXAMPLES - len(background.examples)].tolist():
                    background.examples.append({"row": start + r, "offset": o})
        if log is not None:
            log(f"  rows {stop:,} of {num_rows:,}")
    seconds = time.perf_counter() - start_time
    for t, s in zip(tasks, seen):
        t.leaked = len(s)
    if background is not None:
        background.found = int(found.sum())
    return AuditReport(num_rows, num_rows * stream.seq_len, seconds, tasks, background)
