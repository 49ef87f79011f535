"""The facts of the machine a run trains on: torch build, devices, libraries, processes, checkout.

``smalllm env`` prints them (:func:`describe_environment`); every run records them in its
``summary.json`` under ``"environment"`` and in its TensorBoard hparams, so a number in a sweep can
always be traced to the hardware, the library versions and the smalllm commit that produced it.
Nothing here initialises a process group or allocates on a device.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import smalllm
from smalllm.errors import SmalllmError

LIBRARIES = ("torch", "transformers", "accelerate", "datasets", "tokenizers")
"""The libraries whose versions decide what a run computes."""

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where launchers (torchrun/accelerate, Intel MPI, Open MPI, MVAPICH) put the number of processes;
accelerate's own state reads the same list."""

CUDA_INDEX_EXAMPLE = "https://download.pytorch.org/whl/cu128"
"""The PyTorch wheel index named in error messages and the README: one that carries recent torch
releases. Which fits a machine depends on its driver (https://download.pytorch.org/whl/ lists them)."""


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux: from ``/proc``, 10 ms resolution; None elsewhere).

    Counts what a timer started in Python cannot: the interpreter's start and every import."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return age if age >= 0 else None  # a virtualised uptime that disagrees: no answer, not a wrong one


_started_a_run = False


def startup_seconds() -> float | None:
    """:func:`process_age_seconds` at the first call in a process (a run's first step), None at later
    calls: a notebook or ``smalllm skills-graph`` trains several runs in one process, and only the
    first one waited for the process to start."""
    global _started_a_run
    if _started_a_run:
        return None
    _started_a_run = True
    return process_age_seconds()


def torch_build() -> str:
    """The installed torch build: ``"torch 2.6.0+cu124 (CUDA 12.4)"``, ``(ROCm …)`` or ``(CPU-only)``."""
    if torch.version.cuda:
        kind = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        kind = f"ROCm {torch.version.hip}"
    else:
        kind = "CPU-only"
    return f"torch {torch.__version__} ({kind})"


def cuda_unavailable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is false, and what to do, in one sentence."""
    if torch.version.cuda or getattr(torch.version, "hip", None):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        masked = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"{torch_build()} sees no GPU{masked}; check the driver with nvidia-smi"
    return (
        f"{torch_build()} is installed; for a CUDA build run "
        f"`make install TORCH_INDEX={CUDA_INDEX_EXAMPLE}` (check https://download.pytorch.org/whl/ for "
        "the index matching your driver; README: Launching on a GPU box)"
    )


def devices() -> list[dict[str, Any]]:
    """The visible accelerator devices with their names and total memory (bytes); empty without one."""
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory)})
    return found


def bf16_supported() -> bool:
    """bf16 on the GPU when there is one; a CPU always computes bf16 (slowly, without tensor cores)."""
    return bool(torch.cuda.is_bf16_supported()) if torch.cuda.is_available() else True


def tf32_supported() -> bool:
    """TF32 tensor cores: Ampere (compute capability 8.0) and later."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def world_size_from_environment(environ: dict[str, str] | None = None) -> int | None:
    """The number of processes a launcher announced (None when none did)."""
    environ = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARIABLES:
        if name in environ:
            value = environ[name].strip()
            if not value.isdigit() or int(value) < 1:
                raise SmalllmError(
                    f"{name}: expected a positive whole number of processes, got {environ[name]!r} "
                    "(set by the launcher, or left over in the shell's environment)"
                )
            return int(value)
    return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`LIBRARIES` (None for one that is missing)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def checkout_state(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout smalllm is imported from; None for an installed
    wheel (no ``.git`` next to the package) or without git. Untracked files (run directories,
    caches) do not make a checkout dirty: only changes to tracked files do."""
    root = root if root is not None else Path(smalllm.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0 or status.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def accelerate_config_file() -> str | None:
    """The accelerate config file ``accelerate launch`` uses without ``--config_file``, if any."""
    from accelerate.commands.config import default_config_file

    return default_config_file if os.path.isfile(default_config_file) else None


def accelerate_config_summary(path: str | None) -> str | None:
    """``MULTI_GPU, 8 processes, bf16`` for the accelerate config file ``path`` (read by accelerate)."""
    if path is None:
        return None
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(path)
    except Exception as exc:  # a broken default config is a fact to report, not a crash of `env`
        return f"unreadable ({type(exc).__name__})"
    kind = getattr(config.distributed_type, "value", config.distributed_type)
    return f"{kind}, {config.num_processes} processes, {config.mixed_precision}"


def collect_environment() -> dict[str, Any]:
    """Every fact :func:`describe_environment` prints, as a JSON-serialisable dict."""
    checkout = checkout_state()
    config_file = accelerate_config_file()
    return {
        "torch_build": torch_build(),
        "cuda_available": torch.cuda.is_available(),
        "devices": devices(),
        "bf16_supported": bf16_supported(),
        "tf32_supported": tf32_supported(),
        "world_size_env": world_size_from_environment(),
        "accelerate_config_file": config_file,
        "accelerate_config": accelerate_config_summary(config_file),
        "versions": {
            "python": platform.python_version(),
            "smalllm": smalllm.__version__,
            **library_versions(),
        },
        "git_commit": None if checkout is None else checkout["commit"],
        "git_dirty": None if checkout is None else checkout["dirty"],
        "host": platform.node(),
    }


def describe_environment(env: dict[str, Any]) -> str:
    """The text of ``smalllm env``: one fact per line."""
    gib = 1024**3
    found = env["devices"]
    device_lines = [f"  cuda:{d['index']}  {d['name']}  {d['memory_bytes'] / gib:.1f} GiB" for d in found]
    if not found:
        device_lines = ["  none (training runs on the CPU)"]
    versions = env["versions"]
    world = env["world_size_env"]
    commit = env["git_commit"]
    lines = [
        f"torch build   {env['torch_build']}",
        f"devices       {len(found)} GPU(s)",
        *device_lines,
        f"bf16          {'yes' if env['bf16_supported'] else 'no'}    TF32 {'yes' if env['tf32_supported'] else 'no'}",
        f"world size    {world if world is not None else 1} ({'from the launcher' if world is not None else 'no launcher: one process'})",
        f"accelerate    config file {env['accelerate_config_file'] or 'none (defaults; pass --config_file to accelerate launch)'}"
        + (f": {env['accelerate_config']}" if env["accelerate_config"] else ""),
        "versions      " + "  ".join(f"{name} {version or 'missing'}" for name, version in versions.items()),
        "smalllm       "
        + (
            "not a git checkout"
            if commit is None
            else f"commit {commit[:12]}{' (dirty)' if env['git_dirty'] else ''}"
        ),
        f"host          {env['host']}",
    ]
    return "\n".join(lines)
