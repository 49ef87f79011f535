"""The run plan: every derived number of a training run, computed before anything is allocated.

``smalllm train --dry-run`` prints it; the trainer refuses to start when the memory estimate
does not fit the device.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from smalllm.config import RunConfig
from smalllm.errors import SmalllmError
from smalllm.model.presets import PRESETS, ModelShape
from smalllm.train.config import TrainConfig
from smalllm.train.environment import cuda_unavailable_reason
from smalllm.train.memory import SHARDINGS, MemoryEstimate, available_memory, estimate_memory, format_bytes

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by device name, for MFU when train.peak_flops is
# not set. Matched as substrings in this order, so the more specific names come first.
_GPU_PEAKS = {
    "H200": 989e12,  # NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity (SXM), dense half
    "H100 PCIe": 756e12,  # NVIDIA H100 datasheet, PCIe: BF16 1,513 TFLOPS with sparsity, dense half
    "H100": 989e12,  # NVIDIA H100 datasheet, SXM: BF16 1,979 TFLOPS with sparsity, dense half
    "A100": 312e12,  # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS dense (624 with sparsity)
    "L40S": 362e12,  # NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS dense (733 with sparsity)
    "L40": 181e12,  # NVIDIA L40 datasheet: BF16 Tensor Core 181.05 TFLOPS dense (362.1 with sparsity)
    "A10": 125e12,  # NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOPS dense (250 with sparsity)
    "4090": 165e12,  # NVIDIA Ada (AD102) whitepaper, RTX 4090: BF16 with FP32 accumulate 165.2 TFLOPS dense
}
NOMINAL_CPU_PEAK_PER_THREAD = 100e9
"""A nominal fp32 peak per CPU thread (AVX2: 2 FMA units x 8 lanes x 2 FLOP x ~3 GHz). MFU uses it
until ``make bench`` has measured this machine (:func:`cpu_peak_flops`); sweep time estimates use
it always, with an MFU calibrated against it (``smalllm.sweep.estimates.CPU_MFU``)."""
CPU_PEAK_FILE = "cpu_peak.json"
"""Measured matmul peaks by machine, thread count and torch version, in the cache directory."""


class DoesNotFit(SmalllmError):
    """The memory estimate of a plan exceeds what the device offers (``smalllm`` exits 3)."""

    exit_status = 3


@dataclass(frozen=True)
class GpuSpec:
    """A GPU a plan can be made for without having it (``smalllm train --dry-run --gpu NAME``)."""

    name: str
    memory: float
    """Total memory in bytes, as ``nvidia-smi`` reports it."""
    peak_flops: float
    """Dense bf16 tensor-core peak in FLOP/s (for MFU and time estimates)."""


MIB = 1024**2
GPUS = {
    spec.name: spec
    for spec in (
        GpuSpec("H100-80GB", 81559 * MIB, 989e12),
        GpuSpec("H200-141GB", 143771 * MIB, 989e12),
        GpuSpec("A100-80GB", 81920 * MIB, 312e12),
        GpuSpec("A100-40GB", 40960 * MIB, 312e12),
        GpuSpec("L40S-48GB", 46068 * MIB, 362e12),
        GpuSpec("A10-24GB", 23028 * MIB, 125e12),
        GpuSpec("RTX4090-24GB", 24564 * MIB, 165e12),
    )
}
"""The GPUs ``--gpu`` accepts by name."""


def gpu_spec(name: str, field: str = "--gpu") -> GpuSpec:
    """The :data:`GPUS` entry called ``name`` (case-insensitive); a one-line error naming ``field``."""
    for key, spec in GPUS.items():
        if key.lower() == name.lower():
            return spec
    raise SmalllmError(f"{field}: unknown GPU '{name}'; known: {', '.join(GPUS)}")


def resolve_device(requested: str) -> str:
    if requested == "auto":
        # `accelerate launch --cpu` (or `use_cpu: true` in its config) asks for the CPU on a GPU box.
        launcher_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
        return "cuda" if torch.cuda.is_available() and not launcher_cpu else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SmalllmError(f"train.device: cuda requested but {cuda_unavailable_reason()}")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "fp16" and device == "cpu":
        raise SmalllmError("train.precision: fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return requested


def resolve_target(t: TrainConfig, strict: bool = True) -> tuple[str, str, bool]:
    """(device, precision, hypothetical) of a run; ``strict=False`` (dry runs) assumes a GPU for
    ``train.device=cuda`` on a machine without one (``hypothetical``) instead of refusing."""
    hypothetical = not strict and t.device == "cuda" and not torch.cuda.is_available()
    if hypothetical:
        return "cuda", hypothetical_precision(t.precision), True
    device = resolve_device(t.device)
    return device, resolve_precision(t.precision, device), False


def hypothetical_precision(requested: str) -> str:
    """The precision ``auto`` gives on a GPU the machine does not have (every listed GPU does bf16)."""
    return "bf16" if requested == "auto" else requested


def default_peak_flops(device: str) -> float:
    """The FLOP/s MFU is against when ``train.peak_flops`` is not set: the GPU's datasheet dense bf16
    peak, or this CPU's measured fp32 matmul peak (the nominal one until measured)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, peak in _GPU_PEAKS.items():
            if key in name:
                return peak
        return 100e12
    return cpu_peak_flops()[0]


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of ``repeats`` n x n x n matmuls in ``dtype`` at the current thread count (after a
    warm-up). Meaningful on a quiet machine only: another process's load lowers it."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    torch.mm(a, b)  # warm-up: the first call picks and packs a kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _cpu_key() -> str:
    """This machine's CPU model, thread count and torch version: what a measured peak holds for."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def record_cpu_peak(fp32: float, bf16: float | None = None, cache_dir: Path | None = None) -> Path | None:
    """Keep a measured peak for this machine in ``cache_dir`` (default: the cache directory runs
    read it from); ``make bench`` calls it. None if the cache is not writable."""
    from smalllm.data.shards import default_cache_dir
    from smalllm.run_record import atomic_write_json

    path = (cache_dir or default_cache_dir()) / CPU_PEAK_FILE
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
        known = known if isinstance(known, dict) else {}
        known[_cpu_key()] = {"fp32": fp32, "bf16": bf16, "measured": time.strftime("%Y-%m-%d")}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, known)
    except (OSError, ValueError):
        return None
    return path


def cpu_peak_flops() -> tuple[float, str]:
    """(fp32 FLOP/s, where it comes from) for this CPU at the current thread count: measured by
    ``make bench`` when it has run here, else the nominal per-thread figure."""
    from smalllm.data.shards import default_cache_dir

    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        entry = json.loads((default_cache_dir() / CPU_PEAK_FILE).read_text())[_cpu_key()]
        fp32 = float(entry["fp32"])
        if math.isfinite(fp32) and fp32 > 0:
            return fp32, f"measured by make bench on {entry.get('measured', '?')}"
    threads = torch.get_num_threads()
    return NOMINAL_CPU_PEAK_PER_THREAD * threads, "nominal; `make bench` measures this machine's"


def tokenizer_vocab_estimate(cfg: RunConfig) -> int:
    """Vocabulary size the tokenizer will have (exact for byte/char/pretrained, the target for BPE)."""
    kind = cfg.data.tokenizer.kind
    if kind == "byte":
        return 258
    if kind == "char":
        from smalllm.data.tokenizer import char_tokenizer

        return len(char_tokenizer())
    if kind == "pretrained":
        from smalllm.data.tokenizer import load_pretrained

        return len(load_pretrained(cfg.data.tokenizer.pretrained_source()))
    return cfg.data.tokenizer.vocab_size


@dataclass
class Plan:
    shape: ModelShape
    vocab_size: int
    seq_len: int
    device: str
    precision: str
    world: int
    global_batch: int
    micro_batch: int
    accumulation: int
    steps: int
    memory: MemoryEstimate
    available: float
    peak_flops: float
    memory_fraction: float
    sharding: str = "none"
    gpu: str | None = None
    """The GPU the plan is for, by name (None on the CPU)."""
    peak_source: str = ""
    """Where ``peak_flops`` comes from, when it is not obvious (the CPU's: measured or nominal)."""

    @property
    def params(self) -> int:
        return self.shape.params(self.vocab_size)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def total_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops_per_token(self) -> int:
        return self.shape.flops_per_token(self.vocab_size, self.seq_len)

    def mfu(self, tokens_per_s: float) -> float:
        """Model FLOPs utilisation of a global throughput of ``tokens_per_s`` (all processes)."""
        return self.flops_per_token * tokens_per_s / (self.peak_flops * self.world)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_fraction * self.available

    def describe(self) -> str:
        p = self.shape
        lines = [
            f"model        {p.name}: {self.params:,} parameters ({p.non_embedding_params():,} non-embedding), "
            f"{p.layers} layers, width {p.width}, {p.heads} heads, MLP {p.mlp_dim}",
            f"vocabulary   {self.vocab_size:,}    context {self.seq_len}",
            f"FLOPs/token  {self.flops_per_token:,}  (total {self.flops_per_token * self.total_tokens:.3e})",
            f"batch        {self.global_batch} sequences = {self.tokens_per_step:,} tokens/step "
            f"({self.world} process(es) x {self.micro_batch} micro-batch x {self.accumulation} accumulation)",
            f"steps        {self.steps:,}  ({self.total_tokens:,} tokens)",
            f"device       {self.device}{f' ({self.gpu})' if self.gpu else ''}, precision {self.precision}, "
            f"peak {self.peak_flops:.3g} FLOP/s for MFU{f' ({self.peak_source})' if self.peak_source else ''}",
            f"processes    {self.world}, sharding {self.sharding}",
            f"memory (per {'GPU' if self.device == 'cuda' else 'process'}, estimated):",
        ]
        lines += [f"  {name:<18} {format_bytes(value):>12}" for name, value in self.memory.rows()]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(
            f"  available          {format_bytes(self.available):>12}  -> {verdict} "
            f"(limit {self.memory_fraction:.0%} of available)"
        )
        return "\n".join(lines)

    def refuse_if_too_big(self) -> None:
        if self.fits:
            return
        raise DoesNotFit(
            f"{'model.preset' if self.shape.name in PRESETS else 'model'}: {self.shape.name} needs ~{format_bytes(self.memory.total)} per process but "
            f"{format_bytes(self.memory_fraction * self.available)} is usable on {self.device}; lower "
            "train.micro_batch_size, enable train.gradient_checkpointing=true, shard over more GPUs (FSDP), "
            "or pick a smaller preset"
        )


# What a dry run assumes for ``train.device=cuda`` on a machine without one (and without --gpu).
ASSUMED_GPU = GPUS["H100-80GB"]


@dataclass(frozen=True)
class Target:
    """Where a plan runs: device, precision, processes, sharding, and the GPU when not this machine's.

    The trainer builds it once from the accelerator it set up; a dry run from the flags, the
    accelerate config and the environment (:func:`smalllm.train.launch.dry_run_target`).
    """

    device: str
    precision: str
    world: int = 1
    sharding: str = "none"
    gpu: GpuSpec | None = None
    """A GPU planned for instead of the one found (``--gpu``, or assumed when there is none)."""
    activation_checkpointing: bool = False
    """Recompute forced by the launcher (FSDP ``activation_checkpointing``), on top of the config's."""


def make_plan(
    cfg: RunConfig,
    vocab_size: int | None = None,
    world: int = 1,
    sharding: str = "none",
    strict: bool = True,
    target: Target | None = None,
) -> Plan:
    """Derive the plan of ``cfg`` for ``world`` processes (vocabulary from the tokenizer if known).

    ``target`` (device, precision, processes, sharding, GPU) is the one the trainer resolved; without
    it, it is resolved here from ``cfg`` with ``world`` and ``sharding`` (``strict=False``: dry runs
    plan ``train.device=cuda`` even without a GPU, on :data:`ASSUMED_GPU`).
    """
    t = cfg.train
    if target is None:
        device, precision, hypothetical = resolve_target(t, strict)
        target = Target(device, precision, world, sharding, ASSUMED_GPU if hypothetical else None)
    if target.sharding not in SHARDINGS:
        raise SmalllmError(f"sharding: {target.sharding!r} is not one of {', '.join(SHARDINGS)}")
    world = target.world
    # The model's embedding rows (the tokenizer's vocabulary padded to model.vocab_multiple).
    vocab = cfg.model.embedding_rows(vocab_size if vocab_size is not None else tokenizer_vocab_estimate(cfg))
    shape = cfg.model.shape(cfg.data.seq_len)
    # micro_batch_size is a cap: with more processes than the global batch has micro-batches, each
    # process runs its whole share in one pass (batch 32 on 8 GPUs: 4 rows each, no accumulation).
    per_process = t.global_batch_size // world
    micro = min(t.micro_batch_size, per_process)
    if t.global_batch_size % world:
        raise SmalllmError(
            f"train.global_batch_size: {t.global_batch_size} cannot be divided among {world} processes "
            "(it must be a multiple of the process count)"
        )
    if per_process % micro:
        raise SmalllmError(
            f"train.micro_batch_size: each process's share of the global batch ({per_process} rows) is "
            f"not a multiple of {micro}; pick a micro_batch_size that divides {per_process}"
        )
    accumulation = per_process // micro
    tokens_per_step = t.global_batch_size * cfg.data.seq_len
    steps = max(1, math.ceil(t.max_tokens / tokens_per_step))
    memory = estimate_memory(
        shape,
        vocab,
        cfg.data.seq_len,
        micro,
        target.precision,
        gradient_checkpointing=t.gradient_checkpointing or target.activation_checkpointing,
        world=world,
        sharding=target.sharding,
        attention=cfg.model.attn_implementation,
    )
    gpu = target.gpu
    peak_source = ""
    if gpu is not None:
        available, peak, gpu_name = gpu.memory, gpu.peak_flops, gpu.name
    elif target.device == "cpu":  # one read of the measured peak, with where it comes from
        (peak, peak_source), gpu_name = cpu_peak_flops(), None
        available = available_memory(target.device)
    else:
        available, peak = available_memory(target.device), default_peak_flops(target.device)
        gpu_name = torch.cuda.get_device_name()
    return Plan(
        shape=shape,
        vocab_size=vocab,
        seq_len=cfg.data.seq_len,
        device=target.device,
        precision=target.precision,
        world=world,
        global_batch=t.global_batch_size,
        micro_batch=micro,
        accumulation=accumulation,
        steps=steps,
        memory=memory,
        available=available,
        peak_flops=t.peak_flops or peak,
        peak_source="train.peak_flops" if t.peak_flops else peak_source,
        memory_fraction=t.memory_fraction,
        sharding=target.sharding,
        gpu=gpu_name,
    )
