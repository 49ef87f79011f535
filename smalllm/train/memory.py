"""Memory pre-flight: estimate what training needs before allocating anything.

Estimates, per process (bytes), for ``world`` processes and a sharding strategy (``SHARDINGS``):

* parameters: fp32 master weights (4 B/param);
* gradients: fp32 (4 B/param);
* optimizer: AdamW moments (8 B/param);
  (the three above are divided by ``world`` under ``full_shard`` (FSDP FULL_SHARD / FSDP2
  ``reshard_after_forward=true`` / ZeRO-3) and ``shard_grad_op`` (FSDP SHARD_GRAD_OP / ZeRO-2))
* working copy: the weights the forward pass computes with. Unsharded: a 16-bit copy of every
  weight under bf16/fp16 autocast (none in fp32); ``full_shard``: only the all-gathered units in the
  compute dtype, the root (embeddings and LM head) and two decoder layers (the current one and the
  prefetched next); ``shard_grad_op``: every weight, gathered between forward and backward;
* activations: kept for backward per layer and token, after Korthikanti et al. (2022) adapted to a
  SwiGLU MLP: ``b·s·(10h + 6i)`` elements, plus ``2·b·a·s²`` (attention scores and probabilities)
  under ``eager`` attention only: SDPA and flash attention use fused kernels that keep neither, on the
  CPU as on CUDA; all layers without recompute, one layer plus the layer inputs with it;
* logits: fp32 logits, their softmax and gradient (``3·b·s·V·4`` bytes).

It is an estimate (allocator slack, temporary buffers and CUDA context are not modelled), good to
about ±30% (``tests/test_plan.py`` measures a CPU training step against it); the pre-flight refuses a run only when the estimate exceeds ``memory_fraction`` of what
the device has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smalllm.model.presets import ModelShape

GIB = 1024**3


SHARDINGS = ("none", "full_shard", "shard_grad_op")
"""How parameters, gradients and optimizer state are split over the processes (see the module docstring)."""


@dataclass
class MemoryEstimate:
    parameters: float
    working: float
    gradients: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return (
            self.parameters + self.working + self.gradients + self.optimizer + self.activations + self.logits
        )

    def rows(self) -> list[tuple[str, float]]:
        return [
            ("parameters", self.parameters),
            ("working copy", self.working),
            ("gradients", self.gradients),
            ("optimizer (AdamW)", self.optimizer),
            ("activations", self.activations),
            ("logits", self.logits),
            ("total", self.total),
        ]


def estimate_memory(
    shape: ModelShape,
    vocab_size: int,
    seq_len: int,
    micro_batch: int,
    precision: str,
    gradient_checkpointing: bool = False,
    world: int = 1,
    sharding: str = "none",
    attention: str = "sdpa",
) -> MemoryEstimate:
    """Bytes needed per process to train a model of ``shape`` (see the module docstring for the model)."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding {sharding!r} is not one of {', '.join(SHARDINGS)}")
    n = shape.params(vocab_size)
    half = precision in ("bf16", "fp16")
    compute_bytes = 2 if half else 4
    shards = 1 if sharding == "none" else world
    parameters = 4 * n / shards
    if sharding == "none":
        working = 2 * n if half else 0  # autocast's cached 16-bit casts; fp32 computes on the master
    elif sharding == "full_shard":
        layer = shape.non_embedding_params() / shape.layers
        root = n - shape.non_embedding_params()  # embeddings and LM head stay gathered in FSDP's root
        working = compute_bytes * (root + 2 * layer)
    else:
        working = compute_bytes * n
    gradients = 4 * n / shards
    optimizer = 8 * n / shards
    b, s, h, i, a = micro_batch, seq_len, shape.width, shape.intermediate, shape.heads
    per_layer = b * s * (10 * h + 6 * i) + (2 * b * a * s * s if attention == "eager" else 0)
    if gradient_checkpointing:
        activations = compute_bytes * (shape.layers * b * s * h + per_layer)
    else:
        activations = compute_bytes * shape.layers * per_layer
    logits = 3 * b * s * vocab_size * 4
    return MemoryEstimate(parameters, working, gradients, optimizer, activations, logits)


def available_memory(device: str) -> float:
    """Bytes the device can give this process: free CUDA memory, or MemAvailable on the CPU."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return float(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
