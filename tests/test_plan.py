"""Numbers derived before training: learning-rate schedules, the run plan, the memory estimate (against
a measured training step) and a sweep cell's cost estimate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest

from smalllm.config import RunConfig, load_config
from smalllm.errors import SmalllmError
from smalllm.model.presets import PRESETS
from smalllm.sweep.estimates import estimate_cell
from smalllm.sweep.grid import parse_sweep
from smalllm.train.memory import estimate_memory
from smalllm.train.plan import make_plan
from smalllm.train.schedule import lr_factor

MIB = 1024**2


def config(*overrides: str) -> RunConfig:
    return load_config(None, list(overrides))


# ---------------------------------------------------------------------------------------------- schedules

TOTAL = 100
"""Steps of the schedules below: warmup 10 steps (0.1), wsd decay 20 steps (0.2), floor 0.1."""


def factors(schedule: str, steps: list[int]) -> list[float]:
    train = config(
        f"train.schedule={schedule}",
        "train.warmup_fraction=0.1",
        "train.decay_fraction=0.2",
        "train.min_lr_ratio=0.1",
    ).train
    return [lr_factor(step, TOTAL, train) for step in steps]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_every_schedule_warms_up_linearly_to_the_peak_at_the_last_warmup_step(schedule):
    assert factors(schedule, [0, 4, 9]) == pytest.approx([0.1, 0.5, 1.0])


@pytest.mark.parametrize(
    "schedule, values",
    [
        # step:      10 (first after warmup)  54 (halfway through decay)  99 (last)  150 (past the end)
        ("cosine", [0.1 + 0.45 * (1 + math.cos(math.pi / 90)), 0.55, 0.1, 0.1]),
        ("linear", [1 - 0.9 / 90, 0.55, 0.1, 0.1]),
        ("constant", [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_decay_after_warmup_ends_at_the_floor(schedule, values):
    assert factors(schedule, [10, 54, 99, 150]) == pytest.approx(values)


def test_wsd_holds_the_peak_then_decays_linearly_over_its_last_fifth():
    stable = factors("wsd", [10, 50, 79])
    decay = factors("wsd", [80, 89, 99, 150])
    assert stable == [1.0, 1.0, 1.0]
    assert decay == pytest.approx([1 - 0.9 / 20, 1 - 0.9 * 10 / 20, 0.1, 0.1])


def test_no_warmup_starts_the_decay_at_step_zero():
    train = config("train.schedule=linear", "train.warmup_fraction=0", "train.min_lr_ratio=0").train
    assert [lr_factor(s, 10, train) for s in (0, 4, 9)] == pytest.approx([0.9, 0.5, 0.0])


# ---------------------------------------------------------------------------------------------- plan

# micro-w32: 4 layers, width 32, 2 heads, SwiGLU 128; byte tokenizer: 258 tokens.
NON_EMBEDDING = 4 * (4 * 32 * 32 + 3 * 32 * 128)  # 65,536
PLAN_CFG = [
    "model.preset=micro-w32",
    "data.seq_len=64",
    "data.tokenizer.kind=byte",
    "train.global_batch_size=32",
    "train.micro_batch_size=4",
    "train.max_tokens=10000",
    "train.device=cpu",
    "train.precision=fp32",
]


def test_plan_of_a_known_config():
    plan = make_plan(config(*PLAN_CFG), world=2)
    assert (plan.vocab_size, plan.device, plan.precision) == (258, "cpu", "fp32")
    assert plan.accumulation == 4  # 32 rows = 2 processes x 4 micro-batches of 4
    assert plan.tokens_per_step == 32 * 64 == 2048
    assert plan.steps == 5 and plan.total_tokens == 10240  # ceil(10000 / 2048) steps
    assert plan.params == NON_EMBEDDING + 2 * 258 * 32 == 82048
    # 6 x (blocks + LM head) + attention scores 12 x layers x width x context
    assert plan.flops_per_token == 6 * (NON_EMBEDDING + 258 * 32) + 12 * 4 * 32 * 64 == 541056
    n, per_layer = 82048, 4 * 64 * (10 * 32 + 6 * 128)
    m = plan.memory
    assert (m.parameters, m.gradients, m.optimizer) == (4 * n, 4 * n, 8 * n)
    assert m.activations == 4 * 4 * per_layer == 4456448
    assert m.logits == 3 * 4 * 64 * 258 * 4 == 792576


def test_plan_refuses_a_batch_that_processes_cannot_share():
    # 32 rows cannot be split evenly among 3 processes, whatever the micro-batch.
    with pytest.raises(SmalllmError) as refused:
        make_plan(config(*PLAN_CFG), world=3)
    assert str(refused.value) == (
        "train.global_batch_size: 32 cannot be divided among 3 processes "
        "(it must be a multiple of the process count)"
    )
    # 48 rows over 2 processes are 24 each; a micro-batch of 16 (it divides 48) does not divide 24.
    with pytest.raises(SmalllmError) as refused:
        make_plan(config(*PLAN_CFG, "train.global_batch_size=48", "train.micro_batch_size=16"), world=2)
    assert str(refused.value) == (
        "train.micro_batch_size: each process's share of the global batch (24 rows) is not a "
        "multiple of 16; pick a micro_batch_size that divides 24"
    )


def test_micro_batch_is_capped_at_each_processes_share():
    # 32 rows over 8 processes: 4 each, in one pass, whatever micro_batch_size (a cap) says.
    plan = make_plan(config(*PLAN_CFG, "train.micro_batch_size=32"), world=8)
    assert (plan.micro_batch, plan.accumulation) == (4, 1)
    plan = make_plan(config(*PLAN_CFG, "train.micro_batch_size=2"), world=8)
    assert (plan.micro_batch, plan.accumulation) == (2, 2)


def test_memory_estimate_terms():
    p = PRESETS["micro-w32"]
    n = p.params(258)
    base = estimate_memory(p, 258, 64, 4, "fp32")
    per_layer = 4 * 64 * (10 * 32 + 6 * 128)
    assert (base.parameters, base.working, base.gradients, base.optimizer) == (4 * n, 0, 4 * n, 8 * n)
    # Unsharded bf16 autocast keeps a 2-byte copy of every weight and halves activations.
    half = estimate_memory(p, 258, 64, 4, "bf16")
    assert (half.parameters, half.working) == (4 * n, 2 * n)
    assert half.activations == base.activations / 2
    # Full sharding splits the fp32 state; only the gathered units (root + two layers) are in bf16.
    layer = 4 * 32 * 32 + 3 * 32 * 128
    sharded = estimate_memory(p, 258, 64, 4, "bf16", world=2, sharding="full_shard")
    assert (sharded.parameters, sharded.gradients, sharded.optimizer) == (2 * n, 2 * n, 4 * n)
    assert sharded.working == 2 * (2 * 258 * 32 + 2 * layer)
    # SHARD_GRAD_OP keeps every weight gathered from forward to backward.
    grad_op = estimate_memory(p, 258, 64, 4, "bf16", world=2, sharding="shard_grad_op")
    assert (grad_op.parameters, grad_op.working, grad_op.optimizer) == (2 * n, 2 * n, 4 * n)
    # Recompute keeps each layer's input and one layer's activations.
    ckpt = estimate_memory(p, 258, 64, 4, "fp32", gradient_checkpointing=True)
    assert ckpt.activations == 4 * (4 * 4 * 64 * 32 + per_layer)
    # Eager attention keeps scores and probabilities, 2 x batch x heads x context^2 per layer.
    eager = estimate_memory(p, 258, 64, 4, "fp32", attention="eager")
    assert eager.activations - base.activations == 4 * 4 * 2 * 4 * 2 * 64 * 64


MEASURE = """
import json, resource, sys

import torch
import torch.nn.functional as F
from smalllm.config import ModelConfig
from smalllm.model.build import build_model

torch.set_num_threads(1)
preset, vocab, seq_len, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open("/proc/self/statm") as fh:
    baseline = int(fh.read().split()[1]) * resource.getpagesize()
torch.manual_seed(0)
model = build_model(ModelConfig(preset=preset), vocab, seq_len)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
ids = torch.randint(0, vocab, (batch, seq_len))
for _ in range(2):  # the second step runs with the optimizer state already allocated
    logits = model(input_ids=ids).logits
    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    del logits
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"baseline": baseline, "peak": peak}))
"""


def test_memory_estimate_is_within_30_percent_of_a_measured_training_step():
    # 20m at a short context: weights, Adam state and activations (what the estimate models) dwarf
    # the allocator's slack. The interpreter and torch imports are measured first and subtracted.
    preset, vocab, seq_len, batch = "20m", 8192, 64, 8
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEASURE), preset, str(vocab), str(seq_len), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(out.stdout)
    used = measured["peak"] - measured["baseline"]
    estimate = estimate_memory(PRESETS[preset], vocab, seq_len, batch, "fp32").total
    assert estimate > 300 * MIB
    assert abs(estimate - used) <= 0.3 * used, (
        f"estimated {estimate / MIB:.0f} MiB, measured {used / MIB:.0f} MiB"
    )


# ---------------------------------------------------------------------------------------------- sweep cell


def cell_cost(target: dict, *overrides: str):
    spec = parse_sweep({"grids": [{"model.preset": ["micro-w32"]}], "target": target})
    return estimate_cell(spec, config(*PLAN_CFG, *overrides))


def test_cell_estimate_on_a_gpu_target():
    est = cell_cost({"device": "gpu", "gpu": "H100", "gpus_per_cell": 8, "mfu": 0.5, "overhead_s": 30})
    flops = 541056 * 10240  # FLOPs per token x tokens of the 5 steps
    assert (est.params, est.tokens, est.flops) == (82048, 10240, flops)
    seconds = flops / (989e12 * 8 * 0.5) + 30  # H100 peak from the device table
    assert est.seconds == pytest.approx(seconds)
    assert est.gpu_hours == pytest.approx(seconds * 8 / 3600)
    assert est.device == "8xH100"


def test_cell_estimate_on_the_cpu():
    est = cell_cost(
        {"device": "cpu", "peak_flops": 2e11, "mfu": 0.25, "overhead_s": 5}, "train.num_threads=3"
    )
    assert est.seconds == pytest.approx(541056 * 10240 / (2e11 * 0.25) + 5)
    assert est.gpu_hours is None and est.device == "cpu x3"


def test_a_peak_measured_by_bench_is_what_mfu_is_against(tmp_path, monkeypatch):
    from smalllm.train.plan import CPU_PEAK_FILE, cpu_peak_flops, default_peak_flops, record_cpu_peak

    monkeypatch.setenv("SMALLLM_CACHE", str(tmp_path))
    nominal, source = cpu_peak_flops()
    assert source.startswith("nominal") and nominal == default_peak_flops("cpu")
    assert record_cpu_peak(123e9, 150e9) == tmp_path / CPU_PEAK_FILE
    peak, source = cpu_peak_flops()
    assert peak == 123e9 == default_peak_flops("cpu") and source.startswith("measured by make bench")
    plan = make_plan(load_config(None, ["model.preset=micro-w32", "train.device=cpu"]))
    assert plan.peak_flops == 123e9 and "measured by make bench" in plan.describe()
    # A damaged file is the nominal figure again, not an error.
    (tmp_path / CPU_PEAK_FILE).write_text("{not json")
    assert cpu_peak_flops()[0] == nominal
