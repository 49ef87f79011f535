"""A small nanoGPT-style GPT and training loop, written here as the baseline ``make bench`` races.

What a user would otherwise run: pre-LayerNorm blocks, a GELU MLP of 4x the width, learned
positions, the output head tied to the token embedding, ``F.scaled_dot_product_attention`` with
``is_causal=True``, AdamW, no dropout, and gradient-norm clipping. The parameter layout and
initialisation follow GPT-2 (normal 0.02, residual projections scaled by 1/sqrt(2 x layers),
biases in every linear), so it is the same network as transformers' GPT-2 at the same shape.

Importable (``RefGPT``, ``make_optimizer``, ``train_steps``) and runnable alone: ``python
scripts/ref_gpt.py`` trains it on a built-in text, character by character, and prints the loss.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # (B, T, 3C) -> three (B, heads, T, C/heads) tensors.
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, mlp)
        self.down = nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    """GPT-2-style decoder; ``forward(ids)`` returns logits of shape (B, T, vocab)."""

    def __init__(
        self,
        vocab: int,
        block: int,
        layers: int = 4,
        width: int = 128,
        heads: int = 4,
        mlp: int | None = None,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp or 4 * width) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2:
                # Projections back into the residual stream shrink with depth, as in GPT-2.
                residual = name.endswith(("attn.proj.weight", "down.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if residual else 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make_optimizer(
    model: RefGPT, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW with decay on weight matrices only (not the tied token embedding, norms or biases)."""
    decay = [p for p in model.parameters() if p.ndim >= 2 and p is not model.tok.weight]
    rest = [p for p in model.parameters() if p.ndim < 2 or p is model.tok.weight]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def train_steps(
    model: RefGPT,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[torch.Tensor],
    clip: float = 1.0,
    lr_at: Callable[[int], float] | None = None,
    first_step: int = 0,
    losses: list | None = None,
) -> float:
    """One optimizer step per batch of token rows; returns seconds. A row of T tokens is one forward
    pass of length T and T - 1 next-token predictions (as smalllm's trainer counts it).

    ``lr_at(step)`` sets the learning rate of each step; ``losses`` collects each step's loss as a
    0-dim tensor (read it after timing: no host sync inside the loop).
    """
    start = time.perf_counter()
    for i, ids in enumerate(batches):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + i)
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if losses is not None:
            losses.append(loss.detach())
    return time.perf_counter() - start


TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: "
    "You are all resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, "
    "you know Caius Marcius is chief enemy to the people. All: We know't, we know't. First Citizen: "
    "Let us kill him, and we'll have corn at our own price. Is't a verdict? "
)


def char_batches(
    text: str, block: int, batch: int, steps: int, seed: int = 0
) -> tuple[list[torch.Tensor], int]:
    """``steps`` batches of ``batch`` random windows of ``block`` characters, and the vocabulary size."""
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - block, (steps, batch), generator=gen)
    offsets = torch.arange(block)
    return [data[s[:, None] + offsets] for s in starts], len(chars)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches, vocab = char_batches(TEXT * 20, args.block, args.batch, args.steps)
    model = RefGPT(vocab, args.block)
    opt = make_optimizer(model, args.lr)
    losses: list = []
    seconds = train_steps(model, opt, batches, losses=losses)
    tokens = args.steps * args.batch * args.block
    print(
        f"{args.steps} steps, {sum(p.numel() for p in model.parameters()):,} parameters: "
        f"{tokens / seconds:,.0f} tokens/s, {1000 * seconds / args.steps:.1f} ms/step, "
        f"loss {float(losses[0]):.3f} -> {float(losses[-1]):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
