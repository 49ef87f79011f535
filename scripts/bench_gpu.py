"""GPU benchmark behind ``make bench-gpu``: tokens/s, MFU and peak memory of the 20m, 300m and 1b rungs
at the paper's context (2,048) and vocabulary (50,304), with and without ``torch.compile`` and
activation checkpointing, in bf16 on one CUDA device.

Each measurement builds the preset's model as the trainer does (``build_model``, fused AdamW from
``build_optimizer``, bf16 autocast, gradient clipping, TF32 allowed), steps as the trainer does on
one GPU (the lean forward pass of ``smalllm.model.forward`` unless compiled, the loss on whole
logits of ``smalllm.train.loss``) and times full optimizer steps on random token rows after warm-up
steps (compilation included there), between CUDA events.
MFU = ``Plan.flops_per_token`` x tokens/s / the device's peak from smalllm's table (dense bf16);
recomputation under activation checkpointing is not counted as useful FLOPs. The micro-batch is the
largest power of two up to 32 that smalllm's planner says fits without checkpointing.

``--dry-run`` needs no GPU: it prints the plan of measurements with the planner's memory estimate and
the step time expected at an assumed MFU on a named GPU (an estimate, not a measurement) and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from smalllm.config import load_config
from smalllm.train.memory import format_bytes
from smalllm.train.plan import GPUS, Plan, Target, gpu_spec, make_plan

PRESETS = ("20m", "300m", "1b")
CONTEXT = 2048  # Huang et al.'s context
VOCAB = 50_304  # their (OLMo) vocabulary
MAX_MICRO = 32


@functools.cache
def base_config(preset: str):
    return load_config(
        None,
        [f"model.preset={preset}", f"data.seq_len={CONTEXT}", "train.device=cuda", "train.precision=bf16"],
    )


def run_config(preset: str, micro: int, ckpt: bool):
    """The run config of one measurement: one micro-batch per step (the config is loaded once per preset)."""
    cfg = base_config(preset)
    train = dataclasses.replace(
        cfg.train,
        global_batch_size=micro,
        micro_batch_size=micro,
        max_tokens=micro * CONTEXT,
        gradient_checkpointing=ckpt,
    )
    return dataclasses.replace(cfg, train=train)


def plan_for(preset: str, micro: int, ckpt: bool, gpu: str | None) -> Plan:
    """The planner's view of one measurement: on the named GPU, else on this machine's CUDA device."""
    target = Target("cuda", "bf16", gpu=gpu_spec(gpu)) if gpu else None
    return make_plan(run_config(preset, micro, ckpt), vocab_size=VOCAB, target=target)


def pick_micro(preset: str, gpu: str | None) -> int:
    """Largest power-of-two micro-batch up to MAX_MICRO that the planner fits without checkpointing."""
    micro = MAX_MICRO
    while micro > 1 and not plan_for(preset, micro, False, gpu).fits:
        micro //= 2
    return micro


def measure(preset: str, micro: int, compile_: bool, ckpt: bool, steps: int, warmup: int) -> dict:
    """Time ``steps`` optimizer steps on this machine's CUDA device (after ``warmup`` untimed ones)."""
    from smalllm.model.build import build_model
    from smalllm.model.forward import training_forward
    from smalllm.train.loss import next_token_targets, token_losses
    from smalllm.train.trainer import build_optimizer

    cfg = run_config(preset, micro, ckpt)
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB, CONTEXT).cuda().train()
    if ckpt:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    optimizer = build_optimizer(model, cfg.train, "cuda")
    # The trainer's forward on one GPU: the compiled model's own, else the lean pass (smalllm.model.forward).
    own = torch.compile(model) if compile_ else model
    lean = None if compile_ else training_forward(model)
    forward = lean or (lambda x: own(input_ids=x).logits)
    ids = torch.randint(VOCAB, (micro, CONTEXT), device="cuda")
    targets = next_token_targets(ids, np.ones(tuple(ids.shape), dtype=bool))
    n_targets = micro * (CONTEXT - 1)
    params = list(model.parameters())

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(ids)
        loss = token_losses(logits, targets).sum() / n_targets  # the trainer's loss: whole logits
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    seconds = begin.elapsed_time(end) / 1000 / steps
    return {
        "step_s": seconds,
        "warmup_s": warmup_s,
        "peak_memory": torch.cuda.max_memory_allocated(),
        "forward": "model"
        if lean is None
        else "lean",  # as summary.json's training_forward (the trainer also checks it agrees)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument(
        "--micro-batch", type=int, help="the same micro-batch for every preset (default: planner)"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan and estimates; no GPU needed")
    ap.add_argument(
        "--gpu", help=f"plan for this GPU ({', '.join(GPUS)}); the dry run's default is H100-80GB"
    )
    ap.add_argument("--assumed-mfu", type=float, default=0.4, help="MFU the dry run's estimates assume")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; --dry-run prints the plan and estimates", file=sys.stderr)
        return 2
    gpu = args.gpu or ("H100-80GB" if args.dry_run else None)
    if not args.dry_run:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for preset in args.presets:
        micro = args.micro_batch or pick_micro(preset, gpu)
        for compile_ in (False, True):
            for ckpt in (False, True):
                plan = plan_for(preset, micro, ckpt, gpu)
                row = {
                    "preset": preset,
                    "micro_batch": micro,
                    "compile": compile_,
                    "act_ckpt": ckpt,
                    "params": plan.params,
                    "flops_per_token": plan.flops_per_token,
                    "peak_flops": plan.peak_flops,
                    "estimated_memory": plan.memory.total,
                }
                tokens = micro * CONTEXT
                if args.dry_run:
                    # Checkpointing recomputes the forward: 8 instead of 6 FLOPs per parameter and token
                    # at the same hardware utilisation, so fewer model FLOPs (MFU) per second.
                    mfu = args.assumed_mfu * (6 / 8 if ckpt else 1)
                    tok_s = mfu * plan.peak_flops / plan.flops_per_token
                    row |= {"tokens_per_s": tok_s, "mfu": mfu, "step_s": tokens / tok_s}
                else:
                    try:
                        m = measure(preset, micro, compile_, ckpt, args.steps, args.warmup)
                    except torch.cuda.OutOfMemoryError:
                        row["error"] = "out of memory"
                    else:
                        tok_s = tokens / m["step_s"]
                        row |= m | {"tokens_per_s": tok_s, "mfu": plan.mfu(tok_s)}
                    gc.collect()  # the failed or finished measurement's model and optimizer
                    torch._dynamo.reset()  # and compiled graphs, before the next one
                    torch.cuda.empty_cache()
                rows.append(row)
                print_row(
                    row, header=len(rows) == 1, dry=args.dry_run, gpu=gpu or plan.gpu, mfu=args.assumed_mfu
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def print_row(row: dict, header: bool, dry: bool, gpu: str | None, mfu: float) -> None:
    if header:
        if dry:
            print(
                f"# bench-gpu dry run: the plan of measurements on {gpu}, context {CONTEXT}, vocabulary {VOCAB:,}, "
                f"bf16. ESTIMATES, not measurements: tokens/s = MFU x peak / FLOPs per token at an assumed MFU of "
                f"{mfu:.0%} ({mfu * 6 / 8:.0%} with act. ckpt: the forward is recomputed); memory: the planner's estimate"
            )
        else:
            print(f"# bench-gpu on {gpu}: context {CONTEXT}, vocabulary {VOCAB:,}, bf16, measured")
        print(
            f"{'preset':<6} {'micro':>5} {'compile':>7} {'act.ckpt':>8} {'tokens/s':>11} {'step ms':>8} "
            f"{'MFU':>6} {'peak mem':>10} {'planner mem':>11}"
        )
    yes = {True: "yes", False: "no"}
    lead = f"{row['preset']:<6} {row['micro_batch']:>5} {yes[row['compile']]:>7} {yes[row['act_ckpt']]:>8}"
    if "error" in row:
        print(
            f"{lead} {row['error']:>11} {'':>8} {'':>6} {'':>10} {format_bytes(row['estimated_memory']):>11}"
        )
        return
    peak = format_bytes(row["peak_memory"]) if "peak_memory" in row else "-"
    print(
        f"{lead} {row['tokens_per_s']:>11,.0f} {1000 * row['step_s']:>8.1f} {row['mfu']:>6.1%} "
        f"{peak:>10} {format_bytes(row['estimated_memory']):>11}"
    )


if __name__ == "__main__":
    sys.exit(main())
