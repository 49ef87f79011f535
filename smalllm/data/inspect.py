"""``smalllm data inspect``: what the model will actually read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from smalllm.data.config import DataConfig
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.data.task_tokens import background_counts, table_lines
from smalllm.run_record import RunDir


def inspect_stream(
    data: DataConfig,
    global_batch_size: int,
    max_tokens: int,
    rows: int = 4,
    steps: int | None = None,
    run_dir: str | Path | None = None,
) -> str:
    """Sample rows with task spans marked ``[label| … ]`` and answers ``⟨…⟩``, then the frequency table,
    and with a mixture policy the weights of its rounds.

    Takes the data section and the two training numbers it needs (not the whole run config, which
    sits above this layer). ``run_dir``: a run of this config whose logged rounds (``mixture.jsonl``)
    are shown and placed, which is the only source of an online policy's rounds after the first.
    """
    corpus = ensure_corpus(data)
    stream = TaskStream(data, corpus, global_batch_size)
    tok = stream.tokenizer
    if steps is None:
        steps = math.ceil(max_tokens / (global_batch_size * data.seq_len))
    mixture_lines, steps = _mixture(stream, global_batch_size, steps, run_dir)
    # Show rows that carry task instances first: with rare tasks, the first rows are pure background.
    sample_rows = min(4096, 64 * rows)
    if stream.mixture is not None and stream.mixture.needs_eval:  # only rows of known rounds
        sample_rows = max(1, min(sample_rows, steps * global_batch_size))
    batch = stream.rows(0, sample_rows)
    has_task = np.flatnonzero(batch.task_ids.any(axis=1))
    order = (
        list(has_task[:rows])
        + [i for i in range(len(batch.input_ids)) if i not in set(has_task)][: max(0, rows - len(has_task))]
    )
    out = [f"stream of {data.seq_len}-token rows; labels: {', '.join(map(str, stream.labels))}", ""]
    for r in order[:rows]:
        out.append(
            f"row {r}: "
            + _render(tok, batch.input_ids[r], batch.task_ids[r], batch.answer_mask[r], stream.labels)
        )
        out.append("")
    num_rows = steps * global_batch_size
    out.append(f"realised frequencies over {steps:,} steps ({num_rows * data.seq_len:,} tokens):")
    out.append(f"{'label':<28} {'placement':<9} {'requested':>12} {'realised':>10} {'per token':>11}")
    for row in stream.frequency_table(num_rows):
        out.append(
            f"{row['label']:<28} {row['placement']:<9} {row['requested']:>12.2f} {row['realised']:>10,} {row['per_token']:>11.3g}"
        )
    counts = background_counts(corpus)
    for family in stream.families:
        table = family.task.table_tokens()
        if table:
            out.append("")
            out.append(
                f"{family.task.name} token table ({len(table)} tokens, {stream.vocab.table_rule}): "
                "id 'text' ×background count"
            )
            out += table_lines(stream.vocab, table, counts)
    return "\n".join(out + mixture_lines)


MIXTURE_ROUNDS_SHOWN = 40
"""Rounds listed in full; beyond that only rounds whose weights change (and the last) are."""


def _mixture(stream: TaskStream, batch: int, steps: int, run_dir: str | Path | None) -> tuple[list[str], int]:
    """Lines listing the mixture's rounds, and the steps the frequency table may cover: an online
    policy's rounds after the first exist only in a run's log."""
    mixture = stream.mixture
    if mixture is None:
        return [], steps
    cfg = stream.cfg.mixture
    note = ""
    if run_dir is not None:
        mixture.load_rounds(RunDir(run_dir).read_mixture())
    known = mixture.known_rounds()
    if known is not None:
        if steps > known * cfg.round_steps:
            note = (
                f"(online: rounds after {known - 1} depend on evaluations; "
                + (
                    "the run logged no more"
                    if run_dir is not None
                    else "pass --run RUN_DIR for a run's rounds"
                )
                + f", so the table covers {known * cfg.round_steps:,} steps)"
            )
        steps = min(steps, known * cfg.round_steps)
    rounds = max(1, -(-steps // cfg.round_steps))
    labels = mixture.labels
    out = ["", f"mixture: policy {cfg.policy} on {cfg.task}, rounds of {cfg.round_steps:,} steps"]
    if note:
        out.append(note)
    out.append(f"{'round':>6} {'step':>10}  " + " ".join(f"{x:>14}" for x in labels))
    previous = None
    for r in range(rounds):
        w = mixture.weights_of(r)
        changed = previous is None or not np.array_equal(w, previous)
        if r < MIXTURE_ROUNDS_SHOWN or changed or r == rounds - 1:
            out.append(f"{r:>6} {r * cfg.round_steps:>10,}  " + " ".join(f"{v:>14.4f}" for v in w))
        previous = w
    return out, steps


def _render(tok, ids, task_ids, answer, labels) -> str:
    pieces, i, n = [], 0, len(ids)
    while i < n:
        j = i
        while j < n and task_ids[j] == task_ids[i]:
            j += 1
        if task_ids[i] == 0:
            pieces.append(tok.decode(ids[i:j].tolist()))
        else:
            span = []
            for k in range(i, j):
                text = tok.decode([int(ids[k])])
                span.append(f"⟨{text}⟩" if answer[k] else text)
            pieces.append(f"[{labels[task_ids[i]]}| {' '.join(span)} ]")
        i = j
    return "".join(pieces).replace("\n", "⏎")
