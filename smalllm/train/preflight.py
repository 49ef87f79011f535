"""Every check a run makes before it writes anything, shared by the run and the dry run.

:func:`check_run` holds the checks that need the tokenizer (every task, the placement feasibility of
the mixture, the plan and its memory estimate). :meth:`smalllm.train.trainer.Trainer.setup` calls it
(with the real world size) while :func:`smalllm.train.trainer.train` sets the trainer up, before it
touches the run directory; :func:`check_config`, which ``smalllm train --dry-run`` runs, makes the
same steps in the same order without building anything. So a dry run refuses exactly the configs
that a run refuses, with the same one-line message, and cannot drift from it:

1. trackers (``logging.wandb`` without wandb), device and precision (``fp16`` on a CPU, ``cuda``
   without a GPU unless dry-running);
2. the tokenizer: the cached corpus's when it exists, else the one the run would build (byte,
   char or pretrained), else for ``bpe`` a stand-in of the target size with the same byte ids
   (:func:`smalllm.data.tokenizer.bpe_stand_in`), since training it needs the corpus; a corpus
   still to build gets the build's own checks first (its cache directory, and each local corpus
   file read through);
3. every task against that tokenizer, its tables drawn from the tokens ``data.task_tokens``
   allows (counted in the cached corpus; without one, stand-in tables from the whole vocabulary,
   and the eligible-token check waits for the run), and the placement feasibility of the whole
   mixture, gap schedules included (:func:`smalllm.data.stream.build_families`), and the cheap
   leakage checks: each pool's train and held-out parts disjoint, and no held-out instance verbatim
   inside another task's training instances (:func:`smalllm.data.leakage.check_leaks`);
4. the plan: batch divisibility and the memory estimate (a plan that does not fit is refused);
5. with a corpus at hand, the corpus-dependent stream checks (a row longer than the corpus);
6. the passes over the background corpus the run makes (exact with the corpus, else estimated;
   :mod:`smalllm.data.passes`), logged with a warning above one.

Only building the corpus (for a dry run) and training are left out.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

from smalllm.config import RunConfig
from smalllm.data.background import check_source_files, check_token_files
from smalllm.data.config import DataConfig
from smalllm.data.leakage import check_leaks
from smalllm.data.passes import estimated_background_tokens, passes_line
from smalllm.data.shards import (
    INDEX,
    TokenShards,
    check_corpus_target,
    corpus_dir,
    ensure_corpus,
    open_corpus,
)
from smalllm.data.stream import Family, TaskStream, build_families
from smalllm.data.task_tokens import task_vocab
from smalllm.data.tokenizer import bpe_stand_in, build_tokenizer
from smalllm.errors import ConfigError
from smalllm.train.config import LoggingConfig
from smalllm.train.plan import Plan, Target, make_plan, resolve_target


def check_trackers(logging: LoggingConfig, prefix: str = "logging") -> None:
    """Refuse a tracker whose package is missing, at startup rather than silently not logging."""
    if logging.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"{prefix}.wandb: true but the wandb package is not installed "
            "(pip install wandb, or set logging.wandb=false)"
        )


def check_run(
    cfg: RunConfig,
    tokenizer: Any,
    corpus: TokenShards | None = None,
    target: Target | None = None,
    strict: bool = True,
    show: Callable[[Plan], None] | None = None,
) -> tuple[list[Family], Plan]:
    """Check the tasks and the plan of ``cfg`` against ``tokenizer``; return both for the trainer.

    ``corpus`` (None in a dry run before the corpus is built) decides which tokens the task tables
    may use (:func:`smalllm.data.task_tokens.task_vocab`). ``target``: the device, processes and
    sharding the run has (the trainer's, from its accelerator) or a dry run plans for; None resolves
    one process from ``cfg``. ``show`` sees the plan before the memory check refuses it, so a dry
    run can print what does not fit.
    """
    families = build_families(cfg.data, task_vocab(cfg.data, tokenizer, corpus), cfg.train.global_batch_size)
    check_leaks(families)
    plan = make_plan(cfg, vocab_size=len(tokenizer), strict=strict, target=target)
    if show is not None:
        show(plan)
    plan.refuse_if_too_big()
    return families, plan


def check_config(
    cfg: RunConfig,
    build_corpus: bool,
    strict: bool = True,
    show: Callable[[Plan], None] | None = None,
    log: Callable[[str], None] = print,
    target: Target | None = None,
) -> Plan:
    """Everything a run checks before training (see the module docstring); returns the plan.

    ``build_corpus=False`` (a dry run) never writes: without a cached corpus the tokenizer is
    built or stood in for. ``strict=False`` plans ``train.device=cuda`` without a GPU; ``target``
    is what to plan for (a dry run's processes, sharding and GPU; default: one process of ``cfg``).
    """
    check_trackers(cfg.logging)
    if target is None:
        resolve_target(cfg.train, strict)
    corpus = (
        ensure_corpus(cfg.data, num_proc=min(4, os.cpu_count() or 1), log=log)
        if build_corpus
        else cached_corpus(cfg.data)
    )
    tokenizer = corpus.tokenizer if corpus is not None else planned_tokenizer(cfg.data)
    if corpus is None and cfg.data.tasks and cfg.data.task_tokens.source == "background":
        log(
            "note: no built corpus yet, so task tables are stand-ins drawn from the whole vocabulary; "
            "the run draws them from background tokens (data.task_tokens) and checks there are enough"
        )
    families, plan = check_run(cfg, tokenizer, corpus, target=target, strict=strict, show=show)
    rows = plan.steps * plan.global_batch
    if corpus is not None:
        stream = TaskStream(cfg.data, corpus, cfg.train.global_batch_size, families=families)
        log(passes_line(rows, stream.n_windows, exact=True))
    else:
        tokens = estimated_background_tokens(cfg.data)
        log(passes_line(rows, tokens // cfg.data.seq_len if tokens else None, exact=False))
    return plan


def cached_corpus(cfg: DataConfig) -> TokenShards | None:
    """The built corpus of ``cfg`` if it is in the cache (opened and checked), else None."""
    path = corpus_dir(cfg)
    return open_corpus(path) if (path / INDEX).is_file() else None


def planned_tokenizer(cfg: DataConfig) -> Any:
    """The tokenizer a run of ``cfg`` will use, as far as it is known without building the corpus.

    First the checks that the corpus build would make before it starts: its output directory in the
    cache, and for ``source=files`` each file (read through, not tokenized).
    """
    check_corpus_target(cfg)
    if cfg.background.source == "files":
        check_source_files(cfg.background)
    if cfg.background.source == "tokens":
        check_token_files(cfg.background)
    if cfg.tokenizer.kind == "bpe":
        return bpe_stand_in(cfg.tokenizer.vocab_size)
    return build_tokenizer(cfg.tokenizer)
