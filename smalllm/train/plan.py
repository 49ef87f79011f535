"""The run plan: every derived number of a training run, computed before anything is allocated.

``smalllm train --dry-run`` prints it; the trainer refuses to start when the memory estimate
does not fit the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smalllm.config import RunConfig
from smalllm.errors import SmalllmError
from smalllm.model.presets import PRESETS, Preset
from smalllm.train.config import TrainConfig
from smalllm.train.memory import MemoryEstimate, available_memory, estimate_memory, format_bytes

# Peak dense FLOP/s per device for MFU when train.peak_flops is not set (bf16 tensor cores on GPUs).
_GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "A10": 125e12, "4090": 165e12}
_CPU_PEAK_PER_THREAD = 100e9  # fp32 AVX2: 2 FMA units x 8 lanes x 2 FLOP x ~3 GHz per core


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SmalllmError("train.device: cuda requested but no CUDA device is available")
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
        return "cuda", "bf16" if t.precision == "auto" else t.precision, True
    device = resolve_device(t.device)
    return device, resolve_precision(t.precision, device), False


def default_peak_flops(device: str) -> float:
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, peak in _GPU_PEAKS.items():
            if key in name:
                return peak
        return 100e12
    return _CPU_PEAK_PER_THREAD * torch.get_num_threads()


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
    preset: Preset
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

    @property
    def params(self) -> int:
        return self.preset.params(self.vocab_size)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def total_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops_per_token(self) -> int:
        return self.preset.flops_per_token(self.vocab_size, self.seq_len)

    def mfu(self, tokens_per_s: float) -> float:
        """Model FLOPs utilisation of a global throughput of ``tokens_per_s`` (all processes)."""
        return self.flops_per_token * tokens_per_s / (self.peak_flops * self.world)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_fraction * self.available

    def describe(self) -> str:
        p = self.preset
        lines = [
            f"model        {p.name}: {self.params:,} parameters ({p.non_embedding_params():,} non-embedding), "
            f"{p.layers} layers, width {p.width}, {p.heads} heads, MLP {p.mlp_dim}",
            f"vocabulary   {self.vocab_size:,}    context {self.seq_len}",
            f"FLOPs/token  {self.flops_per_token:,}  (total {self.flops_per_token * self.total_tokens:.3e})",
            f"batch        {self.global_batch} sequences = {self.tokens_per_step:,} tokens/step "
            f"({self.world} process(es) x {self.micro_batch} micro-batch x {self.accumulation} accumulation)",
            f"steps        {self.steps:,}  ({self.total_tokens:,} tokens)",
            f"device       {self.device}, precision {self.precision}, peak {self.peak_flops:.3g} FLOP/s for MFU",
            "memory (per process, estimated):",
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
        raise SmalllmError(
            f"model.preset: {self.preset.name} needs ~{format_bytes(self.memory.total)} per process but "
            f"{format_bytes(self.memory_fraction * self.available)} is usable on {self.device}; lower "
            "train.micro_batch_size, enable train.gradient_checkpointing=true, or pick a smaller preset"
        )


# What a dry run assumes for ``train.device=cuda`` on a machine without one: one H100 80GB.
ASSUMED_GPU = {"name": "H100 80GB (assumed)", "memory": 80 * 1024**3, "peak_flops": 989e12}


def make_plan(
    cfg: RunConfig, vocab_size: int | None = None, world: int = 1, sharded: bool = False, strict: bool = True
) -> Plan:
    """Derive the plan of ``cfg`` for ``world`` processes (vocabulary from the tokenizer if known).

    ``strict=False`` (dry runs) plans for ``train.device=cuda`` even without a GPU, assuming an H100.
    """
    t = cfg.train
    device, precision, hypothetical = resolve_target(t, strict)
    # The model's embedding rows (the tokenizer's vocabulary padded to model.vocab_multiple).
    vocab = cfg.model.embedding_rows(vocab_size if vocab_size is not None else tokenizer_vocab_estimate(cfg))
    preset = PRESETS[cfg.model.preset]
    if t.global_batch_size % (t.micro_batch_size * world):
        raise SmalllmError(
            f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
            f"train.micro_batch_size ({t.micro_batch_size}) x processes ({world})"
        )
    accumulation = t.global_batch_size // (t.micro_batch_size * world)
    tokens_per_step = t.global_batch_size * cfg.data.seq_len
    steps = max(1, math.ceil(t.max_tokens / tokens_per_step))
    memory = estimate_memory(
        preset,
        vocab,
        cfg.data.seq_len,
        t.micro_batch_size,
        precision,
        gradient_checkpointing=t.gradient_checkpointing,
        shards=world if sharded else 1,
        attention=cfg.model.attn_implementation,
    )
    return Plan(
        preset=preset,
        vocab_size=vocab,
        seq_len=cfg.data.seq_len,
        device=device,
        precision=precision,
        world=world,
        global_batch=t.global_batch_size,
        micro_batch=t.micro_batch_size,
        accumulation=accumulation,
        steps=steps,
        memory=memory,
        available=ASSUMED_GPU["memory"] if hypothetical else available_memory(device),
        peak_flops=t.peak_flops
        or (ASSUMED_GPU["peak_flops"] if hypothetical else default_peak_flops(device)),
        memory_fraction=t.memory_fraction,
    )
