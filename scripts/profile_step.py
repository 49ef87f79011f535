"""Where a training step's time goes: wall time per part of ``Trainer.run_step``, on the CPU.

Each part is timed by wrapping the function that does it (the stream's batch assembly, the model's
forward, the backward, clipping, the optimizer, the scheduler, the per-task loss bookkeeping, the
callbacks); what is left of the step is Python glue. On the CPU every op has finished when its call
returns, so wall time per call is the part's cost (on a GPU it would be launch time only).

    python scripts/profile_step.py                       # micro-w32, the bench's rows and tasks
    python scripts/profile_step.py --nanogpt             # the nanoGPT shape of make bench
    python scripts/profile_step.py --preset 4m --steps 20
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import NANOGPT, bench_config, nanogpt_config  # noqa: E402

from smalllm.train import trainer as trainer_module  # noqa: E402
from smalllm.train.callbacks.metrics_logger import MetricsLogger  # noqa: E402
from smalllm.train.trainer import Trainer  # noqa: E402


class Timers:
    """Seconds spent in each wrapped callable, by part name (nested parts are not subtracted)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.on = False

    def wrap(self, part: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed


def instrument(trainer: Trainer, timers: Timers) -> None:
    """Wrap the parts of ``trainer``'s step (instance attributes, so nothing else is affected)."""
    stream = trainer.stream
    stream.batch = timers.wrap("stream: batch assembly", stream.batch)
    trainer._forward = timers.wrap("model forward", trainer._forward)
    trainer._backward = timers.wrap("backward", trainer._backward)
    trainer._clip = timers.wrap("gradient clipping", trainer._clip)
    stepped = trainer._stepped
    stepped.step = timers.wrap("optimizer step", stepped.step)
    stepped.zero_grad = timers.wrap("zero_grad", stepped.zero_grad)
    trainer.scheduler.step = timers.wrap("LR schedule", trainer.scheduler.step)
    trainer.settle = timers.wrap("settle (sync steps)", trainer.settle)
    for cb in trainer.callbacks:
        cb.on_step_end = timers.wrap(f"callback {type(cb).__name__}", cb.on_step_end)
    # Module-level helpers of the step: patched in the trainer module for the profile's duration.
    for name, part in (("token_losses", "LM loss"), ("_per_label", "per-task loss bookkeeping")):
        setattr(trainer_module, name, timers.wrap(part, getattr(trainer_module, name)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="micro-w32")
    ap.add_argument("--nanogpt", action="store_true", help="the nanoGPT shape and rows of make bench")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    os.environ.setdefault("SMALLLM_CACHE", str(Path(".smalllm_cache").absolute()))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        budget = args.steps + 10
        if args.nanogpt:
            cfg = nanogpt_config(run_dir, budget)
            what = f"nanoGPT shape, {NANOGPT['batch']} x {NANOGPT['block']}"
        else:
            cfg = bench_config(args.preset, args.seq_len, args.batch, run_dir, budget)
            what = f"{args.preset}, {args.batch} x {args.seq_len}, 3 tasks"
        trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=lambda _m: None)
        trainer.open_run()
        saved = {name: getattr(trainer_module, name) for name in ("token_losses", "_per_label")}
        try:
            trainer.begin()
            timers = Timers()
            instrument(trainer, timers)
            for _ in range(5):
                trainer.run_step()
            timers.on = True
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.run_step()
            total = time.perf_counter() - start
        finally:
            for name, fn in saved.items():
                setattr(trainer_module, name, fn)
            trainer.run.release()
    step_ms = 1e3 * total / args.steps
    print(f"# one training step: {what}, {torch.get_num_threads()} threads, {args.steps} steps")
    print(f"{'part':<34} {'ms/step':>8} {'share':>7}")
    rows = sorted(timers.seconds.items(), key=lambda kv: -kv[1])
    for part, seconds in rows:
        ms = 1e3 * seconds / args.steps
        print(f"{part:<34} {ms:>8.2f} {ms / step_ms:>7.1%}")
    # Parts do not nest except the LM loss (inside nothing else timed) and the callbacks' own work.
    rest = step_ms - sum(1e3 * s / args.steps for s in timers.seconds.values())
    print(f"{'rest (Python glue of the step)':<34} {rest:>8.2f} {rest / step_ms:>7.1%}")
    print(f"{'step':<34} {step_ms:>8.2f} {1:>7.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
