"""The run directory as a record you can trust: smalllm never deletes or writes into a directory it
did not make, every way a run ends is recorded truthfully, one writer at a time, and a resumed run's
metrics equal the uninterrupted run's line for line.

Commands run in-process through :func:`smalllm.cli.main` where a subprocess is not the point; the
file-size limit, the lock holder and kill -9 need real processes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, TINY_TASKS, StopAt, quiet, tiny_config, tree_snapshot

from smalllm import checkpoints as ckpt
from smalllm.cli import main
from smalllm.data.stream import TaskStream
from smalllm.errors import SmalllmError
from smalllm.run_record import MARKER, RunDir, marker_kind, without_wall_clock
from smalllm.train import trainer as trainer_mod
from smalllm.train.callbacks.base import Callback, Control, StepRecord
from smalllm.train.trainer import Trainer, train

BASE = (*TINY_OVERRIDES, *TINY_TASKS, "train.device=cpu")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def one_line_error(capsys: pytest.CaptureFixture[str], rc: int, expect: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc != 0, f"exit code 0; stdout: {out[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("smalllm: error: "), err
    assert expect in lines[0], f"{expect!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err
    return lines[0]


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "smalllm.cli", *argv]


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """A researcher's directory: a git repository holding a thesis."""
    path = tmp_path / "notes"
    path.mkdir()
    (path / "thesis.txt").write_text("Chapter 1. Years of work.\n")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "thesis.txt"], check=True)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus_cache) -> Path:
    """A completed tiny run; tests work on copies."""
    run_dir = tmp_path_factory.mktemp("run-record") / "run"
    assert train(tiny_config(run_dir, "train.device=cpu"), log=quiet)["status"] == "completed"
    return run_dir


def copy_run(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest)
    return dest


def asides(parent: Path) -> list[str]:
    """Runs set aside by --overwrite and never cleaned up."""
    return sorted(p.name for p in parent.iterdir() if ".replaced-" in p.name)


# ----------------------------------------------------------------------------------------------
# Deletion rules: a directory smalllm did not make survives every command, byte for byte
# ----------------------------------------------------------------------------------------------

NOTES_CASES: dict[str, Callable[[Path, Path, Path], tuple[list[str], str]]] = {
    "train-overwrite": lambda notes, run, tmp: (
        ["train", *BASE, f"run_dir={notes}", "--overwrite"],
        f"run_dir: '{notes}' is not empty and was not created by smalllm (no {MARKER} marker)",
    ),
    "train": lambda notes, run, tmp: (
        ["train", *BASE, f"run_dir={notes}"],
        f"run_dir: '{notes}' is not empty and was not created by smalllm",
    ),
    "train-resume": lambda notes, run, tmp: (
        ["train", *BASE, f"run_dir={notes}", "--resume"],
        f"run_dir: '{notes}' has no run to resume",
    ),
    "train-run-dir-is-a-file": lambda notes, run, tmp: (
        ["train", *BASE, f"run_dir={notes / 'thesis.txt'}", "--overwrite"],
        f"run_dir: '{notes / 'thesis.txt'}' exists and is not a directory",
    ),
    "train-cache-dir-is-a-file": lambda notes, run, tmp: (
        ["train", *BASE, f"run_dir={tmp / 'run'}", f"data.cache_dir={notes / 'thesis.txt'}"],
        f"data.cache_dir: '{notes / 'thesis.txt'}' exists and is not a directory",
    ),
    "data-build": lambda notes, run, tmp: (
        ["data", "build", *BASE, "--out", str(notes)],
        f"--out: '{notes}' is not empty and was not created by smalllm",
    ),
    "data-build-onto-a-file": lambda notes, run, tmp: (
        ["data", "build", *BASE, "--out", str(notes / "thesis.txt")],
        f"--out: '{notes / 'thesis.txt'}' exists and is not a directory",
    ),
    "data-tokenizer": lambda notes, run, tmp: (
        ["data", "tokenizer", *BASE, "--out", str(notes)],
        f"--out: '{notes}' is not empty and was not created by smalllm",
    ),
    "data-tokenizer-onto-a-file": lambda notes, run, tmp: (
        ["data", "tokenizer", *BASE, "--out", str(notes / "thesis.txt")],
        f"--out: '{notes / 'thesis.txt'}' exists and is not a directory",
    ),
    "eval-out-a-directory": lambda notes, run, tmp: (
        ["eval", str(run), "--out", str(notes)],
        f"--out: '{notes}' is a directory; give a .jsonl file to append to",
    ),
    "eval-out-not-jsonl": lambda notes, run, tmp: (
        ["eval", str(run), "--out", str(notes / "thesis.txt")],
        f"--out: '{notes / 'thesis.txt'}' is not a JSONL file of records (line 1)",
    ),
    "eval-out-the-runs-metrics": lambda notes, run, tmp: (
        ["eval", str(run), "--out", str(run / "metrics.jsonl")],
        f"--out: '{run / 'metrics.jsonl'}' is one of the run's own files; results go to ",
    ),
}


@pytest.mark.parametrize("name", list(NOTES_CASES))
def test_foreign_directory_survives(
    name: str, notes: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(finished_run, tmp_path / "existing")
    argv, expect = NOTES_CASES[name](notes, run, tmp_path)
    before, run_before = tree_snapshot(notes), tree_snapshot(run)
    capsys.readouterr()
    one_line_error(capsys, main(argv), expect)
    assert tree_snapshot(notes) == before, "the foreign directory changed"
    assert tree_snapshot(run) == run_before, "the run changed"
    assert not (tmp_path / "run").exists(), "a refused command created its run directory"


def test_foreign_directory_survives_a_real_process(notes: Path) -> None:
    before = tree_snapshot(notes)
    proc = subprocess.run(
        cli("train", *BASE, f"run_dir={notes}", "--overwrite"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"run_dir: '{notes}' is not empty and was not created by smalllm" in proc.stderr
    assert tree_snapshot(notes) == before


def test_run_dir_dot_is_refused_inside_a_foreign_directory(
    notes: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(notes)
    before = tree_snapshot(notes)
    for flags in ([], ["--overwrite"]):
        capsys.readouterr()
        one_line_error(
            capsys,
            main(["train", *BASE, "run_dir=.", *flags]),
            "run_dir: '.' is not empty and was not created by smalllm",
        )
    assert tree_snapshot(notes) == before


def test_run_dir_dot_is_not_replaced_from_inside_itself(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even a smalllm run is not moved away under the feet of a process working inside it."""
    run = copy_run(finished_run, tmp_path / "run")
    before = tree_snapshot(run)
    monkeypatch.chdir(run)
    one_line_error(
        capsys,
        main(["train", *BASE, "run_dir=.", "--overwrite"]),
        "run_dir: '.' is or contains the current directory; run from elsewhere to replace it",
    )
    assert tree_snapshot(run) == before


def test_overwrite_refuses_a_run_holding_a_users_file(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(finished_run, tmp_path / "run")
    (run / "analysis.ipynb").write_text("{}")
    before = tree_snapshot(run)
    one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={run}", "--overwrite"]),
        f"run_dir: '{run}' also holds files smalllm did not write (analysis.ipynb)",
    )
    assert tree_snapshot(run) == before


@pytest.mark.parametrize(
    "where",
    ["checkpoints/notes.txt", "checkpoints/LATEST/notes.txt", "checkpoints/my-best", "report/analysis.md"],
)
def test_overwrite_refuses_a_run_holding_a_users_file_below_its_top_level(
    where: str, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file put into a checkpoint or the report was deleted with the run (only the top level was
    checked); the run's own files there (the report's plots and summary) do not block a replacement."""
    run = copy_run(finished_run, tmp_path / "run")
    assert main(["report", str(run)]) == 0
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    assert latest is not None
    users = run / where.replace("LATEST", latest.name)
    if users.suffix:
        users.write_text("mine")
    else:
        users.mkdir()
    before = tree_snapshot(run)
    capsys.readouterr()
    one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={run}", "--overwrite"]),
        f"run_dir: '{run}' also holds files smalllm did not write ({users.relative_to(run)})",
    )
    assert tree_snapshot(run) == before
    if users.is_dir():
        users.rmdir()
    else:
        users.unlink()
    assert main(["train", *BASE, f"run_dir={run}", "train.max_tokens=2048", "--overwrite"]) == 0


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["train.lrr=1e-3"], "train.lrr: unknown key (did you mean 'lr'?)"),
        (["model.preset=4b", "data.seq_len=2048"], "model.preset: 4b needs ~"),
    ],
    ids=["typo-in-config", "plan-does-not-fit"],
)
def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(
    overrides: list[str],
    expect: str,
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = copy_run(finished_run, tmp_path / "run")
    before = tree_snapshot(run)
    one_line_error(capsys, main(["train", *BASE, f"run_dir={run}", *overrides, "--overwrite"]), expect)
    assert tree_snapshot(run) == before
    assert asides(tmp_path) == []


def test_overwrite_puts_the_old_run_back_when_the_new_one_cannot_start(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(finished_run, tmp_path / "run")
    before = tree_snapshot(run)

    def disk_full(_cfg, path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(trainer_mod, "save_config", disk_full)
    one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={run}", "--overwrite"]),
        f"run_dir: cannot write to '{run}' (OSError: [Errno 28] No space left on device",
    )
    assert tree_snapshot(run) == before, "the old run was not restored as it was"
    assert asides(tmp_path) == []


def test_overwrite_replaces_an_owned_run(finished_run: Path, tmp_path: Path) -> None:
    run = copy_run(finished_run, tmp_path / "run")
    old_metrics = RunDir(run).read_metrics()
    assert main(["train", *BASE, f"run_dir={run}", "train.max_tokens=2048", "--overwrite"]) == 0
    record = RunDir(run)
    assert record.is_run() and record.status() == "completed" and record.is_done()
    assert record.read_summary()["steps"] == 8
    assert max(r["step"] for r in record.read_metrics()) == 8 < max(r["step"] for r in old_metrics)
    assert [p.name for p in record.checkpoints_dir.iterdir()] == [ckpt.checkpoint_name(8)]
    assert asides(tmp_path) == []


def test_corpus_and_tokenizer_outputs_carry_markers_and_are_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What smalllm made, it may replace; the marker says what it is."""
    corpus, tokenizer = tmp_path / "corpus", tmp_path / "tokenizer"
    for _ in range(2):
        assert main(["data", "build", *BASE, "--out", str(corpus)]) == 0
        assert main(["data", "tokenizer", *BASE, "--out", str(tokenizer)]) == 0
    assert marker_kind(corpus) == "corpus" and marker_kind(tokenizer) == "tokenizer"
    cache = tiny_config(tmp_path).data
    from smalllm.data.shards import corpus_dir

    assert marker_kind(corpus_dir(cache)) == "corpus", "the cache's corpus directories are marked too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "tokenizer"], "staging dirs left over"
    # A corpus is not a tokenizer, nor a run.
    capsys.readouterr()
    one_line_error(
        capsys,
        main(["data", "tokenizer", *BASE, "--out", str(corpus)]),
        f"--out: '{corpus}' is a smalllm corpus directory, not a tokenizer",
    )
    one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={corpus}", "--overwrite"]),
        f"run_dir: '{corpus}' is a smalllm corpus directory, not a run",
    )


def test_a_failed_swap_puts_the_old_corpus_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing a corpus moves the old one aside first: when the new one cannot be put in place,
    the old one comes back, byte for byte."""
    corpus = tmp_path / "corpus"
    assert main(["data", "build", *BASE, "--out", str(corpus)]) == 0
    before = tree_snapshot(corpus)
    real_rename = Path.rename

    def failing_rename(self: Path, target):  # only the staged build going into place fails
        if Path(target) == corpus and ".tmp-" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    capsys.readouterr()
    one_line_error(
        capsys, main(["data", "build", *BASE, "--out", str(corpus)]), f"--out: cannot replace '{corpus}'"
    )
    assert tree_snapshot(corpus) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"], "aside or staging dirs left over"


def _fake_checkpoint(root: Path, step: int, *extra: str) -> Path:
    """A published checkpoint whose manifest lists one file; ``extra`` files are not listed."""
    path = root / ckpt.checkpoint_name(step)
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"w" * step)
    manifest = {
        "step": step,
        "files": {"weights.bin": {"bytes": step, "sha256": ckpt._sha256(path / "weights.bin")}},
    }
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    for name in extra:
        (path / name).write_text("a researcher's note")
    return path


def test_pruning_keeps_a_checkpoint_holding_a_users_file(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    noted = _fake_checkpoint(root, 1, "notes.txt")
    _fake_checkpoint(root, 2)
    _fake_checkpoint(root, 3)
    assert ckpt.prune_checkpoints(root, keep_last=1) == [noted]
    assert sorted(p.name for p in root.iterdir()) == [noted.name, ckpt.checkpoint_name(3)]
    assert (noted / "notes.txt").read_text() == "a researcher's note"


def test_republishing_a_step_keeps_a_stale_copy_holding_a_users_file(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    stale = _fake_checkpoint(root, 4, "notes.txt")
    tmp = ckpt.stage_checkpoint(root, 4)
    model = torch.nn.Linear(2, 2)
    model.save_pretrained = lambda *a, **k: None  # only the publish step is under test
    with pytest.raises(ckpt.CheckpointWriteError, match="holds files smalllm did not write"):
        ckpt.publish_checkpoint(tmp, 4, model, None, {"step": 4}, {})
    assert (stale / "notes.txt").is_file() and not tmp.exists()


def test_tokenizer_output_holding_a_users_file_is_not_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tokenizer directory smalllm wrote, plus a file of the user's: it replaced the directory,
    deleting the file (every name in a tokenizer directory counted as smalllm's)."""
    tokenizer = tmp_path / "tokenizer"
    assert main(["data", "tokenizer", *BASE, "--out", str(tokenizer)]) == 0
    (tokenizer / "notes.txt").write_text("mine")
    before = tree_snapshot(tokenizer)
    capsys.readouterr()
    one_line_error(
        capsys,
        main(["data", "tokenizer", *BASE, "--out", str(tokenizer)]),
        f"--out: '{tokenizer}' also holds files smalllm did not write (notes.txt)",
    )
    assert tree_snapshot(tokenizer) == before


def test_corpus_output_holding_a_users_file_in_its_tokenizer_is_not_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    assert main(["data", "build", *BASE, "--out", str(corpus)]) == 0
    (corpus / "tokenizer" / "notes.txt").write_text("mine")
    before = tree_snapshot(corpus)
    capsys.readouterr()
    one_line_error(
        capsys,
        main(["data", "build", *BASE, "--out", str(corpus)]),
        f"--out: '{corpus}' also holds files smalllm did not write (tokenizer/notes.txt)",
    )
    assert tree_snapshot(corpus) == before


def test_eval_out_appends_to_a_jsonl_file(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"earlier": 1}\n')
    assert main(["eval", str(finished_run), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": 1} and "checkpoint" in json.loads(lines[1])


# ----------------------------------------------------------------------------------------------
# Honest status
# ----------------------------------------------------------------------------------------------


def _fail_in_stream(monkeypatch: pytest.MonkeyPatch) -> str:
    real = TaskStream.batch

    def batch(self, step, rank=0, world=1):
        if step == 5:
            raise ValueError("task generator t_cmp: cannot draw an instance")
        return real(self, step, rank, world)

    monkeypatch.setattr(TaskStream, "batch", batch)
    return "ValueError: task generator t_cmp: cannot draw an instance"


def _fail_in_checkpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    def publish(*_args, **_kwargs):
        raise RuntimeError("checkpoint writer crashed")

    monkeypatch.setattr(ckpt, "publish_checkpoint", publish)
    return "RuntimeError: checkpoint writer crashed"


@pytest.mark.parametrize(
    "inject, step",
    [(_fail_in_stream, 5), (_fail_in_checkpoint, 4)],
    ids=["task-generator-raises", "checkpoint-writer-raises"],
)
def test_an_exception_mid_run_is_recorded_as_failed(
    inject: Callable[[pytest.MonkeyPatch], str],
    step: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    error = inject(monkeypatch)
    run = tmp_path / "run"
    line = one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={run}", "train.checkpoint_every=4"]),
        f"training failed at step {step}: {error}",
    )
    assert "completed" not in line
    record = RunDir(run)
    summary = record.read_summary()
    assert summary["status"] == "failed" and summary["error"] == error and summary["failed_at_step"] == step
    assert record.status() == "failed" and not record.is_done()
    assert record.lock_holder() is None, "the lock is released after a failure"


def test_a_file_size_limit_fails_the_run_with_one_line(tmp_path: Path) -> None:
    """``ulimit -f 300``: the checkpoint write fails with EFBIG; the small status record still fits."""
    run = tmp_path / "r"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))

    proc = subprocess.run(
        cli("train", *BASE, "train.max_tokens=4000", f"run_dir={run}"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and proc.returncode != -signal.SIGXFSZ
    assert len(lines) == 1 and lines[0].startswith("smalllm: error: "), proc.stderr
    assert "model.safetensors: cannot write the checkpoint" in lines[0] and "File too large" in lines[0]
    summary = RunDir(run).read_summary()
    assert summary["status"] == "failed" and "File too large" in summary["error"]
    assert summary["failed_at_step"] == summary["steps"] > 0


def test_every_step_skipped_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = trainer_mod.token_losses
    monkeypatch.setattr(
        trainer_mod, "token_losses", lambda logits, targets: real(logits, targets) * float("nan")
    )
    run = tmp_path / "run"
    one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={run}", "train.nan_policy=skip", "eval.enabled=false"]),
        "train.nan_policy=skip: all 32 steps had a non-finite loss or gradient and were skipped",
    )
    summary = RunDir(run).read_summary()
    assert summary["status"] == "failed" and summary["skipped_steps"] == summary["steps"] == 32


def test_resume_without_a_checkpoint_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_in_stream(patch)
        assert main(["train", *BASE, f"run_dir={run}", "train.checkpoint_every=0"]) == 2
    assert not RunDir(run).has_checkpoint()
    before = tree_snapshot(run)
    capsys.readouterr()
    one_line_error(
        capsys,
        main(["train", *BASE, f"run_dir={run}", "--resume"]),
        f"run_dir: '{run}' has no checkpoint to resume from; start over with --overwrite",
    )
    assert tree_snapshot(run) == before, "a refused resume touched the run"
    assert main(["train", *BASE, f"run_dir={run}", "--overwrite"]) == 0
    assert RunDir(run).is_done()


# ----------------------------------------------------------------------------------------------
# One writer
# ----------------------------------------------------------------------------------------------


def wait_until(
    proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the first run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_one_writer_at_a_time_and_a_killed_holders_lock_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    record = RunDir(run)
    # Long enough (512 steps) to still be running while the other commands are tried.
    argv = [
        *BASE,
        f"run_dir={run}",
        "train.max_tokens=131072",
        "train.checkpoint_every=8",
        "eval.enabled=false",
    ]
    first = subprocess.Popen(cli("train", *argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(
            first, lambda: record.has_checkpoint() and record.lock_holder() is not None, "a checkpoint"
        )
        holder = record.lock_holder()
        assert holder is not None and holder.pid == first.pid
        assert record.status() == "running"
        for command in (
            ["train", *argv],
            ["train", *argv, "--resume"],
            ["train", *argv, "--overwrite"],
            ["train", *argv, "--overwrite", "--dry-run"],
            ["eval", str(run)],
        ):
            capsys.readouterr()
            one_line_error(capsys, main(command), f"run_dir: '{run}' is in use by pid {first.pid} on ")
        assert record.lock_holder() == holder, "a refused writer disturbed the lock"
        assert asides(tmp_path) == [] and first.poll() is None

        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The kernel released the killed holder's flock: the record says so, and a resume takes over.
    assert record.lock_holder() is None and record.status() == "killed"
    assert main(["train", *argv, "--resume"]) == 0
    assert record.is_done() and record.read_summary()["attempt"] == 2
    steps = [r["step"] for r in record.read_metrics()]
    assert steps == sorted(set(steps)), "steps logged twice across the kill"


def test_lock_is_per_process_and_names_its_holder(tmp_path: Path) -> None:
    first, second = RunDir(tmp_path), RunDir(tmp_path)
    with first.locked():
        holder = second.lock_holder()
        assert holder is not None and holder.pid == os.getpid()
        with pytest.raises(SmalllmError, match=rf"is in use by pid {os.getpid()} on "):
            second.acquire()
    assert second.lock_holder() is None
    with second.locked():
        assert first.lock_holder() is not None


# ----------------------------------------------------------------------------------------------
# Exact resume, metrics included
# ----------------------------------------------------------------------------------------------


class Crash(Callback):
    """Raise after step ``step`` as a crash would, after the checkpoints up to there were written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if record.step == self.step:
            raise RuntimeError("simulated crash")


def metrics_lines(run: Path) -> list[dict]:
    return [without_wall_clock(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "checkpoint_every, log_every, crash_at",
    [(4, 3, 10), (6, 4, 21), (3, 5, 8), (5, 2, 13), (4, 4, 9)],
    ids=["ckpt4-log3", "ckpt6-log4", "ckpt3-log5", "ckpt5-log2", "ckpt4-log4"],
)
def test_metrics_after_crash_and_resume_equal_the_uninterrupted_run(
    checkpoint_every: int, log_every: int, crash_at: int, tmp_path: Path
) -> None:
    overrides = (
        f"train.checkpoint_every={checkpoint_every}",
        f"train.log_every={log_every}",
        "train.device=cpu",
    )
    reference = tmp_path / "reference"
    train(tiny_config(reference, *overrides), log=quiet)

    cfg = tiny_config(tmp_path / "run", *overrides)
    trainer = Trainer(cfg, log=quiet)
    trainer.callbacks.append(Crash(crash_at))
    with pytest.raises(
        SmalllmError, match=f"training failed at step {crash_at}: RuntimeError: simulated crash"
    ):
        trainer.fit()
    resumed_from = (crash_at // checkpoint_every) * checkpoint_every
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").name == ckpt.checkpoint_name(resumed_from)
    if crash_at // log_every * log_every > resumed_from:  # records past the checkpoint, to be dropped
        assert any(r["step"] > resumed_from for r in RunDir(tmp_path / "run").read_metrics())

    assert train(cfg, resume=True, log=quiet)["status"] == "completed"
    got, want = metrics_lines(tmp_path / "run"), metrics_lines(reference)
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    assert got == want
    weights = [
        ckpt.latest_checkpoint(d / "checkpoints") / ckpt.WEIGHTS for d in (tmp_path / "run", reference)
    ]
    assert weights[0].read_bytes() == weights[1].read_bytes()


def test_checkpoint_state_holds_the_open_logging_window(tmp_path: Path) -> None:
    """The trainer state in a checkpoint carries the callbacks' state (one resumable dict)."""
    cfg = tiny_config(tmp_path / "run", "train.log_every=3", "train.device=cpu")
    trainer = Trainer(cfg, log=quiet)
    trainer.callbacks.insert(0, StopAt(4))
    assert trainer.fit()["status"] == "interrupted"
    state = torch.load(
        ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints") / ckpt.STATE, weights_only=True
    )
    assert state["step"] == 4
    window = state["callbacks"]["MetricsLogger"]["windows"][0]
    assert window["steps"] == 1 and window["label_count"].sum() > 0  # step 4, after the log at step 3
    assert state["callbacks"]["EvaluatorCallback"]["evaluated_step"] == 4  # 4 is an evaluation step


def test_a_run_from_an_older_stream_format_is_not_resumed(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run saved before the stream format was recorded (and before eval.criterion): its config
    # still loads, and resuming it is refused with one line instead of splicing two streams.
    run = copy_run(finished_run, tmp_path / "old")
    summary = json.loads(RunDir(run).summary_file.read_text())
    assert summary.pop("stream_format") == 2
    summary["status"] = "interrupted"
    RunDir(run).summary_file.write_text(json.dumps(summary))
    config = RunDir(run).config_file
    legacy = "  accuracy_threshold: 0.9\n  loss_ratio_threshold: null\n  patience: 2\n"
    text, replaced = re.subn(r"  criterion:\n(?:    .*\n)+", legacy, config.read_text())
    assert replaced == 1
    config.write_text(text)
    before = tree_snapshot(run)
    one_line_error(
        capsys,
        main(["train", str(config), f"run_dir={run}", "--resume", "train.max_tokens=16384"]),
        f"run_dir: {run} was trained on stream format 1 and this smalllm builds format 2",
    )
    assert tree_snapshot(run) == before, "a refused resume touched the run"
