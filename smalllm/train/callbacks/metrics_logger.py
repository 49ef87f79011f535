"""Training metrics: a JSONL record every ``log_every`` steps, tracker scalars and a progress bar."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from smalllm.labels import TRAIN
from smalllm.train.callbacks.base import Callback


class MetricsLogger(Callback):
    """Averages loss over the logging window; per-task training loss comes from the batch task ids."""

    def __init__(self) -> None:
        self.bar = None
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = 0.0
        self.steps = 0
        self.label_loss = None
        self.label_count = None

    def on_fit_start(self, trainer) -> None:
        if trainer.cfg.logging.progress and trainer.is_main:
            self.bar = tqdm(
                total=trainer.total_steps,
                initial=trainer.step,
                desc="train",
                dynamic_ncols=True,
                disable=None,
            )

    def on_step_end(self, trainer, metrics: dict) -> None:
        if not metrics["skipped"]:  # a skipped (non-finite) batch must not poison the window mean
            self.loss_sum += float(metrics["loss"])
            self.steps += 1
        if self.label_loss is None:
            self.label_loss, self.label_count = metrics["label_loss"].clone(), metrics["label_count"].clone()
        else:
            self.label_loss += metrics["label_loss"]
            self.label_count += metrics["label_count"]
        if self.bar is not None:
            self.bar.update(1)
        if trainer.step % trainer.cfg.train.log_every and trainer.step != trainer.total_steps:
            return
        acc = trainer.accelerator
        # Sums over processes: every rank saw different rows.
        label_loss = acc.reduce(self.label_loss, reduction="sum")
        label_count = acc.reduce(self.label_count, reduction="sum")
        mean = self.loss_sum / self.steps if self.steps else float("nan")
        loss = float(acc.reduce(torch.tensor(mean, device=acc.device), reduction="mean"))
        record = {
            "kind": "train",
            "step": trainer.step,
            "tokens": trainer.tokens,
            "time": time.time(),
            "loss": loss,
            "lr": metrics["lr"],
            "grad_norm": metrics["grad_norm"],
            "tokens_per_s": metrics["tokens_per_s"],
            "mfu": metrics["mfu"],
        }
        for i, label in enumerate(trainer.stream.labels):
            if float(label_count[i]) > 0:
                record[label.key("loss", TRAIN)] = float(label_loss[i] / label_count[i])
        trainer.write_record(record)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.3f}",
                tok_s=f"{metrics['tokens_per_s']:,.0f}",
                mfu=f"{metrics['mfu']:.1%}",
                refresh=False,
            )
        self._reset()

    def on_fit_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
