"""Launching on a GPU box, checked on the CPU through the same code paths: the run's environment
record, the device error, world-size checks, progress lines for batch logs, the FSDP-aware dry run,
and the torch install script."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_OVERRIDES, TINY_TASKS, quiet, tiny_config

from smalllm.cli import main
from smalllm.config import load_config
from smalllm.errors import ConfigError, SmalllmError
from smalllm.model.presets import PRESETS
from smalllm.run_record import TRACKER_DIR, RunDir
from smalllm.train import environment
from smalllm.train.config import LoggingConfig
from smalllm.train.launch import check_local_rank, check_world_size, dry_run_target
from smalllm.train.plan import GPUS, Target, make_plan
from smalllm.train.preflight import check_trackers
from smalllm.train.trainer import train

REPO = Path(__file__).resolve().parent.parent
FSDP_8GPU = str(REPO / "configs/accelerate/fsdp_8gpu.yaml")
GIB = 1024**3


def cpu_only_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's torch, whatever machine the tests run on: a CPU wheel without a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)


# ---------------------------------------------------------------------------------------------- environment


def test_environment_names_the_torch_build_and_library_versions(monkeypatch):
    cpu_only_torch(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "4")
    env = environment.collect_environment()
    assert env["torch_build"] == f"torch {torch.__version__} (CPU-only)"
    assert env["devices"] == [] and env["cuda_available"] is False
    assert env["world_size_env"] == 4
    for name in ("torch", "transformers", "accelerate", "datasets", "tokenizers"):
        assert env["versions"][name] == importlib.metadata.version(name)
    text = environment.describe_environment(env)
    assert f"torch build   torch {torch.__version__} (CPU-only)" in text
    assert "world size    4 (from the launcher)" in text
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert environment.torch_build() == f"torch {torch.__version__} (CUDA 12.4)"
    assert environment.accelerate_config_summary(FSDP_8GPU) == "FSDP, 8 processes, bf16"


def test_checkout_state_is_the_commit_and_whether_tracked_files_changed(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    git("add", "tracked.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    (tmp_path / "untracked_run_dir").mkdir()  # runs and caches live in a checkout: not "dirty"
    assert environment.checkout_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "tracked.py").write_text("x = 2\n")
    assert environment.checkout_state(tmp_path) == {"commit": head, "dirty": True}
    assert environment.checkout_state(tmp_path / "untracked_run_dir") is None  # no .git: a wheel


def test_env_command_prints_the_facts(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out
    assert f"accelerate {importlib.metadata.version('accelerate')}" in out


def test_summary_records_device_world_size_precision_versions_and_commit(tmp_path):
    cfg = tiny_config(tmp_path / "run", "eval.enabled=false", "logging.tensorboard=true")
    summary = train(cfg, log=quiet)
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["environment"]
    assert recorded == summary["environment"]
    assert (recorded["device"], recorded["precision"], recorded["world_size"]) == ("cpu", "fp32", 1)
    assert (recorded["distributed_type"], recorded["sharding"]) == ("NO", "none")
    assert recorded["versions"]["torch"] == torch.__version__
    assert recorded["git_commit"] == (environment.checkout_state() or {}).get("commit")
    # The same facts as TensorBoard hparams (accelerate's tracker keeps a copy in hparams.yml).
    (hparams_file,) = (tmp_path / "run" / TRACKER_DIR).glob("*/hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert (hparams["environment.world_size"], hparams["environment.device"]) == (1, "cpu")
    assert hparams["environment.versions.torch"] == torch.__version__


# ---------------------------------------------------------------------------------------------- device


def test_cuda_on_a_cpu_only_torch_fails_at_once_without_a_run_directory(tmp_path, monkeypatch, capsys):
    cpu_only_torch(monkeypatch)
    run_dir = tmp_path / "run"
    argv = ["train", "train.device=cuda", "train.max_tokens=4096", f"run_dir={run_dir}"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"smalllm: error: train.device: cuda requested but torch {torch.__version__} (CPU-only) is "
        "installed; for a CUDA build run `make install TORCH_INDEX=https://download.pytorch.org/whl/cu128` "
        "(check https://download.pytorch.org/whl/ for the index matching your driver; README: Launching on a GPU box)"
    )
    assert not run_dir.exists()


def test_the_first_line_of_a_run_names_device_precision_and_world_size(tmp_path):
    lines: list[str] = []
    train(tiny_config(tmp_path / "run", "eval.enabled=false", "train.max_tokens=256"), log=lines.append)
    assert lines[0] == "device cpu, precision fp32, world size 1 (NO, sharding none)"


def test_world_size_must_match_the_launcher():
    check_world_size(2, {"WORLD_SIZE": "2"})
    check_world_size(1, {})
    with pytest.raises(
        SmalllmError, match=r"^world size: accelerate runs 1 process\(es\) but .*WORLD_SIZE=2;"
    ):
        check_world_size(1, {"WORLD_SIZE": "2"})
    with pytest.raises(SmalllmError, match=r"OMPI_COMM_WORLD_SIZE=4"):
        check_world_size(2, {"OMPI_COMM_WORLD_SIZE": "4"})
    # What `accelerate launch --cpu --num_processes 2` leaves in the one process it starts.
    simple_launcher = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(
        SmalllmError, match=r"started 1 process .*accelerate launch --multi_gpu --num_processes N"
    ):
        check_world_size(1, simple_launcher)
    # One CPU process in a batch job that exported its head node for multi-node launches: fine.
    check_world_size(1, {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "node017", "MASTER_PORT": "29500"})


def test_more_processes_per_node_than_gpus_is_an_error():
    assert check_local_rank(8, {"LOCAL_RANK": "7"}) == 7
    with pytest.raises(
        SmalllmError, match=r"^world size: the launch starts 8 processes on this node but 4 GPU"
    ):
        check_local_rank(4, {"LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8"})


def test_accelerate_launch_cpu_with_two_processes_is_an_error(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "smalllm.cli", "train", *TINY_OVERRIDES, f"run_dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "smalllm: error: world size: accelerate launch started 1 process" in proc.stderr
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------- logs


def test_wandb_without_the_package_is_a_startup_error(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"^logging\.wandb: true but the wandb package is not installed"):
        check_trackers(LoggingConfig(wandb=True))
    check_trackers(LoggingConfig(wandb=False))
    assert main(["train", "logging.wandb=true", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "smalllm: error: logging.wandb: true but" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


PROGRESS = re.compile(
    r"^step (\d+)/32 \| tokens ([\d,]+) \| loss (\d+\.\d{4}) \| lr (\S+) \| tok/s ([\d,]+) \| "
    r"MFU (\d+\.\d)% \| ETA (\d+:\d\d:\d\d)$"
)


def test_stdout_to_a_file_gets_one_plain_progress_line_per_log_interval(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "log.txt"
    args = [*TINY_OVERRIDES, *TINY_TASKS, "eval.enabled=false", "logging.progress=true", "train.log_every=4"]
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "smalllm.cli", "train", *args, f"run_dir={run_dir}"],
            stdout=out,
            stderr=subprocess.PIPE,
            check=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
    matches = [m for m in map(PROGRESS.match, log.read_text().splitlines()) if m]
    # 8,192 tokens in batches of 8 x 32 tokens: 32 steps, one line every 4.
    assert [int(m[1]) for m in matches] == list(range(4, 33, 4))
    assert [int(m[2].replace(",", "")) for m in matches] == [256 * s for s in range(4, 33, 4)]
    records = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [float(m[3]) for m in matches] == [round(r["loss"], 4) for r in train_records]
    assert "\r" not in log.read_text()  # no progress bar redraws in a file


def test_progress_seconds_adds_lines_between_records(tmp_path, capsys):
    overrides = ["eval.enabled=false", "logging.progress=true", "train.log_every=8"]
    train(tiny_config(tmp_path / "run", *overrides, "logging.progress_seconds=1e-9"), log=quiet)
    matches = [m for m in map(PROGRESS.match, capsys.readouterr().out.splitlines()) if m]
    assert [int(m[1]) for m in matches] == list(range(1, 33))  # a line due after every step
    records = {r["step"]: r for r in RunDir(tmp_path / "run").read_metrics() if r["kind"] == "train"}
    assert sorted(records) == [8, 16, 24, 32]
    for m in matches:
        if int(m[1]) in records:
            assert float(m[3]) == round(records[int(m[1])]["loss"], 4)


# ---------------------------------------------------------------------------------------------- dry run


def plan_config(*overrides: str):
    """The shape of configs/gpu_20m_c4.yaml (context 1024, 50,304 tokens, 1,024 x 16 batches) on
    the synthetic background, so nothing is downloaded."""
    return load_config(
        None,
        [
            "data.seq_len=1024",
            "data.tokenizer.vocab_size=50304",
            "train.global_batch_size=1024",
            "train.micro_batch_size=16",
            *overrides,
        ],
    )


@pytest.mark.parametrize(
    ("preset", "expected_gib"),
    [("1b", 46.23), ("4b", 87.75)],  # the README's table
)
def test_fsdp_memory_per_gpu_is_the_hand_calculation(preset, expected_gib):
    world, b, s, V = 8, 16, 1024, 50304
    p = PRESETS[preset]
    n = p.non_embedding_params() + 2 * V * p.width  # untied embeddings and LM head
    # FULL_SHARD splits fp32 master weights (4 B), fp32 gradients (4 B) and AdamW's two fp32 moments
    # (8 B) over the 8 GPUs: 16 B/param / 8.
    sharded_state = 16 * n / world
    # bf16 weights exist only for the all-gathered units: the root (embeddings + LM head) and two
    # decoder layers (the current one and the prefetched next), 2 B each.
    gathered = 2 * (2 * V * p.width + 2 * p.non_embedding_params() / p.layers)
    # Activations of one micro-batch, bf16, every layer kept: b*s*(10h + 6i) elements per layer.
    activations = 2 * p.layers * b * s * (10 * p.width + 6 * p.intermediate)
    logits = 3 * b * s * V * 4  # fp32 logits, softmax and gradient
    hand = sharded_state + gathered + activations + logits

    target = Target("cuda", "bf16", world=world, sharding="full_shard", gpu=GPUS["H100-80GB"])
    plan = make_plan(plan_config(f"model.preset={preset}"), vocab_size=V, target=target)
    assert plan.memory.total == pytest.approx(hand, rel=1e-12)
    assert plan.memory.total / GIB == pytest.approx(expected_gib, abs=0.005)
    assert plan.fits == (preset == "1b")  # 4b needs micro-batch 8 (or recompute) on 80 GB
    assert plan.accumulation == 1024 // (16 * 8)


def test_dry_run_target_from_an_fsdp_accelerate_config_and_from_the_launcher_environment(monkeypatch):
    cfg = plan_config("model.preset=4b")
    from_file = dry_run_target(cfg, accelerate_config=FSDP_8GPU, environ={})
    assert (from_file.world, from_file.sharding, from_file.device) == (8, "full_shard", "cuda")
    assert from_file.gpu is not None and from_file.gpu.name == "H100-80GB"  # assumed: no GPU here
    launched = {
        "WORLD_SIZE": "8",
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_RESHARD_AFTER_FORWARD": "false",
        "FSDP_ACTIVATION_CHECKPOINTING": "true",
    }
    for name, value in launched.items():  # accelerate's FSDP plugin reads the process environment
        monkeypatch.setenv(name, value)
    from_env = dry_run_target(cfg, environ=launched, gpu="A100-40GB")
    recompute = from_env.activation_checkpointing
    assert (from_env.world, from_env.sharding, recompute) == (8, "shard_grad_op", True)
    assert from_env.gpu is not None and from_env.gpu.memory == 40960 * 1024**2
    assert dry_run_target(cfg, num_processes=2, environ={}).world == 2


def test_fsdp_settings_accelerate_refuses_are_one_line_errors_naming_the_file(tmp_path):
    cfg = plan_config("model.preset=4b")
    base = Path(FSDP_8GPU).read_text()
    for bad, reason in [
        ("fsdp_version: 2", "fsdp_version: two"),  # int() of the version: ValueError
        ("fsdp_version: 2", "fsdp_version: 1\n  fsdp_sharding_strategy: BOGUS"),  # KeyError
    ]:
        path = tmp_path / "fsdp.yaml"
        path.write_text(base.replace(bad, reason))
        with pytest.raises(SmalllmError) as refused:
            dry_run_target(cfg, accelerate_config=str(path), environ={})
        line = str(refused.value)
        assert line.startswith(f"{path}: fsdp_config is not usable (") and "\n" not in line


@pytest.mark.parametrize("value", ["eight", "", "0", "-2", "2.5"])
def test_a_malformed_world_size_is_a_one_line_error_naming_the_variable(value):
    with pytest.raises(SmalllmError) as refused:
        environment.world_size_from_environment({"WORLD_SIZE": value})
    assert str(refused.value) == (
        f"WORLD_SIZE: expected a positive whole number of processes, got {value!r} "
        "(set by the launcher, or left over in the shell's environment)"
    )
    assert environment.world_size_from_environment({"OMPI_COMM_WORLD_SIZE": " 4 "}) == 4
    assert environment.world_size_from_environment({}) is None


def test_4b_dry_run_fits_under_8_gpu_fsdp_and_exits_3_on_one_gpu(tmp_path, capsys, monkeypatch):
    cpu_only_torch(monkeypatch)
    run = f"run_dir={tmp_path / 'run'}"
    # The acceptance command as given: micro_batch_size (32) caps each of the 8 processes' 4 rows.
    fsdp = ["train", "model.preset=4b", run, "--dry-run"]
    assert main([*fsdp, "--accelerate-config", FSDP_8GPU]) == 0
    out = capsys.readouterr().out
    assert "processes    8, sharding full_shard" in out and "device       cuda (H100-80GB)" in out
    assert re.search(r"total +10\.08 GiB\n +available +79\.65 GiB +-> fits", out)

    assert main(["train", "model.preset=4b", run, "--dry-run", "--gpu", "H100-80GB"]) == 3
    captured = capsys.readouterr()
    assert "processes    1, sharding none" in captured.out and "DOES NOT FIT" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("smalllm: error: model.preset: 4b needs ~80.58 GiB per process")
    assert not (tmp_path / "run").exists()

    # The README's command, on the README's config (a hub corpus: the dry run reads nothing of it).
    gpu_config = str(REPO / "configs/gpu_20m_c4.yaml")
    assert (
        main(["train", gpu_config, "model.preset=1b", run, "--dry-run", "--accelerate-config", FSDP_8GPU])
        == 0
    )
    assert re.search(r"total +46\.23 GiB\n +available +79\.65 GiB +-> fits", capsys.readouterr().out)


def test_dry_run_flags_are_checked(tmp_path, capsys):
    run = f"run_dir={tmp_path / 'run'}"
    assert main(["train", run, "--dry-run", "--gpu", "B300"]) == 2
    assert "smalllm: error: --gpu: unknown GPU 'B300'; known: H100-80GB" in capsys.readouterr().err
    assert main(["train", run, "--gpu", "H100-80GB"]) == 2
    assert "smalllm: error: --gpu: only with --dry-run" in capsys.readouterr().err
    assert main(["train", run, "--dry-run", "--accelerate-config", str(tmp_path / "none.yaml")]) == 2
    assert "--accelerate-config: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- install


def fake_venv(tmp_path: Path, torch_version: str, smi: str | None) -> tuple[Path, Path, dict]:
    """A venv bin directory whose python reports ``torch_version`` and whose pip logs its calls;
    ``smi``: what a fake nvidia-smi prints (None: no GPU)."""
    bin_dir, path_dir, calls = tmp_path / "venv", tmp_path / "path", tmp_path / "pip_calls"
    bin_dir.mkdir(parents=True)
    path_dir.mkdir()
    state = tmp_path / "torch_version"
    state.write_text(torch_version)
    cuda = f'case "$(cat {state})" in *+cu*) echo 12.4;; *) echo;; esac'
    (bin_dir / "python").write_text(
        f'#!/bin/sh\ncase "$2" in *version.cuda*) {cuda};; *) cat {state};; esac\n'
    )
    # Installing from an index "installs" that index's build; the cu100 index lacks the version.
    (bin_dir / "pip").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        f'case "$*" in *" --index-url "*cu128*) echo 2.13.0+cu128 > {state};;\n'
        '  *" --index-url "*cu100*) echo "No matching distribution found for torch==2.13.0" >&2; exit 1;;\n'
        "esac\n"
    )
    if smi is not None:
        (path_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{smi}'\n")
    for f in [*bin_dir.iterdir(), *path_dir.iterdir()]:
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{path_dir}:/usr/bin:/bin"}
    return bin_dir, calls, env


def install_torch(bin_dir: Path, env: dict, index: str = "") -> str:
    script = REPO / "scripts" / "install_torch.sh"
    return subprocess.run(
        ["sh", str(script), str(bin_dir), "2.13.0", index],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout


def test_install_with_a_cuda_index_replaces_a_cpu_torch_once(tmp_path):
    bin_dir, calls, env = fake_venv(tmp_path, "2.13.0+cpu", smi=None)
    index = "https://download.pytorch.org/whl/cu128"
    install_torch(bin_dir, env, index)
    # One replacing step (never an uninstall first), then the dependency pass.
    assert calls.read_text().splitlines() == [
        f"install --quiet --force-reinstall --no-deps --index-url {index} torch==2.13.0",
        f"install --quiet --extra-index-url {index} torch==2.13.0",
    ]
    assert install_torch(bin_dir, env, index) == "torch 2.13.0+cu128 (cu128) is installed\n"
    assert len(calls.read_text().splitlines()) == 2  # idempotent: the second run installs nothing


def test_an_index_without_the_version_leaves_the_old_torch_installed(tmp_path):
    bin_dir, calls, env = fake_venv(tmp_path, "2.13.0+cpu", smi=None)
    script = REPO / "scripts" / "install_torch.sh"
    index = "https://download.pytorch.org/whl/cu100"
    done = subprocess.run(
        ["sh", str(script), str(bin_dir), "2.13.0", index], capture_output=True, text=True, env=env
    )
    assert done.returncode != 0 and "No matching distribution" in done.stderr
    assert (tmp_path / "torch_version").read_text().strip() == "2.13.0+cpu"  # still there
    assert not any("uninstall" in line for line in calls.read_text().splitlines())


@pytest.mark.parametrize(
    ("driver_cuda", "index"),
    [("12.8", "cu128"), ("13.0", "cu128"), ("12.6", "cu126"), ("12.5", "cu124"), ("11.8", "cu118")],
)
def test_the_suggested_index_is_the_newest_known_one_the_driver_runs(tmp_path, driver_cuda, index):
    smi = f"| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: {driver_cuda} |"
    bin_dir, _, env = fake_venv(tmp_path, "2.13.0+cpu", smi=smi)
    lines = install_torch(bin_dir, env).splitlines()
    assert lines[1] == f"  make install TORCH_INDEX=https://download.pytorch.org/whl/{index}"
    assert "check https://download.pytorch.org/whl/ for the index matching your driver" in lines[2]


def test_install_on_a_gpu_machine_with_a_cpu_torch_prints_the_command(tmp_path):
    smi = "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8 |"
    bin_dir, calls, env = fake_venv(tmp_path, "2.13.0+cpu", smi=smi)
    out = install_torch(bin_dir, env)
    assert not calls.exists()  # a torch is installed: nothing downloaded
    assert out.splitlines()[:2] == [
        "note: this machine has an NVIDIA GPU but torch 2.13.0+cpu has no CUDA; for a CUDA build run:",
        "  make install TORCH_INDEX=https://download.pytorch.org/whl/cu128",
    ]
    no_gpu_bin, _, no_gpu_env = fake_venv(tmp_path / "cpu_box", "2.13.0+cpu", smi=None)
    assert install_torch(no_gpu_bin, no_gpu_env) == ""
