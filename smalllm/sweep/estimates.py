"""Size and cost of sweep cells: what ``smalllm sweep --dry-run`` prints and ``--emit slurm`` budgets.

Time is ``FLOPs / (peak FLOP/s x MFU)`` plus a fixed start-up per cell.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass

from smalllm.config import RunConfig
from smalllm.sweep.grid import Cell, SweepSpec
from smalllm.sweep.records import cell_state

# CPU: measured on the 2-core AMD EPYC dev machine (shared with other jobs) with the cpu_frontier grid
# (micro presets, V=512, L=64, batch 32, one thread per cell): whole-cell wall time, evaluation
# included, gave 0.26 of plan.peak_flops (100 GFLOP/s per thread) for micro-w48 and 0.36-0.42 for
# micro-w96 (small models are overhead-bound); 0.35 is the working assumption.
CPU_MFU = 0.35
CPU_OVERHEAD_S = 8.0  # interpreter + torch/transformers imports + opening the cached corpus (~6-7 s measured)
# GPU: 0.4 of the dense bf16 peak is what well-tuned data-parallel LM training of 0.1-4B models
# reaches; tiny models (4m, 20m) reach far less, so their GPU hours are a lower bound.
GPU_MFU = 0.4
GPU_OVERHEAD_S = 60.0


@dataclass
class Estimate:
    """Size and cost of one cell, as ``--dry-run`` prints it."""

    params: int
    tokens: int
    flops: float
    seconds: float
    gpu_hours: float | None
    device: str


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cell_threads(workers: int) -> int | None:
    """Threads per cell when ``workers`` cells share the CPU (None: one cell, the config decides)."""
    return max(1, available_cpus() // workers) if workers > 1 else None


def estimate_cell(spec: SweepSpec, cfg: RunConfig, threads: int | None = None) -> Estimate:
    """Tokens, FLOPs (training and :func:`measurement_flops`) and estimated time of a cell on the
    sweep's target.

    Time is ``FLOPs / (peak x MFU)`` plus a start-up overhead; see :data:`CPU_MFU` and
    :data:`GPU_MFU` for the assumed utilisation. For a GPU target (``target.device: gpu``) the peak is
    that of ``target.gpu`` times ``target.gpus_per_cell``, and GPU hours are reported. ``threads``
    replaces the cell's CPU thread count (as ``--workers`` does).
    """
    from smalllm.train.plan import _GPU_PEAKS, NOMINAL_CPU_PEAK_PER_THREAD, make_plan

    plan = make_plan(cfg)
    flops = float(plan.flops_per_token) * plan.total_tokens + measurement_flops(cfg, plan)
    t = spec.target
    gpu = t.device == "gpu" or (t.device == "current" and plan.device == "cuda")
    if t.device == "gpu":
        peak = t.peak_flops or _GPU_PEAKS.get(t.gpu.upper(), 100e12)
        devices = t.gpus_per_cell
        label = f"{devices}x{t.gpu}"
    elif gpu:
        peak, devices, label = plan.peak_flops, t.gpus_per_cell, "cuda"
    else:
        import torch

        threads = threads or cfg.train.num_threads or torch.get_num_threads()
        # The nominal peak, not a measured one: CPU_MFU is calibrated against it.
        peak = t.peak_flops or cfg.train.peak_flops or NOMINAL_CPU_PEAK_PER_THREAD * threads
        devices, label = 1, f"cpu x{threads}"
    mfu = t.mfu or (GPU_MFU if gpu else CPU_MFU)
    overhead = t.overhead_s if t.overhead_s is not None else (GPU_OVERHEAD_S if gpu else CPU_OVERHEAD_S)
    seconds = flops / (peak * devices * mfu) + overhead
    return Estimate(
        params=plan.params,
        tokens=plan.total_tokens,
        flops=flops,
        seconds=seconds,
        gpu_hours=seconds * devices / 3600 if gpu else None,
        device=label,
    )


INSTANCE_TOKENS_GUESS = 8
"""Tokens per scored task instance (with its prefix) assumed by :func:`measurement_flops`: the pools are
not built for an estimate. T_CMP's are 3-5."""


def measurement_flops(cfg: RunConfig, plan) -> float:
    """FLOPs of what a cell does beyond training and its periodic evaluations (which the calibrated
    :data:`CPU_MFU` already covers): interference measurements and the evaluations bracketing
    injections. Upper bounds where the schedule is only known to the stream: every gap period (or,
    without a gap schedule, every step) counts as an injection.

    * One interference measurement: the split (one forward and two backward passes over the batch,
      10/6 of a training step) and the reference gradient (a forward and backward over
      ``reference_size`` instances).
    * One extra evaluation: a forward pass (1/3 of training FLOPs per token) over the held-out
      instances of every task and ``eval.background_sequences`` rows.
    * An online mixture's round boundaries (every ``round_steps`` steps before the last): a forward
      pass over ``data.mixture.eval_size`` validation instances of each of the family's sub-skills.
    """
    steps = plan.steps
    step_flops = float(plan.flops_per_token) * plan.tokens_per_step
    total = 0.0

    def period(task_name: str | None) -> int:
        tasks = [t for t in cfg.data.tasks if t.name == task_name] or cfg.data.tasks[:1]
        schedule = tasks[0].schedule if tasks else None
        return schedule.gap_batches if schedule is not None and schedule.kind == "gap" else 1

    inter = cfg.interference
    if inter.enabled:
        due = set(range(0, steps, inter.every_steps)) if inter.every_steps else set()
        if inter.at_injections:
            due |= set(range(0, steps, period(inter.task)))
        reference = (inter.reference_size or 5000) * INSTANCE_TOKENS_GUESS * float(plan.flops_per_token)
        total += len(due) * (step_flops * 10 / 6 + reference)
    if cfg.eval.enabled and cfg.eval.around_injections:
        injections = -(-steps // period(cfg.eval.around_injections))
        evals = 3 * min(cfg.eval.injection_cycles, injections)
        held_out = sum(
            t.eval_size if t.eval_size is not None else round(t.pool_size * t.test_fraction)
            for t in cfg.data.tasks
        )
        tokens = held_out * INSTANCE_TOKENS_GUESS + cfg.eval.background_sequences * cfg.data.seq_len
        total += evals * tokens * float(plan.flops_per_token) / 3
    mix = cfg.data.mixture
    if mix.policy == "online":
        rounds = (
            max(0, steps - 1) // mix.round_steps
        )  # boundaries at r·round_steps, 0 < r·round_steps < steps
        tokens = rounds * _sub_skills(cfg, mix.task) * mix.eval_size * INSTANCE_TOKENS_GUESS
        total += tokens * float(plan.flops_per_token) / 3
    return total


def _sub_skills(cfg: RunConfig, task_name: str | None) -> int:
    """Sub-skills of the configured task ``task_name``: its ``skill_weights``, else the task built
    against a byte vocabulary (a family's skills do not depend on the vocabulary)."""
    from smalllm.data.tokenizer import byte_tokenizer
    from smalllm.tasks import TaskVocab, build_task

    i, tcfg = next((i, t) for i, t in enumerate(cfg.data.tasks) if t.name == task_name)  # validated to exist
    if tcfg.skill_weights is not None:
        return len(tcfg.skill_weights)
    task = build_task(
        tcfg.name, tcfg.params, TaskVocab(byte_tokenizer()), seed=tcfg.seed, where=f"data.tasks.{i}"
    )
    return len(task.skills)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def data_seed_text(cfg: RunConfig) -> str:
    """The data seeds of a cell as the dry run shows them: ``data.seed``, then any task seed that differs."""
    task_seeds = [t.seed for t in cfg.data.tasks]
    return "/".join(str(s) for s in dict.fromkeys([cfg.data.seed, *task_seeds]))


def parallel_wall(seconds: list[float], workers: int) -> float:
    """Wall time of jobs of ``seconds`` run as the sweep runs them: longest first, each worker taking
    the next job when it is free. Not ``sum / workers``: the last long job can run on its own."""
    free = [0.0] * max(1, workers)
    for job in sorted(seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + job)
    return max(free)


def dry_run_table(spec: SweepSpec, cells: list[Cell], configs: dict[str, RunConfig], workers: int = 1) -> str:
    """One line per cell (state, seeds, size, tokens, FLOPs, time) and the totals (wall time over ``workers``).

    The data seed column shows ``data.seed`` then each task seed that differs from it (``0/1``).
    """
    rows, total_s, total_gpu_h, total_flops, total_tokens = [], 0.0, 0.0, 0.0, 0
    cell_seconds = []
    any_gpu = False
    threads = cell_threads(workers)
    for cell in cells:
        est = estimate_cell(spec, configs[cell.name], threads)
        state = cell_state(spec.sweep_dir, cell.name) if spec.sweep_dir.is_dir() else "pending"
        gpu_h = "-" if est.gpu_hours is None else f"{est.gpu_hours:,.1f}"
        any_gpu |= est.gpu_hours is not None
        rows.append(
            [
                cell.name,
                state,
                data_seed_text(configs[cell.name]),
                str(configs[cell.name].train.seed),
                format_count(est.params),
                format_count(est.tokens),
                f"{est.flops:.2e}",
                format_duration(est.seconds),
                gpu_h,
            ]
        )
        total_s += est.seconds
        cell_seconds.append(est.seconds)
        total_gpu_h += est.gpu_hours or 0.0
        total_flops += est.flops
        total_tokens += est.tokens
    header = ["cell", "state", "data seed", "init seed", "params", "tokens", "FLOPs", "est. time", "GPU h"]
    if not any_gpu:
        header, rows = header[:-1], [r[:-1] for r in rows]
    totals = [
        "total",
        f"{len(cells)} cells",
        "",
        "",
        "",
        format_count(total_tokens),
        f"{total_flops:.2e}",
        format_duration(total_s),
    ]
    if any_gpu:
        totals.append(f"{total_gpu_h:,.0f}")
    table = [header, *rows, totals]
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    lines = []
    for k, r in enumerate(table):
        if k == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append(
            "  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip()
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    t = spec.target
    est0 = estimate_cell(spec, configs[cells[0].name], threads) if cells else None
    gpu = est0 is not None and est0.gpu_hours is not None
    mfu = t.mfu or (GPU_MFU if gpu else CPU_MFU)
    where = est0.device if est0 else "?"
    lines.append(
        f"estimates: time = FLOPs / (peak FLOP/s x MFU {mfu:g}) + start-up, on {where}"
        + (" (GPU hours = time x GPUs per cell)" if gpu else "")
        + (
            "; total = sum of cells"
            if workers == 1 or gpu
            else f"; {workers} workers, longest cells first: about "
            f"{format_duration(parallel_wall(cell_seconds, workers))} wall"
        )
    )
    return "\n".join(lines)
