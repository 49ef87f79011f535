"""Checkpoints: a ``save_pretrained`` directory plus the trainer state, published atomically.

One checkpoint directory (its file names are defined in :mod:`smalllm.run_record`) holds:

* the plain transformers files (config, safetensors weights, generation config) and the run's tokenizer;
* the trainer state (:data:`STATE`): one dict with step, tokens, optimizer, scheduler, RNG states,
  data position and the callbacks' state (e.g. the open logging window);
* under FSDP/DeepSpeed, the optimizer shards written by ``accelerate.save_state``;
* the manifest (:data:`MANIFEST`), written last: every file with its size and sha256.

A checkpoint is written into a staging directory and renamed into place, so a crash mid-write leaves
only a temporary directory (deleted later). A checkpoint counts as complete only if its manifest
exists and every listed file matches its size (and, when loading, its checksum). Everything is
read through safetensors or ``torch.load(weights_only=True)``: no pickled code is ever executed.
This module sits below ``train`` and ``eval``: both read checkpoints, neither imports the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from smalllm.errors import SmalllmError
from smalllm.run_record import (
    CHECKPOINT_MANIFEST,
    CHECKPOINT_PREFIX,
    CHECKPOINT_STAGING_PREFIX,
    CHECKPOINT_STATE,
    CHECKPOINT_WEIGHTS,
    atomic_write_text,
    checkpoint_name,
    checkpoint_step,
    checkpoint_strays,
    error_line,
    is_checkpoint_name,
)

MANIFEST = CHECKPOINT_MANIFEST
STATE = CHECKPOINT_STATE
WEIGHTS = CHECKPOINT_WEIGHTS
PREFIX = CHECKPOINT_PREFIX


class CheckpointWriteError(SmalllmError):
    """Writing a checkpoint failed (disk full, file-size limit, ...); the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn any failure of the write inside into one line naming ``path``.

    safetensors and torch report a full disk or a file-size limit without the file name (e.g.
    ``unexpected pos 576 vs 534``); the run's error line must say which write failed.
    """
    try:
        yield
    except Exception as exc:
        raise CheckpointWriteError(f"{path}: cannot write the checkpoint ({error_line(exc)})") from exc


def staging_dir(root: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is renamed into place."""
    return root / f"{CHECKPOINT_STAGING_PREFIX}{checkpoint_name(step)}"


def stage_checkpoint(root: Path, step: int) -> Path:
    """Create the empty temporary directory checkpoint ``step`` is written into."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_checkpoint(
    tmp: Path, step: int, model, tokenizer, state: dict, meta: dict, weights: dict | None = None
) -> Path:
    """Write model, tokenizer, trainer state and manifest into ``tmp``, then rename it into place.

    ``weights`` is a full state dict gathered from sharded processes (FSDP/DeepSpeed); by default
    the model's own parameters are saved.
    """
    try:
        with _writing(tmp / WEIGHTS):
            model.save_pretrained(str(tmp), safe_serialization=True, state_dict=weights)
        if tokenizer is not None:
            with _writing(tmp):
                tokenizer.save_pretrained(str(tmp))
        with _writing(tmp / STATE):
            torch.save(state, tmp / STATE)
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(tmp))] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        manifest = {"step": step, "time": time.time(), "files": files, **meta}
        with _writing(tmp / MANIFEST):
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
    except BaseException:
        # A partial checkpoint is never used; on a full disk, deleting it is what frees the space.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(tmp)
    final = tmp.parent / checkpoint_name(step)
    if final.exists():  # a stale copy of the same step (e.g. from a crashed earlier attempt)
        if stray := checkpoint_strays(final):
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointWriteError(
                f"{final}: holds files smalllm did not write ({', '.join(stray[:3])}); "
                "refusing to replace it, move them out first"
            )
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(tmp.parent)
    return final


def save_checkpoint(root: Path, step: int, model, tokenizer, state: dict, meta: dict) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically (single process) and return its path."""
    return publish_checkpoint(stage_checkpoint(root, step), step, model, tokenizer, state, meta)


def verify_checkpoint(path: Path, checksums: bool = False) -> str | None:
    """None if ``path`` is a complete checkpoint, else the reason it is not."""
    manifest_file = path / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{manifest_file}: missing or unreadable manifest"
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != info["bytes"]:
            return f"{f}: truncated ({f.stat().st_size} of {info['bytes']} bytes)"
        if checksums and _sha256(f) != info["sha256"]:
            return f"{f}: checksum mismatch"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (incomplete ones are ignored)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and is_checkpoint_name(p.name) and verify_checkpoint(p) is None
    ]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: Path) -> Path | None:
    """Newest complete checkpoint that also passes its checksums; corrupt ones are skipped."""
    for path in reversed(list_checkpoints(root)):
        if verify_checkpoint(path, checksums=True) is None:
            return path
    return None


def prune_checkpoints(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, and stale temporary dirs.

    A checkpoint holding a file smalllm did not write is kept (never deleted with it); the kept
    ones are returned so the caller can say so.
    """
    kept = []
    for path in [*list_checkpoints(root)[:-keep_last], *root.glob(f"{CHECKPOINT_STAGING_PREFIX}*")]:
        if checkpoint_strays(path):
            kept.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return kept


def load_trainer_state(path: Path) -> dict:
    """The trainer-state dict of a checkpoint (tensors and plain containers only)."""
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise SmalllmError(f"{path / STATE}: unreadable trainer state ({type(exc).__name__})") from None


def load_model_weights(model, path: Path) -> None:
    """Load the safetensors weights of a checkpoint into ``model`` in place."""
    from safetensors.torch import load_file

    weights = path / WEIGHTS
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise SmalllmError(f"{weights}: unreadable weights ({type(exc).__name__}: {exc})") from None
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:  # load_state_dict raises a multi-line RuntimeError for these, even with strict=False
        k = wrong[0]
        raise SmalllmError(
            f"{weights}: does not match the model ({k} is {tuple(state[k].shape)} in the checkpoint, "
            f"{tuple(own[k].shape)} in the model; check model.preset and the model.* shape keys)"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output heads are saved once; anything else missing means the checkpoint does not fit.
    if getattr(model.config, "tie_word_embeddings", False):
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise SmalllmError(
            f"{weights}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
