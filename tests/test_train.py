"""Training-step pieces: the loss and the per-task training-loss bookkeeping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from conftest import tiny_config

from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.train.loss import next_token_targets, token_losses
from smalllm.train.trainer import _per_label


def test_per_task_loss_matches_a_token_by_token_computation(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    stream = TaskStream(cfg.data, ensure_corpus(cfg.data, log=lambda _m: None), 8)
    batch = stream.batch(3)
    ids = torch.from_numpy(batch.input_ids)
    logits = torch.randn(
        8, cfg.data.seq_len, len(stream.tokenizer), generator=torch.Generator().manual_seed(0)
    )
    mask = batch.loss_mask.copy()
    mask[0, 10:] = False  # some ignored targets, as padding would give
    batch.loss_mask[:] = mask
    targets = next_token_targets(ids, mask)
    token_loss = token_losses(logits, targets)
    loss = token_loss.sum() / int(mask[:, 1:].sum())
    sums, counts = torch.zeros(len(stream.labels)), np.zeros(len(stream.labels), dtype=np.int64)
    _per_label(token_loss, token_loss.sum(), int(mask[:, 1:].sum()), batch, slice(0, 8), sums, counts)

    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(
        8, -1
    )
    valid = torch.from_numpy(mask[:, 1:])
    assert torch.allclose(loss, per_token[valid].mean())
    labels = torch.from_numpy(batch.task_ids[:, 1:].astype(np.int64))
    answer = torch.from_numpy(batch.answer_mask[:, 1:])
    for label in range(len(stream.labels)):
        # background: every valid background token; tasks: their valid answer tokens only
        sel = valid & (labels == label) & (answer if label else torch.ones_like(answer))
        assert counts[label] == sel.sum()
        assert torch.allclose(sums[label], per_token[sel].sum(), atol=1e-3)
    assert counts[1:].sum() > 0  # the batch does carry task answers
