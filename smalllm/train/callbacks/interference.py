"""Gradient interference between a rare task and the rest of the batch (Huang et al. 2026, Fig. 9).

At a measured step the batch gradient is split by the targets it comes from, g = g_t + g_nt (the
task's tokens, and everything else: background and other tasks), and compared with the task's
reference direction g_r, the gradient of its mean answer-token loss over a fixed sample of its
training instances. In small models the paper finds cos(g_nt, g_r) clearly away from zero (the rest
of the data pushes along, or against, the task's direction), in large ones near zero.

What is measured at step ``s`` is the gradient of optimizer step ``s + 1``: its batch, at the weights
after ``s`` steps, before clipping (so step 0 is measured at the start of the run). The measurement
uses ``torch.autograd.grad`` and a forked RNG, so a run with it trains bit for bit as one without it.

One ``kind: "interference"`` record per measured step, with, for task ``T`` and each module set ``S``:

* ``interference/T/S/cos`` = cos(g, g_r), ``…/cos_nt`` = cos(g_nt, g_r), ``…/cos_t`` = cos(g_t, g_r)
  (null when a vector is zero: no task token in the batch gives g_t = 0);
* ``…/norm``, ``…/norm_nt``, ``…/norm_t``, ``…/norm_r``: the L2 norms over the set;
* ``interference/T/task_tokens`` (task targets in the batch), ``interference/T/instances`` (the task's
  instances in the batch), ``interference/T/reference_tokens``, and ``interference_s`` (seconds).

Module sets: ``all`` (every parameter), ``mlp{L}`` (every parameter of block L's MLP) and
``mlp{L}_top{K}``: the K neurons of that MLP whose reference gradient is largest, neuron ``i`` being
its input rows (gate and up, or ``c_fc``), input bias entry and output column (see
:mod:`smalllm.model.mlp`), ranked by the L2 norm of g_r over those entries, afresh at each
measurement (their indices are in ``…/neurons``).

Cost of one measurement: per micro-batch one forward and two backward passes (one when it holds no
task token), about 5/3 of a training step's compute, plus one forward and backward pass over the
reference instances' tokens (1,000 T_CMP instances are at most 3,000 input tokens, 1.5 batches of the
default config) and, under DDP, one all-reduce of three gradient copies; memory: at the peak about six
fp32 copies of the measured parameters' gradients (g_t, g_nt, g_r and their concatenation). Measured once (default config: micro-w64, seq_len 64, batch
32; CPU, 1 thread, on a shared 2-core machine at load 5, so read the ratios): a training step 272 ms,
the split 452 ms (1.7 steps), split and reference gradient over 1,000 T_CMP instances 838 ms (3.1
steps). Nothing runs when ``interference.enabled`` is false: the callback is not built.
"""

from __future__ import annotations

import time

import torch

from smalllm.labels import SEP
from smalllm.model.mlp import in_mlp, neuron_axis
from smalllm.tasks.base import Instance
from smalllm.train.callbacks.base import Callback, Control, FitEnd, GradientSplit, RunContext, StepRecord
from smalllm.train.config import InterferenceConfig

KIND = "interference"
"""The ``kind`` of the records and the first segment of their keys."""


def cosine(a: float, b: float, dot: float) -> float | None:
    """cos from two squared norms and a dot product; None when either vector is zero."""
    if a <= 0 or b <= 0:
        return None
    return max(-1.0, min(1.0, dot / (a**0.5 * b**0.5)))


def set_statistics(g_t: list[torch.Tensor], g_nt: list[torch.Tensor], g_r: list[torch.Tensor]) -> dict:
    """Cosines with g_r and norms of g = g_t + g_nt, g_nt, g_t and g_r over one parameter set (each
    list holds the set's tensors, in the same order)."""
    sums = torch.zeros(7, dtype=torch.float64, device=g_r[0].device if g_r else None)
    for t, nt, r in zip(g_t, g_nt, g_r, strict=True):
        t, nt, r = t.flatten().double(), nt.flatten().double(), r.flatten().double()
        g = t + nt
        sums += torch.stack([g @ g, nt @ nt, t @ t, r @ r, g @ r, nt @ r, t @ r])
    gg, nn, tt, rr, gr, nr, tr = sums.tolist()
    return {
        "cos": cosine(gg, rr, gr),
        "cos_nt": cosine(nn, rr, nr),
        "cos_t": cosine(tt, rr, tr),
        "norm": gg**0.5,
        "norm_nt": nn**0.5,
        "norm_t": tt**0.5,
        "norm_r": rr**0.5,
    }


def top_neurons(reference: dict[str, torch.Tensor], layer: int, k: int) -> tuple[list[int], dict[str, int]]:
    """The ``k`` neurons of block ``layer``'s MLP with the largest L2 norm of ``reference`` over their
    entries (see the module docstring), highest first; and the neuron axis of each parameter read."""
    axes = {
        name: axis for name in reference if in_mlp(name, layer) and (axis := neuron_axis(name)) is not None
    }
    if not axes:
        raise ValueError(f"interference.layer: block {layer} has no MLP parameter this code knows")
    score = sum(
        reference[name].double().pow(2).sum(dim=[d for d in range(reference[name].ndim) if d != axis])
        for name, axis in axes.items()
    )
    assert isinstance(score, torch.Tensor)
    order = torch.argsort(score, descending=True, stable=True)[:k]
    return order.tolist(), axes


class InterferenceCallback(Callback):
    """Measures cos(g, g_r), cos(g_nt, g_r) and cos(g_t, g_r) (see the module docstring) every
    ``every_steps`` steps and, with ``at_injections``, at each step whose batch holds the task's
    instances. The last measured step is checkpointed, so a resumed run neither repeats nor skips one.
    Contributes ``interference_seconds`` and ``interference_measurements`` to the summary."""

    def __init__(self, cfg: InterferenceConfig) -> None:
        self.cfg = cfg
        self.run: RunContext | None = None
        self.task = ""
        self.task_index = 0
        self.labels: list[int] = []
        self.reference: list[Instance] = []
        self.prefix: tuple[int, ...] = ()
        self.last_step: int | None = None
        self.restored = False
        self.seconds = 0.0
        self.measurements = 0

    def state_dict(self, run: RunContext) -> dict:
        return {"last_step": -1 if self.last_step is None else self.last_step}

    def load_state_dict(self, state: dict, run: RunContext) -> None:
        self.last_step = int(state["last_step"])
        self.restored = True

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        if run.batch_instances is None or run.reference_instances is None:
            raise ValueError("interference: this trainer offers no batch or reference instances")
        self.run = run
        eval_sets = run.eval_sets()
        tasks = [es.task for es in eval_sets]
        self.task = self.cfg.task_of(tasks)
        self.task_index = tasks.index(self.task)
        self.labels = [i for i, label in enumerate(run.labels) if i > 0 and label.task == self.task]
        self.reference = run.reference_instances(self.task_index, self.cfg.reference_size)
        # Scored where training put the task (a row's start, or after an <eod>), as the evaluator does.
        self.prefix = tuple(eval_sets[self.task_index].prefix)
        control.log(
            f"interference: task {self.task}, {len(self.reference)} reference instances, "
            f"sets {', '.join(self.set_names())}"
        )
        done = self.last_step == run.start_step if self.restored else run.resumed
        if not done:
            self._maybe_measure(run.start_step, run.start_tokens, control)

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        self._maybe_measure(record.step, record.tokens, control)

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        if self.run is not None:
            control.add_summary(
                interference_seconds=self.seconds, interference_measurements=self.measurements
            )

    def set_names(self) -> list[str]:
        """The key segment of each configured module set."""
        names = {
            "all": "all",
            "mlp": f"mlp{self.cfg.layer}",
            "top_k": f"mlp{self.cfg.layer}_top{self.cfg.top_k}",
        }
        return [names[s] for s in self.cfg.module_sets]

    def due(self, step: int) -> bool:
        """Whether step ``step``'s measurement is on the schedule (the same on every process)."""
        assert self.run is not None
        if step >= self.run.total_steps:
            return False  # no step follows the last one
        cfg = self.cfg
        if cfg.every_steps and step % cfg.every_steps == 0:
            return True
        return cfg.at_injections and self.run.batch_instances(step)[self.task_index] > 0

    def _maybe_measure(self, step: int, tokens: int, control: Control) -> None:
        # A requested stop ends the run before that step: nothing left to measure.
        if control.stop_reason is not None or not self.due(step):
            return
        self.measure(step, tokens, control)
        self.last_step = step

    def measure(self, step: int, tokens: int, control: Control) -> None:
        """Measure at ``step`` and write its record (on every process: the measurement is collective)."""
        assert self.run is not None
        cfg = self.cfg
        t0 = time.perf_counter()
        select = None if "all" in cfg.module_sets else (lambda name: in_mlp(name, cfg.layer))
        split = control.gradient_split(self.labels, self.reference, self.prefix, select)
        record: dict = {"kind": KIND, "step": step, "tokens": tokens}
        base = f"{KIND}{SEP}{self.task}{SEP}"
        for kind, key in zip(cfg.module_sets, self.set_names(), strict=True):
            stats, neurons = self._statistics(kind, split)
            record.update({f"{base}{key}{SEP}{name}": value for name, value in stats.items()})
            if neurons is not None:
                record[f"{base}{key}{SEP}neurons"] = neurons
        record[f"{base}task_tokens"] = split.task_tokens
        record[f"{base}instances"] = self.run.batch_instances(step)[self.task_index]
        record[f"{base}reference_tokens"] = split.reference_tokens
        seconds = time.perf_counter() - t0
        record.update(interference_s=seconds, time=time.time())
        self.seconds += seconds
        self.measurements += 1
        control.write_metrics(record)

    def _statistics(self, kind: str, split: GradientSplit) -> tuple[dict, list[int] | None]:
        cfg = self.cfg
        if kind == "all":
            names = list(split.reference)
        else:
            names = [n for n in split.reference if in_mlp(n, cfg.layer)]
        if kind != "top_k":
            pick = (
                [split.task[n] for n in names],
                [split.other[n] for n in names],
                [split.reference[n] for n in names],
            )
            return set_statistics(*pick), None
        neurons, axes = top_neurons(split.reference, cfg.layer, cfg.top_k)
        index = torch.tensor(neurons, device=next(iter(split.reference.values())).device)
        parts = (
            [g[n].index_select(axis, index) for n, axis in axes.items()]
            for g in (split.task, split.other, split.reference)
        )
        return set_statistics(*parts), neurons
