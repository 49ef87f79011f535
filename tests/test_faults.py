"""Fault injection: SIGKILL at random moments (also mid-checkpoint), SIGTERM/SIGINT, NaN losses, and
checkpoint validation (``latest_checkpoint`` never picks a partial or corrupt checkpoint).

The kill/resume and signal tests run ``smalllm train`` as real subprocesses on a CPU config of 96 steps
(more when more kill trials are asked for) with a checkpoint every 4 steps and a metrics record every 3
(so a resume usually lands inside a logging window), and compare the final weights, trainer state and
metrics (less wall-clock fields) with one uninterrupted in-process run.

``SMALLLM_KILL_TRIALS`` sets the number of kill -9 trials (default 5; the acceptance run uses 20).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, TINY_TASKS, quiet, tiny_config
from safetensors.torch import load_file

from smalllm import checkpoints as ckpt
from smalllm.cli import main
from smalllm.config import ModelConfig
from smalllm.model.build import build_model
from smalllm.run_record import RunDir, without_wall_clock
from smalllm.train import trainer as trainer_mod
from smalllm.train.callbacks.base import Callback, Control, StepRecord
from smalllm.train.trainer import Trainer, train

KILL_TRIALS = int(os.environ.get("SMALLLM_KILL_TRIALS", "5"))
# Each trial moves the run on by a few steps; more trials need a longer run to still be running.
TOTAL_STEPS = 96 * max(1, math.ceil(KILL_TRIALS / 5))
# Steps of 256 tokens, a checkpoint every 4 steps, a metrics record every 3 (not a divisor of 4), no
# evaluation (it cannot change the weights).
FAULT_OVERRIDES = (
    "train.device=cpu",
    f"train.max_tokens={256 * TOTAL_STEPS}",
    "train.checkpoint_every=4",
    "train.log_every=3",
    "eval.enabled=false",
)
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, corpus_cache) -> Path:
    """One uninterrupted run of the fault config (in-process); its final checkpoint is the reference."""
    run_dir = tmp_path_factory.mktemp("fault-reference") / "run"
    summary = train(tiny_config(run_dir, *FAULT_OVERRIDES), log=quiet)
    assert summary["status"] == "completed" and summary["steps"] == TOTAL_STEPS
    return run_dir


def final_weights(run_dir: Path) -> Path:
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and latest.name == ckpt.checkpoint_name(TOTAL_STEPS), latest
    return latest / WEIGHTS


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    """The final ``model.safetensors`` files are byte-for-byte equal (named tensors on failure)."""
    got, want = final_weights(run_dir), final_weights(reference)
    if got.read_bytes() != want.read_bytes():
        a, b = load_file(str(got)), load_file(str(want))
        differ = [k for k in b if not torch.equal(a[k], b[k])]
        pytest.fail(f"final weights differ from the uninterrupted run in {len(differ)} tensors: {differ[:5]}")


def assert_same_state(run_dir: Path, reference: Path) -> None:
    """The final trainer states (optimizer, schedule, RNG, stream position, ...) are equal."""
    got, want = (
        torch.load(final_weights(d).parent / ckpt.STATE, weights_only=True) for d in (run_dir, reference)
    )
    assert_equal_nested(got, want, "trainer_state")


def assert_equal_nested(got, want, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), f"{where} differs"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got, key=str) == sorted(want, key=str), (
            f"{where}: keys differ"
        )
        for key in want:
            assert_equal_nested(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{where}: lengths differ"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_equal_nested(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def assert_same_metrics(run_dir: Path, reference: Path) -> None:
    """metrics.jsonl equals the uninterrupted run's line for line, except wall-clock fields."""
    got, want = ([without_wall_clock(r) for r in RunDir(d).read_metrics()] for d in (run_dir, reference))
    assert [r["step"] for r in got] == [r["step"] for r in want], "logged steps differ"
    for g, w in zip(got, want):
        assert g == w, f"metrics record of step {w['step']} differs: {g} != {w}"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(want), "metrics.jsonl holds torn or extra lines"


def cli(run_dir: Path, *flags: str) -> list[str]:
    """Command line of a real ``smalllm train`` process on the fault config."""
    return [
        sys.executable, "-m", "smalllm.cli", "train", *flags,
        *TINY_OVERRIDES, *TINY_TASKS, *FAULT_OVERRIDES, f"run_dir={run_dir}",
    ]  # fmt: skip


def start(run_dir: Path, logs: Path, tag: str) -> subprocess.Popen:
    """Start training, resume it once it has a checkpoint, or start over (``--overwrite``) a run killed
    before its first checkpoint; output goes to files under ``logs``."""
    mode = RunDir(run_dir).restart_mode()
    flags = [f"--{mode}"] if mode else []
    logs.mkdir(exist_ok=True)
    with open(logs / f"{tag}.out", "w") as out, open(logs / f"{tag}.err", "w") as err:
        return subprocess.Popen(cli(run_dir, *flags), stdout=out, stderr=err)


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 120.0) -> bool:
    """Poll ``condition`` every millisecond; False if the process ended (or timed out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    return False


def tmp_dirs(root: Path) -> list[Path]:
    return sorted(root.glob(".tmp-*")) if root.is_dir() else []


def tmp_identities(root: Path) -> set[tuple[str, int, int]]:
    """(name, inode, mtime) of each temporary checkpoint directory; ones vanishing meanwhile are left out."""
    found = set()
    for path in tmp_dirs(root):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        found.add((path.name, st.st_ino, st.st_mtime_ns))
    return found


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


# ----------------------------------------------------------------------------------------------
# SIGKILL at random moments, then resume: bit-identical final weights
# ----------------------------------------------------------------------------------------------


def kill_condition(mode: str, run_dir: Path) -> Callable[[], bool]:
    """When to kill, judged against the run directory as it is before the process starts."""
    root = run_dir / "checkpoints"
    if mode == "checkpoint-write":
        # A temporary checkpoint directory made by this process, not a stale one left by an earlier kill
        # (the trainer recreates a stale directory of the same name: it gets a new identity).
        stale = tmp_identities(root)
        return lambda: bool(tmp_identities(root) - stale)
    if mode == "after-publish":
        # Right after a new checkpoint is renamed into place, while older ones may be being pruned.
        published = set(root.glob(f"{ckpt.PREFIX}*"))
        return lambda: bool(set(root.glob(f"{ckpt.PREFIX}*")) - published)
    # "random": once the training loop has logged something new (then a random delay).
    size = file_size(run_dir / "metrics.jsonl")
    return lambda: file_size(run_dir / "metrics.jsonl") > size


def test_sigkill_and_resume_is_bit_identical(tmp_path: Path, reference_run: Path) -> None:
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    root = run_dir / "checkpoints"
    rng = random.Random(20240607)
    modes = ["checkpoint-write", "random", "checkpoint-write", "after-publish", "random"]
    trials: list[dict] = []
    schedule = [modes[k % len(modes)] for k in range(KILL_TRIALS)]
    for i, mode in enumerate(schedule):
        condition = kill_condition(mode, run_dir)
        proc = start(run_dir, logs, f"trial{i}")
        hit = wait_for(proc, condition)
        if mode == "random":
            time.sleep(rng.uniform(0.0, 0.4))
        assert hit and proc.poll() is None, f"trial {i} ({mode}): the run ended before the kill; see {logs}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        latest = ckpt.latest_checkpoint(root)
        partial = [p.name for p in tmp_dirs(root)]
        # Whatever the moment, the latest checkpoint is complete and verified, never a partial one.
        assert latest is None or (
            latest.name.startswith(ckpt.PREFIX) and ckpt.verify_checkpoint(latest, True) is None
        )
        trials.append({"mode": mode, "latest": latest.name if latest else None, "partial": partial})
    mid_write = sum(1 for t in trials if t["mode"] == "checkpoint-write" and t["partial"])
    print(f"\n{len(trials)} kill/resume trials ({mid_write} killed mid-checkpoint-write):")
    for t in trials:
        print(f"  {t['mode']:<17} latest after kill: {t['latest']}, partial dirs left: {t['partial']}")
    assert len(trials) == KILL_TRIALS
    assert mid_write >= 1, "no kill landed during a checkpoint write"
    assert any(t["latest"] is not None for t in trials), "no trial got past the first checkpoint"

    final = start(run_dir, logs, "final")
    assert final.wait(timeout=300 + TOTAL_STEPS) == 0, (logs / "final.err").read_text()
    assert "Traceback" not in (logs / "final.err").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == TOTAL_STEPS
    assert tmp_dirs(root) == [], "stale temporary checkpoints are pruned"
    assert_same_weights(run_dir, reference_run)
    assert_same_state(run_dir, reference_run)
    assert_same_metrics(run_dir, reference_run)
    print(f"{KILL_TRIALS}/{KILL_TRIALS} kill -9 trials: final weights, trainer state and metrics identical")


# ----------------------------------------------------------------------------------------------
# SIGTERM / SIGINT: checkpoint, clean exit with status "interrupted", then --resume finishes
# ----------------------------------------------------------------------------------------------


def test_sigterm_and_sigint_stop_cleanly_and_resume(tmp_path: Path, reference_run: Path) -> None:
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    for sig in (signal.SIGTERM, signal.SIGINT):
        tag = sig.name.lower()
        proc = start(run_dir, logs, tag)
        size = file_size(run_dir / "metrics.jsonl")
        # A new metrics record means the training loop (and its signal handlers) is running.
        assert wait_for(proc, lambda s=size: file_size(run_dir / "metrics.jsonl") > s), (
            logs / f"{tag}.err"
        ).read_text()
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0
        out, err = (logs / f"{tag}.out").read_text(), (logs / f"{tag}.err").read_text()
        assert "Traceback" not in out + err, err
        assert f"stopped by {sig.name}" in out and "run interrupted" in out
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted" and 0 < summary["steps"] < TOTAL_STEPS, summary
        latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
        assert latest is not None and latest.name == ckpt.checkpoint_name(summary["steps"])
    final = start(run_dir, logs, "final")
    assert final.wait(timeout=300) == 0, (logs / "final.err").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_same_weights(run_dir, reference_run)
    assert_same_metrics(run_dir, reference_run)


# ----------------------------------------------------------------------------------------------
# NaN / inf loss
# ----------------------------------------------------------------------------------------------


def poison_loss_at(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """Make the training loss NaN at the given (0-based) optimizer steps (one micro-batch per step)."""
    real = trainer_mod.token_losses
    calls = {"n": 0}

    def lm_loss(logits, targets):
        loss = real(logits, targets)
        step, calls["n"] = calls["n"], calls["n"] + 1
        return loss * float("nan") if step in steps else loss

    monkeypatch.setattr(trainer_mod, "token_losses", lm_loss)


def test_nan_stop_exits_with_one_line_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    poison_loss_at(monkeypatch, {5})
    run_dir = tmp_path / "run"
    argv = [
        *TINY_OVERRIDES,
        *TINY_TASKS,
        f"run_dir={run_dir}",
        "train.device=cpu",
        "train.checkpoint_every=2",
    ]
    assert main(["train", *argv]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [err.strip()] and err.startswith(
        "smalllm: error: train.nan_policy=stop"
    )
    assert "at step 5" in err and "Traceback" not in out + err
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and latest.name == ckpt.checkpoint_name(4)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        ckpt.checkpoint_name(s) for s in (2, 4)
    ]
    assert all(torch.isfinite(t).all() for t in load_file(str(latest / WEIGHTS)).values())


def test_nan_from_huge_learning_rate_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No monkeypatching: lr=1e30 really produces a non-finite loss on the second step."""
    argv = [*TINY_OVERRIDES, *TINY_TASKS, f"run_dir={tmp_path / 'run'}", "train.device=cpu"]
    assert main(["train", *argv, "train.lr=1e30", "train.warmup_fraction=0", "eval.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "train.nan_policy=stop: loss became nan" in err


class ParameterTrace(Callback):
    """Copies of the first weight matrix of ``model`` after every step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.weight = next(p for p in model.parameters() if p.ndim == 2)
        self.after: dict[int, torch.Tensor] = {}

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        self.after[record.step] = self.weight.detach().clone()


def test_nan_skip_drops_the_batch_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_loss_at(monkeypatch, {6})
    cfg = tiny_config(tmp_path / "run", "train.device=cpu", "train.nan_policy=skip", "eval.enabled=false")
    logged: list[str] = []
    trainer = Trainer(cfg, log=logged.append)
    trace = ParameterTrace(trainer.unwrapped_model)
    trainer.callbacks.append(trace)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    assert any("step 6: non-finite" in line and "batch skipped" in line for line in logged)
    # Step 6 (after which trainer.step == 7) changed nothing; the neighbouring steps did.
    assert torch.equal(trace.after[7], trace.after[6])
    assert not torch.equal(trace.after[6], trace.after[5]) and not torch.equal(trace.after[8], trace.after[7])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == summary["steps"] and math.isfinite(records[-1]["loss"])
    final = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert final is not None and all(
        torch.isfinite(t).all() for t in load_file(str(final / WEIGHTS)).values()
    )


# ----------------------------------------------------------------------------------------------
# latest_checkpoint: partial, truncated and corrupt checkpoints are never picked
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    return build_model(ModelConfig(preset="micro-w32"), vocab_size=64, max_seq_len=16)


def make_checkpoints(root: Path, model: torch.nn.Module, steps: tuple[int, ...] = (1, 2, 3)) -> list[Path]:
    return [ckpt.save_checkpoint(root, s, model, None, {"step": s}, {"tokens": s}) for s in steps]


def _truncate(path: Path) -> None:
    f = path / WEIGHTS
    f.write_bytes(f.read_bytes()[:64])


def _flip_byte(path: Path) -> None:
    f = path / WEIGHTS
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # same size: only the checksum can tell
    f.write_bytes(bytes(data))


def _flip_state(path: Path) -> None:
    f = path / ckpt.STATE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated-weights": _truncate,
    "empty-weights": lambda p: (p / WEIGHTS).write_bytes(b""),
    "missing-weights": lambda p: (p / WEIGHTS).unlink(),
    "missing-state": lambda p: (p / ckpt.STATE).unlink(),
    "missing-manifest": lambda p: (p / ckpt.MANIFEST).unlink(),
    "garbled-manifest": lambda p: (p / ckpt.MANIFEST).write_text('{"files": '),
    "manifest-not-a-mapping": lambda p: (p / ckpt.MANIFEST).write_text("[1, 2]"),
    "checksum-mismatch-weights": _flip_byte,
    "checksum-mismatch-state": _flip_state,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_latest_checkpoint_skips_corrupt(
    tmp_path: Path, tiny_model: torch.nn.Module, corruption: str
) -> None:
    root = tmp_path / "checkpoints"
    *_, second, third = make_checkpoints(root, tiny_model)
    CORRUPTIONS[corruption](third)
    assert ckpt.verify_checkpoint(third, checksums=True) is not None
    assert ckpt.latest_checkpoint(root) == second


def test_partial_write_is_never_latest(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    """A crash mid-write leaves ``.tmp-step_…`` (even one with every file and a manifest): ignored."""
    root = tmp_path / "checkpoints"
    first, second = make_checkpoints(root, tiny_model, (1, 2))
    partial = root / f".tmp-{ckpt.checkpoint_name(9)}"
    os.rename(second, partial)
    (root / ckpt.checkpoint_name(8)).mkdir()  # renamed in place but empty (e.g. a half-deleted one)
    assert ckpt.latest_checkpoint(root) == first
    ckpt.prune_checkpoints(root, keep_last=5)
    assert not partial.exists()


def test_all_corrupt_gives_none_and_resume_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    argv = [*TINY_OVERRIDES, *TINY_TASKS, f"run_dir={run_dir}", "train.device=cpu", "eval.enabled=false"]
    assert main(["train", *argv]) == 0
    root = run_dir / "checkpoints"
    for path in root.iterdir():
        _truncate(path)
    assert ckpt.latest_checkpoint(root) is None
    capsys.readouterr()
    # Starting over from step 0 would silently discard the run: --resume refuses instead.
    assert main(["train", "--resume", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no usable checkpoint" in err and WEIGHTS in err
