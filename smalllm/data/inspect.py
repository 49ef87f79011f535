"""``smalllm data inspect``: what the model will actually read."""

from __future__ import annotations

import math

import numpy as np

from smalllm.data.config import DataConfig
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.data.task_tokens import background_counts, table_lines


def inspect_stream(
    data: DataConfig, global_batch_size: int, max_tokens: int, rows: int = 4, steps: int | None = None
) -> str:
    """Sample rows with task spans marked ``[label| … ]`` and answers ``⟨…⟩``, then the frequency table.

    Takes the data section and the two training numbers it needs (not the whole run config, which
    sits above this layer).
    """
    corpus = ensure_corpus(data)
    stream = TaskStream(data, corpus, global_batch_size)
    tok = stream.tokenizer
    # Show rows that carry task instances first: with rare tasks, the first rows are pure background.
    batch = stream.rows(0, min(4096, 64 * rows))
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
    if steps is None:
        steps = math.ceil(max_tokens / (global_batch_size * data.seq_len))
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
    return "\n".join(out)


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
