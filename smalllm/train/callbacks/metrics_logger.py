"""Training metrics: a JSONL record every ``log_every`` steps, tracker scalars and a progress bar."""

from __future__ import annotations

import time

import torch
from accelerate.utils import gather_object
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

    def state_dict(self, trainer) -> dict:
        """The open window of every process (each saw other rows), so a run resumed mid-window logs
        the same record as one that never stopped."""
        mine = {
            "loss_sum": self.loss_sum,
            "steps": self.steps,
            "label_loss": None if self.label_loss is None else self.label_loss.detach().cpu().clone(),
            "label_count": None if self.label_count is None else self.label_count.detach().cpu().clone(),
        }
        windows = gather_object([mine]) if trainer.world > 1 else [mine]
        return {"windows": windows}

    def load_state_dict(self, trainer, state: dict) -> None:
        windows = state["windows"]
        if len(windows) == trainer.world:
            mine = windows[trainer.rank]
        elif trainer.rank == 0:
            # Resumed with another number of processes: the window's sums go to one process (the
            # logged record sums over processes), its loss mean becomes the pooled mean.
            mine = _pooled(windows)
        else:
            mine = {"loss_sum": 0.0, "steps": 0, "label_loss": None, "label_count": None}
        device = trainer.accelerator.device
        self.loss_sum, self.steps = float(mine["loss_sum"]), int(mine["steps"])
        self.label_loss = None if mine["label_loss"] is None else mine["label_loss"].to(device)
        self.label_count = None if mine["label_count"] is None else mine["label_count"].to(device)


def _pooled(windows: list[dict]) -> dict:
    sums = [w for w in windows if w["label_loss"] is not None]
    return {
        "loss_sum": sum(float(w["loss_sum"]) for w in windows),
        "steps": sum(int(w["steps"]) for w in windows),
        "label_loss": sum(w["label_loss"] for w in sums) if sums else None,
        "label_count": sum(w["label_count"] for w in sums) if sums else None,
    }
