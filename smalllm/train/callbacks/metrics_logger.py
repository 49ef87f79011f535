"""Training metrics: a JSONL record every ``log_every`` steps, tracker scalars, and progress: a bar
on a terminal, one plain line per record when stdout is a file or pipe (Slurm, nohup, CI)."""

from __future__ import annotations

import datetime
import sys
import time

import torch
from tqdm.auto import tqdm

from smalllm.labels import TRAIN
from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord


class MetricsLogger(Callback):
    """Averages loss over the logging window; per-task training loss comes from the batch task ids.

    Throughput (``tokens_per_s``, ``mfu``) is measured over the same window, from the steps' own
    times: evaluation and checkpoints between steps do not count.

    The window's sums stay on the device between records: a step that is not a log step reads
    nothing back (no wait for the device); the record's step reads them once.
    """

    def __init__(self) -> None:
        self.bar = None
        self.plain_lines = False
        """Print :func:`progress_line` at each record: progress on, main process, stdout not a TTY."""
        self.run: RunContext | None = None
        self._fit_start = self._last_line = 0.0
        self._reset()

    def _reset(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        """Sum of the window's kept (not skipped) step losses, float64 on the device."""
        self.steps: torch.Tensor | None = None
        """How many steps of the window were kept, on the device."""
        self.label_loss = None
        self.label_count = None
        # Not checkpointed: wall-clock time, so a resumed run's window times only its own steps.
        self.window_time = 0.0
        self.window_steps = 0

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        self.run = run
        self._fit_start = self._last_line = time.perf_counter()
        self.plain_lines = run.logging.progress and run.is_main and not sys.stdout.isatty()
        if run.logging.progress and run.is_main and not self.plain_lines:
            self.bar = tqdm(
                total=run.total_steps,
                initial=run.start_step,
                desc="train",
                dynamic_ncols=True,
                disable=None,
            )

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        # A skipped (non-finite) batch must not poison the window mean; selected on the device.
        kept = torch.logical_not(record.skipped)
        loss = torch.where(kept, record.loss.double(), 0.0)
        if self.loss_sum is None:
            self.loss_sum, self.steps = loss, kept.long()
        else:
            self.loss_sum, self.steps = self.loss_sum + loss, self.steps + kept.long()
        if self.label_loss is None:
            self.label_loss, self.label_count = record.label_loss.clone(), record.label_count.clone()
        else:
            self.label_loss += record.label_loss
            self.label_count += record.label_count
        self.window_time += record.step_time
        self.window_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        run = self.run
        if record.step % run.train.log_every and record.step != run.total_steps:
            seconds = run.logging.progress_seconds
            if self.plain_lines and seconds and time.perf_counter() - self._last_line >= seconds:
                # Between records: this process's own window, so no collective is needed (the
                # other processes do not know a line is due).
                mean = self._window_mean()
                tokens_per_s = run.plan.tokens_per_step * self.window_steps / max(self.window_time, 1e-9)
                local = {"step": record.step, "tokens": record.tokens, "loss": mean, "lr": record.lr}
                self._print_line({**local, "tokens_per_s": tokens_per_s, "mfu": run.plan.mfu(tokens_per_s)})
            return
        # Sums over processes: every rank saw different rows.
        label_loss = run.reduce(self.label_loss, "sum")
        label_count = run.reduce(self.label_count, "sum")
        # This process's window mean (nan when every step was skipped), in fp32, then the mean over
        # processes; read with everything else the record needs in one copy from the device.
        local_mean = (self.loss_sum / self.steps).float()
        parts = [run.reduce(local_mean, "mean"), record.grad_norm.float(), label_loss, label_count]
        values = torch.cat([part.double().reshape(-1) for part in parts]).tolist()
        loss, grad_norm = values[0], values[1]
        n_labels = len(run.labels)
        totals, counts = values[2 : 2 + n_labels], values[2 + n_labels :]
        tokens_per_s = run.plan.tokens_per_step * self.window_steps / max(self.window_time, 1e-9)
        mfu = run.plan.mfu(tokens_per_s)
        line = {
            "kind": "train",
            "step": record.step,
            "tokens": record.tokens,
            "time": time.time(),
            "loss": loss,
            "lr": record.lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
        }
        for label, total, count in zip(run.labels, totals, counts, strict=True):
            if count > 0:
                line[label.key("loss", TRAIN)] = total / count
        control.write_metrics(line)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{mfu:.1%}", refresh=False
            )
        if self.plain_lines:
            self._print_line(line)
        self._reset()

    def _window(self) -> tuple[float, int]:
        """The window's loss sum and kept steps, read from the device (one wait)."""
        if self.loss_sum is None:
            return 0.0, 0
        loss_sum, steps = torch.stack([self.loss_sum, self.steps.double()]).tolist()
        return loss_sum, int(steps)

    def _window_mean(self) -> float:
        loss_sum, steps = self._window()
        return loss_sum / steps if steps else float("nan")

    def _print_line(self, record: dict) -> None:
        run = self.run
        now = time.perf_counter()
        eta = (now - self._fit_start) / (record["step"] - run.start_step) * (run.total_steps - record["step"])
        print(progress_line(record, run.total_steps, eta), flush=True)
        self._last_line = now

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        if self.bar is not None:
            self.bar.close()

    def state_dict(self, run: RunContext) -> dict:
        """The open window of every process (each saw other rows), so a run resumed mid-window logs
        the same record as one that never stopped."""
        loss_sum, steps = self._window()
        mine = {
            "loss_sum": loss_sum,
            "steps": steps,
            "label_loss": None if self.label_loss is None else self.label_loss.detach().cpu().clone(),
            "label_count": None if self.label_count is None else self.label_count.detach().cpu().clone(),
        }
        windows = run.gather(mine)
        return {"windows": windows}

    def load_state_dict(self, state: dict, run: RunContext) -> None:
        windows = state["windows"]
        if len(windows) == run.world:
            mine = windows[run.rank]
        elif run.rank == 0:
            # Resumed with another number of processes: the window's sums go to one process (the
            # logged record sums over processes), its loss mean becomes the pooled mean.
            mine = _pooled(windows)
        else:
            mine = {"loss_sum": 0.0, "steps": 0, "label_loss": None, "label_count": None}
        device = run.device
        self.loss_sum = torch.tensor(float(mine["loss_sum"]), dtype=torch.float64, device=device)
        self.steps = torch.tensor(int(mine["steps"]), device=device)
        self.label_loss = None if mine["label_loss"] is None else mine["label_loss"].to(device)
        self.label_count = None if mine["label_count"] is None else mine["label_count"].to(device)


def progress_line(record: dict, total_steps: int, eta_seconds: float) -> str:
    """One plain progress line of a training metrics ``record``, for logs that are not a terminal::

    step 40/128 | tokens 81,920 | loss 3.2101 | lr 2.95e-03 | tok/s 12,345 | MFU 1.2% | ETA 0:01:23
    """
    eta = datetime.timedelta(seconds=round(max(eta_seconds, 0.0)))
    return (
        f"step {record['step']}/{total_steps} | tokens {record['tokens']:,} | loss {record['loss']:.4f} | "
        f"lr {record['lr']:.2e} | tok/s {record['tokens_per_s']:,.0f} | MFU {record['mfu']:.1%} | ETA {eta}"
    )


def _pooled(windows: list[dict]) -> dict:
    sums = [w for w in windows if w["label_loss"] is not None]
    return {
        "loss_sum": sum(float(w["loss_sum"]) for w in windows),
        "steps": sum(int(w["steps"]) for w in windows),
        "label_loss": sum(w["label_loss"] for w in sums) if sums else None,
        "label_count": sum(w["label_count"] for w in sums) if sums else None,
    }
