"""Determinism on the CPU: the same seed gives the same stream, the same loss curve and the same weights;
a resumed run is bit-identical to an uninterrupted one; 2 data-parallel processes match 1 closely.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, TINY_TASKS, StopAt, quiet, tiny_config
from safetensors.torch import load_file

from smalllm import checkpoints as ckpt
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.run_record import RunDir, without_wall_clock
from smalllm.train.trainer import Trainer, train

# Micro-batches of 4 rows: one process accumulates two of them, two processes take one each, so the
# 1-process and 2-process runs see the same global batch of 8 split the same way.
DET_OVERRIDES = ("train.device=cpu", "train.micro_batch_size=4", "train.log_every=1")
STEPS = 32
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_cache) -> Path:
    """One uninterrupted single-process run; the other tests compare against it."""
    run_dir = tmp_path_factory.mktemp("determinism") / "run"
    assert train(tiny_config(run_dir, *DET_OVERRIDES), log=quiet)["steps"] == STEPS
    return run_dir


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def weights_file(run_dir: Path) -> Path:
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and latest.name == ckpt.checkpoint_name(STEPS)
    return latest / WEIGHTS


# ----------------------------------------------------------------------------------------------
# Stream
# ----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_stream(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", *DET_OVERRIDES)
    first = TaskStream(cfg.data, ensure_corpus(cfg.data, log=quiet), 8)
    second = TaskStream(cfg.data, ensure_corpus(cfg.data, log=quiet), 8)  # rebuilt from scratch
    other = tiny_config(tmp_path / "other", *DET_OVERRIDES, "data.seed=1")
    shifted = TaskStream(other.data, ensure_corpus(other.data, log=quiet), 8)
    fields = ("input_ids", "task_ids", "answer_mask", "loss_mask")
    for step in (0, 1, 7, 31, 1000):
        a, b = first.batch(step), second.batch(step)
        for name in fields:
            np.testing.assert_array_equal(
                getattr(a, name), getattr(b, name), err_msg=f"{name} of step {step}"
            )
        # Data-parallel ranks take disjoint halves that together are the global batch.
        halves = [first.batch(step, rank, 2) for rank in (0, 1)]
        for name in fields:
            np.testing.assert_array_equal(
                np.concatenate([getattr(h, name) for h in halves]), getattr(a, name)
            )
        assert not np.array_equal(a.input_ids, shifted.batch(step).input_ids), "data.seed must matter"
    # Seeking is exact: batch 7 is the same whether or not batches 0-6 were drawn first.
    fresh = TaskStream(cfg.data, ensure_corpus(cfg.data, log=quiet), 8)
    np.testing.assert_array_equal(fresh.batch(7).input_ids, first.batch(7).input_ids)
    assert [s.instances for s in first.eval_sets()] == [s.instances for s in second.eval_sets()]


# ----------------------------------------------------------------------------------------------
# Loss curve and weights
# ----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_loss_curve(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, *DET_OVERRIDES), log=quiet)
    want, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want, "loss curves of two runs with the same seed differ"
    grad_norms = [[r["grad_norm"] for r in records(d, "train")] for d in (reference, run_dir)]
    assert grad_norms[0] == grad_norms[1]
    assert [without_wall_clock(r) for r in records(run_dir, "eval")] == [
        without_wall_clock(r) for r in records(reference, "eval")
    ]
    assert weights_file(run_dir).read_bytes() == weights_file(reference).read_bytes()


def test_other_model_seed_changes_the_curve(tmp_path: Path, reference: Path) -> None:
    """The comparison above is sensitive: another train.seed gives another curve."""
    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, *DET_OVERRIDES, "train.seed=1", "eval.enabled=false"), log=quiet)
    assert losses(run_dir)[1] != losses(reference)[1]


def test_resume_is_bit_identical(tmp_path: Path, reference: Path) -> None:
    cfg = tiny_config(tmp_path / "run", *DET_OVERRIDES)
    trainer = Trainer(cfg, log=quiet)
    trainer.callbacks.insert(0, StopAt(13))
    assert trainer.fit()["status"] == "interrupted"
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").name == ckpt.checkpoint_name(13)

    summary = train(cfg, resume=True, log=quiet)
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert losses(tmp_path / "run") == losses(reference)
    assert weights_file(tmp_path / "run").read_bytes() == weights_file(reference).read_bytes()
    # Every metrics line (train and eval records, in order) as the uninterrupted run wrote it.
    assert [without_wall_clock(r) for r in RunDir(tmp_path / "run").read_metrics()] == [
        without_wall_clock(r) for r in RunDir(reference).read_metrics()
    ]


def test_resume_inside_a_logging_window_is_bit_identical(tmp_path: Path) -> None:
    """train.log_every=3 does not divide the stop step 13: the resumed run must finish the window
    (loss mean, per-label sums) that the stopped one opened, and log what an uninterrupted run logs."""
    overrides = (*DET_OVERRIDES, "train.log_every=3", "train.checkpoint_every=4")
    reference = tmp_path / "reference"
    train(tiny_config(reference, *overrides), log=quiet)
    cfg = tiny_config(tmp_path / "run", *overrides)
    trainer = Trainer(cfg, log=quiet)
    trainer.callbacks.insert(0, StopAt(13))
    assert trainer.fit()["status"] == "interrupted"
    assert train(cfg, resume=True, log=quiet)["status"] == "completed"
    assert [without_wall_clock(r) for r in RunDir(tmp_path / "run").read_metrics()] == [
        without_wall_clock(r) for r in RunDir(reference).read_metrics()
    ]
    assert weights_file(tmp_path / "run").read_bytes() == weights_file(reference).read_bytes()


# ----------------------------------------------------------------------------------------------
# 1 versus 2 data-parallel CPU processes (gloo)
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_two_cpu_processes(run_dir: Path) -> list[str]:
    """``accelerate launch`` of two CPU processes on this machine.

    ``--cpu --num_processes 2`` alone starts a single process (accelerate's multi-CPU path wants
    mpirun); ``--multi_gpu`` goes through torchrun, and with ``train.device=cpu`` the trainer's
    ``Accelerator(cpu=True)`` joins a gloo process group (DistributedType.MULTI_CPU).
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "smalllm.cli", "train", *TINY_OVERRIDES, *TINY_TASKS, *DET_OVERRIDES, f"run_dir={run_dir}",
    ]  # fmt: skip


def test_two_processes_match_one(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        accelerate_two_cpu_processes(run_dir), capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = weights_file(run_dir).parent
    assert torch.load(final / ckpt.STATE, weights_only=True)["world"] == 2
    environment = RunDir(run_dir).read_summary()["environment"]
    assert (environment["world_size"], environment["distributed_type"]) == (2, "MULTI_CPU")
    assert proc.stdout.startswith("device cpu, precision fp32, world size 2 (MULTI_CPU, sharding none)\n")

    one, two = losses(reference), losses(run_dir)
    assert sorted(two) == sorted(one)
    worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in one)
    a, b = load_file(str(weights_file(reference))), load_file(str(weights_file(run_dir)))
    weight_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(
        f"\n1 vs 2 processes: max relative loss difference {worst:.3g}, max weight difference {weight_diff:.3g}"
    )
    assert worst <= 1e-4
    assert weight_diff <= 1e-4
