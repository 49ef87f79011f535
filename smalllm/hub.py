"""``smalllm push``: upload a run's checkpoint to the Hugging Face Hub (opt-in, never automatic).

What goes up is what a reader needs to load and understand the model: the ``save_pretrained`` files,
the tokenizer and the model card. The trainer state (optimizer moments, RNG states), FSDP/DeepSpeed
shards and smalllm's manifest stay home: they are large, only resume a run, and a pickle-free hub
repository is what other tools expect. The upload goes through ``huggingface_hub``'s ``HfApi``, which
reads the token from ``HF_TOKEN`` or ``huggingface-cli login``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from smalllm.checkpoints import latest_checkpoint, verify_checkpoint
from smalllm.errors import SmalllmError
from smalllm.run_record import (
    CHECKPOINT_CARD,
    CHECKPOINT_MANIFEST,
    CHECKPOINT_UPLOAD_EXCLUDED,
    RunDir,
    checkpoint_name,
    error_line,
    is_checkpoint_name,
    read_json,
)

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def resolve_push_checkpoint(path: str | Path, checkpoint: str | None = None) -> Path:
    """The checkpoint directory to push: ``path`` itself when it is one, else the run's latest
    complete checkpoint, or the one ``checkpoint`` names (a step number or a ``step_…`` name)."""
    path = Path(path)
    if not path.is_dir():
        raise SmalllmError(f"push: '{path}' is not a directory")
    run = RunDir(path)
    if is_checkpoint_name(path.name) and not run.checkpoints_dir.is_dir():
        if checkpoint is not None:
            raise SmalllmError(f"--checkpoint: '{path}' is already a checkpoint; give its run instead")
        chosen = path
    elif not run.checkpoints_dir.is_dir():
        raise SmalllmError(f"push: '{path}' is neither a run directory nor a checkpoint")
    elif checkpoint is None:
        latest = latest_checkpoint(run.checkpoints_dir)
        if latest is None:
            raise SmalllmError(f"push: '{path}' has no complete checkpoint")
        chosen = latest
    else:
        name = checkpoint_name(int(checkpoint)) if checkpoint.isdigit() else checkpoint
        chosen = run.checkpoints_dir / name
        if not is_checkpoint_name(name) or not chosen.is_dir():
            raise SmalllmError(f"--checkpoint: '{checkpoint}' is not a checkpoint of {path}")
    problem = verify_checkpoint(chosen, checksums=True)
    if problem is not None:
        raise SmalllmError(f"push: incomplete or corrupt checkpoint ({problem})")
    return chosen


def upload_files(checkpoint: Path) -> list[str]:
    """The files of ``checkpoint`` that are uploaded (relative paths, sorted): its manifest's list
    without the trainer state, sharded optimizer state and the manifest itself."""
    listed = read_json(checkpoint / CHECKPOINT_MANIFEST).get("files")
    if not isinstance(listed, dict):
        raise SmalllmError(f"push: '{checkpoint}' has no readable manifest")
    return sorted(f for f in listed if Path(f).parts[0] not in CHECKPOINT_UPLOAD_EXCLUDED)


def push(
    path: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    checkpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Upload a checkpoint of the run at ``path`` to the hub repository ``repo_id`` (created when
    missing, ``private`` then); ``revision`` is a branch, created when missing. Returns the URL of
    the commit. Everything is checked before anything is sent."""
    if not _REPO_ID.match(repo_id):
        raise SmalllmError(f"push: '{repo_id}' is not a hub repository id (NAME or OWNER/NAME)")
    if revision is not None and not revision.strip():
        raise SmalllmError("--revision: empty branch name")
    chosen = resolve_push_checkpoint(path, checkpoint)
    files = upload_files(chosen)
    if CHECKPOINT_CARD not in files:
        log(f"note: {chosen} has no model card (saved by an older smalllm); pushing without one")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(chosen),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            allow_patterns=files,
            commit_message=f"smalllm: {chosen.name} of {chosen.parent.parent.name}",
        )
    except SmalllmError:
        raise
    except Exception as exc:  # HTTP errors, no token, no network: one line naming the repository
        raise SmalllmError(f"push: uploading to '{repo_id}' failed ({error_line(exc)})") from exc
    url = str(getattr(commit, "commit_url", None) or commit)
    log(f"pushed {chosen} ({len(files)} files) to {repo_id}{'@' + revision if revision else ''}: {url}")
    return url
