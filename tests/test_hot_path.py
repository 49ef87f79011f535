"""The training hot path does not wait for the device: outside log, eval and checkpoint steps a
step reads no tensor back to the host (issue 17). On a GPU every such read is a host-device sync;
here they are counted on the CPU by wrapping the tensor methods that make them. The model's forward
pass is counted too: the step runs smalllm's lean forward (smalllm.model.forward), not transformers'
own, which reads the position ids back on every call."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import quiet, tiny_config

from smalllm.train import trainer as trainer_mod
from smalllm.train.callbacks.checkpointer import Checkpointer
from smalllm.train.callbacks.metrics_logger import MetricsLogger
from smalllm.train.trainer import Trainer

SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
"""Tensor methods that read a value back to the host (each one waits for the device)."""


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts of calls to :data:`SYNCING` on any tensor, by method name, while the test runs."""
    calls: Counter = Counter()

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return calls


def per_step_reads(trainer: Trainer, host_reads: Counter, steps: int) -> dict[int, Counter]:
    reads = {}
    for _ in range(steps):
        host_reads.clear()
        record = trainer.run_step()
        reads[record.step] = Counter(host_reads)
    return reads


@pytest.mark.parametrize("nan_policy", ["stop", "skip"])
def test_only_log_steps_read_tensors_back(tmp_path: Path, host_reads: Counter, nan_policy: str) -> None:
    cfg = tiny_config(
        tmp_path / "run",
        "train.log_every=4",
        "eval.enabled=false",
        f"train.nan_policy={nan_policy}",
        "train.max_tokens=4096",  # 16 steps; checkpoint only at the end
    )
    trainer = Trainer(cfg, callbacks=[MetricsLogger(), Checkpointer()], log=quiet)
    trainer.open_run()
    # The model's own forward reads the device (transformers' padding and packed-sequence checks);
    # the lean one the step runs on one process does not.
    assert trainer.forward_kind == "lean"
    reads = per_step_reads(trainer, host_reads, 10)
    quiet_steps = [s for s in reads if s % 4]
    assert quiet_steps == [1, 2, 3, 5, 6, 7, 9, 10]
    assert {s: dict(reads[s]) for s in quiet_steps if reads[s]} == {}
    # The counter works: log steps read the window (and the non-finite flags) back.
    assert all(sum(reads[s].values()) > 0 for s in (4, 8))


def test_a_non_finite_step_is_skipped_without_a_read_and_counted_at_the_log_step(
    tmp_path: Path, host_reads: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer_mod.token_losses
    calls = {"n": 0}

    def lm_loss(logits, targets):
        loss = real(logits, targets)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 2 else loss  # the second step (index 1)

    monkeypatch.setattr(trainer_mod, "token_losses", lm_loss)
    cfg = tiny_config(tmp_path / "run", "train.log_every=4", "eval.enabled=false", "train.nan_policy=skip")
    logged: list[str] = []
    trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=logged.append)
    trainer.open_run()
    weight = next(p for p in trainer.unwrapped_model.parameters() if p.ndim == 2)
    trainer.run_step()
    before = weight.detach().clone()
    reads = per_step_reads(trainer, host_reads, 3)  # steps 2, 3, 4
    assert sum(reads[2].values()) == sum(reads[3].values()) == 0 and sum(reads[4].values()) > 0
    assert trainer.skipped_steps == 1 and [line for line in logged if "non-finite" in line] == [
        "step 1: non-finite loss/gradient (nan); batch skipped"
    ]
    assert not torch.equal(weight, before)  # steps 3 and 4 trained on


def test_stop_policy_raises_at_the_log_step_after_the_non_finite_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer_mod.token_losses
    calls = {"n": 0}

    def lm_loss(logits, targets):
        calls["n"] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(trainer_mod, "token_losses", lm_loss)
    cfg = tiny_config(tmp_path / "run", "train.log_every=4", "eval.enabled=false")
    trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=quiet)
    trainer.open_run()
    weight = next(p for p in trainer.unwrapped_model.parameters() if p.ndim == 2)
    trainer.run_step()
    before = weight.detach().clone()
    record = trainer.run_step()  # non-finite: skipped on the device, not yet read
    assert bool(record.skipped) and torch.equal(weight, before)
    trainer.run_step()
    with pytest.raises(trainer_mod.TrainingDiverged, match="loss became nan at step 1"):
        trainer.run_step()
    assert trainer.step == 4 and trainer.skipped_steps == 1
