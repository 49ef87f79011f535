"""The interference callback (Huang et al. 2026, Fig. 9): the g_t/g_nt split is the trainer's
gradient, the reference gradient is the task loss's, the measurement leaves training bit-identical,
resumes without repeating a record, works under DDP, and its config refuses bad values in one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import StopAt, quiet, tiny_config
from test_determinism import DET_OVERRIDES, accelerate_two_cpu_processes

from smalllm.config import RunConfig, load_config
from smalllm.errors import ConfigError
from smalllm.model.build import build_model
from smalllm.model.mlp import in_mlp, neuron_axis
from smalllm.train.callbacks.interference import set_statistics, top_neurons
from smalllm.train.config import InterferenceConfig
from smalllm.train.loss import next_token_targets, to_device, token_losses
from smalllm.train.trainer import Trainer, train

ON = ("interference.enabled=true", "interference.every_steps=4", "interference.top_k=4")


def records(run_dir: Path, kind: str = "interference") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def task_labels(trainer: Trainer, task: str) -> list[int]:
    return [i for i, label in enumerate(trainer.stream.labels) if i > 0 and label.task == task]


def test_split_sums_to_the_trainers_gradient(tmp_path: Path) -> None:
    """g_t + g_nt is the gradient the next step takes (accumulated over 2 micro-batches, before
    clipping), and the call leaves every .grad as it was."""
    cfg = tiny_config(tmp_path / "run", "train.micro_batch_size=4", "eval.enabled=false")
    trainer = Trainer(cfg, log=quiet)
    trainer.open_run()
    trainer.run_step()  # not at initialisation: some training first
    model = trainer.unwrapped_model
    assert all(p.grad is None for p in model.parameters())
    labels = task_labels(trainer, "t_cmp")
    split = trainer.control.gradient_split(labels, trainer.stream.reference_instances(0, 8))
    assert all(p.grad is None for p in model.parameters())
    assert split.task_tokens > 0
    batch = trainer.stream.batch(trainer.step)
    assert split.task_tokens == int(np.isin(batch.task_ids[:, 1:], labels).sum())

    seen: dict[str, torch.Tensor] = {}
    clip = trainer._clip

    def capture() -> torch.Tensor:  # the trainer's own gradient, just before clipping
        seen.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        return clip()

    trainer._clip = capture
    trainer.run_step()
    worst = max(float((split.task[n] + split.other[n] - seen[n]).abs().max()) for n in seen)
    assert worst <= 1e-6, worst
    assert any(float(g.abs().max()) > 0 for g in split.task.values())
    assert any(float(g.abs().max()) > 0 for g in split.other.values())


def test_split_matches_a_direct_computation_of_the_trainers_loss(tmp_path: Path) -> None:
    """The same identity without the optimizer: one backward of the trainer's loss over the batch."""
    cfg = tiny_config(tmp_path / "run", "eval.enabled=false")
    trainer = Trainer(cfg, log=quiet)
    model = trainer.unwrapped_model
    split = trainer.control.gradient_split(task_labels(trainer, "copy"), [])
    batch = trainer.stream.batch(0)
    ids = to_device(batch.input_ids, torch.device("cpu"))
    token_loss = token_losses(model(input_ids=ids).logits, next_token_targets(ids, batch.loss_mask))
    (token_loss.sum() / int(batch.loss_mask[:, 1:].sum())).backward()
    for name, p in model.named_parameters():
        assert float((split.task[name] + split.other[name] - p.grad).abs().max()) <= 1e-6, name
    assert split.reference_tokens == 0 and all(float(g.abs().max()) == 0 for g in split.reference.values())


def test_reference_gradient_matches_a_direct_computation(tmp_path: Path) -> None:
    """g_r is the gradient of the mean answer-token loss of the reference instances, each one scored
    alone as prefix + prompt + answer (computed here instance by instance)."""
    cfg = tiny_config(tmp_path / "run", "eval.enabled=false")
    trainer = Trainer(cfg, log=quiet)
    model = trainer.unwrapped_model
    reference = trainer.stream.reference_instances(1, 12)  # copy: several answer tokens each
    assert len(reference) == 12 and len({id(i) for i in reference}) == 12
    prefix = (trainer.stream.eod,)
    split = trainer.control.gradient_split(task_labels(trainer, "copy"), reference, prefix)

    total, count = torch.zeros(()), 0
    for inst in reference:
        seq = torch.tensor([[*prefix, *inst.prompt, *inst.answer]])
        logits = model(input_ids=seq[:, :-1]).logits[0]
        start = len(prefix) + len(inst.prompt) - 1
        answer = logits[start : start + len(inst.answer)]
        total = total + F.cross_entropy(answer, torch.tensor(inst.answer), reduction="sum")
        count += len(inst.answer)
    direct = torch.autograd.grad(total / count, list(model.parameters()))
    assert split.reference_tokens == count
    for (name, _), g in zip(model.named_parameters(), direct, strict=True):
        assert float((split.reference[name] - g).abs().max()) <= 1e-6, name


def test_reference_instances_are_fixed_and_distinct(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path / "run", "eval.enabled=false"), log=quiet)
    stream = trainer.stream
    first = stream.reference_instances(0, 50)
    assert [i.key for i in first] == [i.key for i in stream.reference_instances(0, 50)]
    assert len({i.key for i in first}) == 50
    whole = stream.reference_instances(0, None)  # the finite pool's whole train part
    assert len(whole) == len(stream.families[0].pools[0].train)
    assert len(stream.reference_instances(0, 10**6)) == len(whole)  # no repeats past its end
    assert sum(stream.batch_instances(s)[1] for s in range(8)) == int(stream.families[1].rule.count(64))


def test_callback_on_and_off_train_identical_weights(tmp_path: Path) -> None:
    """The measurement leaves weights, optimizer and RNG alone: bit-identical final weights (t_cmp is
    in every batch here, so every one of the 16 steps is measured)."""
    states = []
    for name, extra in (("off", ()), ("on", ON)):
        cfg = tiny_config(tmp_path / name, "eval.enabled=false", "train.max_tokens=4096", *extra)
        trainer = Trainer(cfg, log=quiet)
        summary = trainer.fit()
        states.append({k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()})
        if name == "on":
            measured = records(tmp_path / name)
            assert summary["interference_measurements"] == len(measured) == trainer.total_steps
    off, on = states
    assert off.keys() == on.keys()
    assert all(torch.equal(off[k], on[k]) for k in off)
    record = measured[0]
    assert record["step"] == 0
    for key in ("all", "mlp0", "mlp0_top4"):
        for stat in ("cos", "cos_nt", "cos_t", "norm", "norm_nt", "norm_t", "norm_r"):
            assert f"interference/t_cmp/{key}/{stat}" in record
    assert len(record["interference/t_cmp/mlp0_top4/neurons"]) == 4


def test_schedule_injections_and_resume(tmp_path: Path) -> None:
    """A gap task is measured exactly at the batches that hold its instances (plus every_steps), and a
    run stopped and resumed writes the same steps, once each."""
    gap = [
        "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32,"
        " schedule: {kind: gap, gap_batches: 8}}]",
        "eval.enabled=false",
        "train.checkpoint_every=0",
        "interference.enabled=true",
        "interference.every_steps=16",
        "interference.module_sets=[mlp]",
    ]
    whole = tmp_path / "whole"
    trainer = Trainer(tiny_config(whole, *gap), log=quiet)
    trainer.fit()
    expected = sorted(
        {s for s in range(trainer.total_steps) if trainer.stream.batch_instances(s)[0] > 0 or s % 16 == 0}
    )
    steps = [r["step"] for r in records(whole)]
    assert steps == expected and any(s % 16 for s in steps)  # injections off the every_steps grid
    assert set(records(whole)[0]) >= {"interference/t_cmp/mlp0/cos_nt", "interference/t_cmp/instances"}

    parts = tmp_path / "parts"
    cfg = tiny_config(parts, *gap)
    stopped = Trainer(cfg, log=quiet)
    stopped.callbacks.append(StopAt(8))  # step 8 is an injection: measured before the checkpoint
    stopped.fit()
    train(cfg, resume=True, log=quiet)
    assert [r["step"] for r in records(parts)] == expected


def test_two_processes_measure_what_one_does(tmp_path: Path) -> None:
    """Under DDP (2 CPU processes, gloo) the split is all-reduced like the trainer's gradient and the
    reference shared out: the same cosines as the single-process run of the same global batch."""
    extra = [*ON, "eval.enabled=false"]
    one = tmp_path / "one"
    train(tiny_config(one, *DET_OVERRIDES, *extra), log=quiet)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [*accelerate_two_cpu_processes(two), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = records(one), records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            if key.startswith("interference/") and isinstance(value, float):
                assert rb[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
                worst = max(worst, abs(rb[key] - value))
            elif key.startswith("interference/") and not key.endswith("/neurons"):
                assert rb[key] == value, key
    print(f"\n1 vs 2 processes: {len(a)} measurements, max difference of a cosine or norm {worst:.3g}")


def test_neuron_axes_cover_every_architecture() -> None:
    for arch in ("olmo", "llama", "gpt2", "gpt_neox"):
        cfg = load_config(
            None,
            [f"model.arch={arch}", "model.preset=null", "model.num_layers=2", "model.hidden_size=32"]
            + ["model.num_heads=2", "model.intermediate_size=48"],
        )
        model = build_model(cfg.model, vocab_size=100, max_seq_len=32)
        names = {n: p for n, p in model.named_parameters() if in_mlp(n, 1)}
        axes = {n: neuron_axis(n) for n in names}
        assert len(names) >= 3 and all(not in_mlp(n, 0) for n in names), arch
        assert all(names[n].shape[a] == 48 for n, a in axes.items() if a is not None), arch
        assert sum(a is not None for a in axes.values()) >= 2, arch


def test_top_neurons_and_statistics_by_hand() -> None:
    up = torch.zeros(6, 3)
    up[4] = 3.0  # neuron 4: largest reference gradient, then neuron 1 (through the down column)
    down = torch.zeros(3, 6)
    down[:, 1] = 2.0
    reference = {"model.layers.0.mlp.up_proj.weight": up, "model.layers.0.mlp.down_proj.weight": down}
    neurons, axes = top_neurons(reference, 0, 2)
    assert neurons == [4, 1] and axes == {n: a for n, a in zip(reference, (0, 1), strict=True)}
    r = [torch.tensor([1.0, 0.0])]
    stats = set_statistics([torch.tensor([0.0, 0.0])], [torch.tensor([-1.0, 1.0])], r)
    assert stats["cos_t"] is None and stats["cos_nt"] == pytest.approx(-(0.5**0.5))
    assert stats["cos"] == stats["cos_nt"] and stats["norm_r"] == 1.0 and stats["norm_t"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["interference.every_steps=-1"], r"^interference\.every_steps: must be >= 0, got -1$"),
        (["interference.reference_size=0"], r"^interference\.reference_size: must be >= 1, got 0$"),
        (["interference.top_k=0"], r"^interference\.top_k: must be >= 1, got 0$"),
        (["interference.layer=-1"], r"^interference\.layer: must be >= 0, got -1$"),
        (["interference.module_sets=[all, mlps]"], r"^interference\.module_sets\.1: 'mlps' is not one of"),
        (["interference.module_sets=[]"], r"^interference\.module_sets: must list some of all, mlp, top_k$"),
        (["interference.module_sets=[mlp, mlp]"], r"^interference\.module_sets: lists a set twice$"),
        (["interference.task=' '"], r"^interference\.task: must name a task or be null$"),
        (
            ["interference.enabled=true", "interference.every_steps=0", "interference.at_injections=false"],
            r"^interference\.every_steps: 0 with at_injections=false: nothing would be measured$",
        ),
        (
            ["interference.enabled=true", "interference.task=t_cmq"],
            r"^interference\.task: 't_cmq' is not in data\.tasks \(t_cmp, t_add, addition\) \(did you mean 't_cmp'\?\)$",
        ),
        (
            ["interference.enabled=true", "interference.layer=9"],
            r"^interference\.layer: must be < the model's \d+ blocks, got 9$",
        ),
        (
            ["interference.enabled=true", "interference.top_k=100000"],
            r"^interference\.top_k: must be <= the MLP's \d+ neurons, got 100000$",
        ),
        (
            ["interference.enabled=true", "interference.task=addition", "data.tasks.2.pool=fresh"]
            + ["interference.reference_size=null"],
            r"^interference\.reference_size: null \(the whole train part\) needs a finite pool",
        ),
        (
            ["interference.enabled=true", "data.tasks=[]"],
            r"^interference\.enabled: needs a task in data\.tasks to measure$",
        ),
    ],
)
def test_config_refuses_bad_values_in_one_line_naming_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_disabled_is_the_default_and_builds_no_callback(tmp_path: Path) -> None:
    from smalllm.train.trainer import default_callbacks

    assert InterferenceConfig().enabled is False and RunConfig().interference.enabled is False
    names = {type(cb).__name__ for cb in default_callbacks(tiny_config(tmp_path / "r"))}
    assert "InterferenceCallback" not in names
    on = [type(cb).__name__ for cb in default_callbacks(tiny_config(tmp_path / "r", *ON))]
    assert on.index("InterferenceCallback") < on.index("Checkpointer")
