"""The student: a shared linear bottleneck ``W`` (N x D) with per-task linear decoders, trained by AdamW.

All widths of a grid train side by side in one :class:`WidthStack`: their bottleneck rows are
concatenated into one ``(sum N) x D`` matrix and their decoders into one ``K x d_T x (sum N)``
tensor, so a step costs a few matrix products whatever the number of widths. The widths stay
independent models: AdamW acts element by element, each width's loss only reaches its own slice,
and gradient clipping is computed per width. Every width sees the same samples (common random
numbers), which makes the widths' differences sharper, not biased.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from smalllm.errors import SmalllmError

TaskSampler = Callable[[int, torch.Generator], torch.Tensor]
"""``(step, generator) -> task index per sample`` (LongTensor on the stack's device)."""


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, ...; a CUDA device that is not there is a one-line error."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SmalllmError(f"--device: '{name}' is not a torch device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SmalllmError(f"--device: '{name}' requested but CUDA is not available")
    return device


class WidthStack:
    """Bottleneck students of several widths for one task mixture, trained as one batched model."""

    def __init__(
        self, widths: list[int], lam: np.ndarray, dim: int, seed: int, device: torch.device | str = "cpu"
    ) -> None:
        self.widths = list(widths)
        self.dim = dim
        self.num_tasks, self.block = lam.shape
        self.device = torch.device(device)
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)])
        total = int(self.offsets[-1])
        # Initialisation on the CPU so that a seed gives the same start on every device.
        init = torch.Generator().manual_seed(seed)
        rows = []
        for width in self.widths:
            q, _ = torch.linalg.qr(torch.randn(dim, width, generator=init, dtype=torch.float64))
            rows.append(q.T)  # orthonormal rows
        self.weight = torch.cat(rows).float().to(self.device).requires_grad_()
        self.decoder = torch.zeros(self.num_tasks, self.block, total, device=self.device, requires_grad=True)
        owner = np.repeat(np.arange(len(self.widths)), self.widths)
        self.segments = torch.zeros(total, len(self.widths), device=self.device)
        self.segments[torch.arange(total), torch.as_tensor(owner)] = 1.0
        self.sqrt_lam = torch.as_tensor(np.sqrt(lam), dtype=torch.float32, device=self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed + 1)

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.decoder]

    def loss_per_width(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Mean squared error of every width on a batch (shape ``(n_widths,)``), summed over outputs."""
        batch = x.shape[0]
        blocks = x[:, : self.num_tasks * self.block].view(batch, self.num_tasks, self.block)
        target = blocks[torch.arange(batch, device=x.device), tasks] * self.sqrt_lam[tasks]
        hidden = x @ self.weight.T  # (B, sum N)
        # Each sample's own task decoder, applied to every width's slice, summed per width.
        pred = (self.decoder[tasks] * hidden[:, None, :]) @ self.segments  # (B, d_T, n_widths)
        return ((pred - target[:, :, None]) ** 2).sum(dim=1).mean(dim=0)

    def clip_per_width_(self, max_norm: float) -> torch.Tensor:
        """Scale each width's gradient to norm <= ``max_norm``; returns the norms before clipping."""
        sq = (self.weight.grad**2).sum(dim=1) + (self.decoder.grad**2).sum(dim=(0, 1))
        norms = (sq @ self.segments).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        per_row = self.segments @ scale
        self.weight.grad.mul_(per_row[:, None])
        self.decoder.grad.mul_(per_row[None, None, :])
        return norms

    def bottleneck(self, index: int) -> np.ndarray:
        """Width ``index``'s ``W`` as float64 numpy (N x D)."""
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return self.weight.detach()[lo:hi].double().cpu().numpy()

    @torch.no_grad()
    def normalised_loss(self) -> np.ndarray:
        """Exact population loss ``||D_k W - A_k||_F^2 / Tr C_k`` (x ~ N(0, I)), shape ``(n_widths, K)``."""
        out = np.zeros((len(self.widths), self.num_tasks))
        energy = (self.sqrt_lam.double() ** 2).sum(dim=1)
        for i in range(len(self.widths)):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            w = self.weight[lo:hi].double()
            dec = self.decoder[:, :, lo:hi].double()  # (K, d_T, N)
            gram = w @ w.T
            power = torch.einsum("kdn,nm,kdm->k", dec, gram, dec)
            own = w[:, : self.num_tasks * self.block].reshape(-1, self.num_tasks, self.block)  # (N, K, d_T)
            cross = torch.einsum("kdn,nkd,kd->k", dec, own, self.sqrt_lam.double())
            out[i] = ((power - 2 * cross + energy) / energy).cpu().numpy()
        return out


def inverse_sqrt_schedule(warmup: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then ``sqrt(warmup / step)``."""

    def factor(step: int) -> float:
        step = step + 1
        return step / warmup if step < warmup else math.sqrt(warmup / step)

    return factor


def zipf_sampler(pi: np.ndarray, batch_size: int, device: torch.device) -> TaskSampler:
    """Each sample's task drawn independently from the priors ``pi``."""
    probs = torch.as_tensor(pi, dtype=torch.float32, device=device)

    def sample(step: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(probs, batch_size, replacement=True, generator=generator)

    return sample


class Trainer:
    """AdamW with the inverse-square-root schedule and per-width clipping, on fresh samples every step."""

    def __init__(
        self,
        stack: WidthStack,
        lr: float,
        warmup: int,
        weight_decay: float,
        clip: float,
        cpu_threads: int = 1,
    ) -> None:
        self.stack = stack
        self.clip = clip
        self.cpu_threads = cpu_threads
        self.optimizer = torch.optim.AdamW(stack.parameters(), lr=lr, weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, inverse_sqrt_schedule(warmup))
        self.step = 0

    def train_step(self, tasks: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a fresh Gaussian batch with these task labels; returns per-width losses."""
        stack = self.stack
        x = torch.randn(len(tasks), stack.dim, generator=stack.generator, device=stack.device)
        loss = stack.loss_per_width(x, tasks)
        self.optimizer.zero_grad(set_to_none=False)
        loss.sum().backward()  # widths are independent: the sum's gradient is each one's own
        stack.clip_per_width_(self.clip)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        return loss.detach()

    def run(
        self,
        steps: int,
        sampler: TaskSampler,
        eval_every: int,
        on_eval: Callable[[int], None] | None = None,
    ) -> None:
        """``steps`` steps, calling ``on_eval(step)`` before the first, every ``eval_every`` and after the last."""
        with cpu_threads(self.cpu_threads if self.stack.device.type == "cpu" else None):
            if on_eval is not None and self.step == 0:
                on_eval(0)
            for done in range(1, steps + 1):
                self.train_step(sampler(self.step, self.stack.generator))
                if on_eval is not None and (self.step % eval_every == 0 or done == steps):
                    on_eval(self.step)


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (None: leave them), restoring the previous number."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
