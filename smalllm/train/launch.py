"""How a run was launched: processes, sharding and device, from accelerate's own objects.

The trainer reads them from the :class:`~accelerate.Accelerator` it set up (:func:`target_of`) and
refuses a world size that disagrees with the launcher (:func:`check_world_size`); a dry run, which
sets nothing up, reads the same facts from ``--accelerate-config``/``--num-processes``/``--gpu``,
the launcher's environment, or accelerate's default config file (:func:`dry_run_target`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from smalllm.config import RunConfig
from smalllm.errors import SmalllmError
from smalllm.train.environment import WORLD_SIZE_VARIABLES, world_size_from_environment
from smalllm.train.plan import (
    ASSUMED_GPU,
    Target,
    gpu_spec,
    hypothetical_precision,
    resolve_device,
    resolve_precision,
)

CPU_LAUNCH = "accelerate launch --multi_gpu --num_processes N -m smalllm.cli train CONFIG train.device=cpu"
"""The documented way to start N CPU processes (gloo): ``--multi_gpu`` goes through torchrun."""

_FSDP_V1_SHARDING = {
    "FULL_SHARD": "full_shard",
    "HYBRID_SHARD": "full_shard",
    "SHARD_GRAD_OP": "shard_grad_op",
    "_HYBRID_SHARD_ZERO2": "shard_grad_op",
    "NO_SHARD": "none",
}


def fsdp_sharding(plugin: Any) -> str:
    """The memory sharding of accelerate's ``FullyShardedDataParallelPlugin``: FSDP2 reshards the
    weights after forward (``full_shard``) or keeps them gathered until backward (``shard_grad_op``);
    FSDP1 names its strategy."""
    if int(plugin.fsdp_version) == 2:
        return "full_shard" if plugin.reshard_after_forward else "shard_grad_op"
    strategy = plugin.sharding_strategy
    return _FSDP_V1_SHARDING[getattr(strategy, "name", str(strategy)).upper()]


def deepspeed_sharding(zero_stage: int) -> str:
    """ZeRO-3 shards weights too; ZeRO-1/2 shard gradients and optimizer state (modelled as 2)."""
    return "full_shard" if int(zero_stage) == 3 else "shard_grad_op" if int(zero_stage) in (1, 2) else "none"


def target_of(accelerator: Any, precision: str) -> Target:
    """The :class:`Target` of a set-up accelerator: its device, processes and sharding."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    sharding, recompute = "none", False
    if accelerator.distributed_type == DistributedType.FSDP:
        sharding = fsdp_sharding(state.fsdp_plugin)
        recompute = bool(state.fsdp_plugin.activation_checkpointing)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        sharding = deepspeed_sharding(state.deepspeed_plugin.zero_stage)
    return Target(
        device=accelerator.device.type,
        precision=precision,
        world=accelerator.num_processes,
        sharding=sharding,
        activation_checkpointing=recompute,
    )


def check_world_size(world: int, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a run whose process count differs from what the launcher announced.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process: without ``--multi_gpu`` or an
    mpirun hostfile, accelerate's "simple" launcher runs the script once and only exports
    ``MASTER_ADDR`` (which it does only for more than one process or machine) and
    ``ACCELERATE_USE_CPU``, no ``WORLD_SIZE``. That combination (with the launcher's own
    ``127.0.0.1``, so a ``MASTER_ADDR`` a batch script exported for its nodes does not count) is
    refused here, naming the command that does start N CPU processes.
    """
    environ = os.environ if environ is None else environ
    announced = world_size_from_environment(dict(environ))
    if announced is not None and announced != world:
        name = next(v for v in WORLD_SIZE_VARIABLES if v in environ)
        raise SmalllmError(
            f"world size: accelerate runs {world} process(es) but the launcher set {name}={announced}; "
            "check the accelerate config (num_processes, distributed_type) against the launch command"
        )
    simple_launcher_of_many = "ACCELERATE_USE_CPU" in environ and environ.get("MASTER_ADDR") == "127.0.0.1"
    if announced is None and world == 1 and simple_launcher_of_many:
        raise SmalllmError(
            "world size: accelerate launch started 1 process although more were asked for "
            "(--num_processes > 1 without --multi_gpu runs the script once; --cpu needs mpirun); "
            f"start CPU processes with: {CPU_LAUNCH}"
        )


def check_local_rank(visible_gpus: int, environ: Mapping[str, str] | None = None) -> int:
    """This process's GPU index (``LOCAL_RANK``), refused when the launch starts more processes on
    this node than it has GPUs (an 8-GPU accelerate config on a 4-GPU box)."""
    environ = os.environ if environ is None else environ
    local_rank = int(environ["LOCAL_RANK"])
    if local_rank >= visible_gpus:
        per_node = environ.get("LOCAL_WORLD_SIZE", f"more than {local_rank}")
        raise SmalllmError(
            f"world size: the launch starts {per_node} processes on this node but {visible_gpus} GPU(s) are "
            "visible; lower num_processes in the accelerate config (or --num_processes) to the GPUs"
        )
    return local_rank


def launch_config(path: str | None) -> Any | None:
    """accelerate's ``ClusterConfig`` of ``path`` (one-line error naming it), or None."""
    if path is None:
        return None
    from accelerate.commands.config.config_args import load_config_from_file

    if not os.path.isfile(path):
        raise SmalllmError(f"--accelerate-config: no such file '{path}'")
    try:
        return load_config_from_file(path)
    except Exception as exc:  # accelerate raises ValueError/KeyError/yaml errors for a bad file
        raise SmalllmError(f"--accelerate-config: '{path}' is not an accelerate config ({exc})") from None


def _config_target(config: Any, path: str) -> tuple[int, str, bool, bool]:
    """(processes, sharding, activation checkpointing, uses a GPU) of an accelerate ClusterConfig
    read from ``path`` (named in the one-line error for FSDP settings accelerate refuses)."""
    from accelerate.utils import DistributedType

    world = int(config.num_processes or 1)
    sharding, recompute = "none", False
    if config.distributed_type == DistributedType.FSDP:
        fsdp = {k.removeprefix("fsdp_"): v for k, v in (config.fsdp_config or {}).items()}
        try:
            # What accelerate raises for settings it refuses: KeyError for an unknown strategy name,
            # ValueError for a bad number (or int() of the version), ImportError for a version the
            # installed torch cannot give.
            from accelerate.utils import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin(
                fsdp_version=int(fsdp.get("version", 1)),
                reshard_after_forward=fsdp.get("reshard_after_forward"),
                sharding_strategy=fsdp.get("sharding_strategy"),
                activation_checkpointing=fsdp.get("activation_checkpointing"),
            )
        except (ValueError, KeyError, ImportError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SmalllmError(f"{path}: fsdp_config is not usable ({reason})") from None
        sharding, recompute = fsdp_sharding(plugin), bool(plugin.activation_checkpointing)
        if sharding == "full_shard" and fsdp.get("sharding_strategy") == "HYBRID_SHARD":
            world //= max(1, int(config.num_machines or 1))  # hybrid shards within a node only
    elif config.distributed_type == DistributedType.DEEPSPEED:
        sharding = deepspeed_sharding((config.deepspeed_config or {}).get("zero_stage", 2))
    return world, sharding, recompute, not config.use_cpu


def _environment_target(environ: Mapping[str, str]) -> tuple[int, str, bool, bool] | None:
    """The same facts from a launcher's environment (the dry run launched by accelerate/torchrun)."""
    world = world_size_from_environment(dict(environ))
    if world is None:
        return None
    sharding, recompute = "none", False
    if environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch set
        sharding, recompute = fsdp_sharding(plugin), bool(plugin.activation_checkpointing)
    elif environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        sharding = deepspeed_sharding(int(environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2)))
    uses_gpu = environ.get("ACCELERATE_USE_CPU", "false").lower() != "true"
    return world, sharding, recompute, uses_gpu


def dry_run_target(
    cfg: RunConfig,
    accelerate_config: str | None = None,
    num_processes: int | None = None,
    gpu: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """What ``smalllm train --dry-run`` plans for, first found wins:

    1. processes and sharding: ``--accelerate-config FILE``, else the launcher's environment (the dry
       run started by ``accelerate launch``), else accelerate's default config file, else 1 process;
       ``--num-processes`` replaces the count;
    2. the GPU: ``--gpu NAME``, else the one found, else (``train.device=cuda``, or a launch config
       for GPUs, on a machine without one) an assumed :data:`~smalllm.train.plan.ASSUMED_GPU`.
    """
    environ = os.environ if environ is None else environ
    t = cfg.train
    found = _config_target(launch_config(accelerate_config), accelerate_config) if accelerate_config else None
    if found is None:
        found = _environment_target(environ)
    if found is None:
        from smalllm.train.environment import accelerate_config_file

        default = accelerate_config_file()
        found = _config_target(launch_config(default), default) if default else (1, "none", False, False)
    world, sharding, recompute, launch_uses_gpu = found
    if num_processes is not None:
        world = num_processes
    wants_gpu = t.device == "cuda" or (t.device == "auto" and (gpu is not None or launch_uses_gpu))
    if wants_gpu and (gpu is not None or not torch.cuda.is_available()):
        spec = gpu_spec(gpu) if gpu is not None else ASSUMED_GPU
        return Target("cuda", hypothetical_precision(t.precision), world, sharding, spec, recompute)
    if gpu is not None:
        raise SmalllmError(f"--gpu: plans for a GPU, but train.device={t.device}")
    device = resolve_device(t.device)
    return Target(device, resolve_precision(t.precision, device), world, sharding, None, recompute)
