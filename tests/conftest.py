"""Shared fixtures: a session-wide corpus cache and tiny, fast run configs (micro models, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smalllm.config import RunConfig, load_config
from smalllm.train.callbacks.base import Callback, Control, StepRecord

TINY_OVERRIDES = [
    "model.preset=micro-w32",
    "data.seq_len=32",
    "data.tokenizer.kind=bpe",
    "data.tokenizer.vocab_size=300",
    "data.background.synthetic.num_words=200",
    "data.background.synthetic.num_documents=1500",
    "data.background.holdout_documents=50",
    "train.max_tokens=8192",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "train.num_threads=1",
    "train.log_every=2",
    "eval.every_steps=8",
    "eval.batch_size=64",
    "eval.background_sequences=8",
    "logging.tensorboard=false",
    "logging.progress=false",
]
TINY_TASKS = [
    "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32},"
    " {name: copy, frequency: 0.05, unit: example_fraction, placement: document, params: {length: 4}, eval_size: 16}]"
]


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory) -> Path:
    """Keep every built corpus of the test session in one temporary cache (never ~/.cache)."""
    path = tmp_path_factory.mktemp("smalllm-cache")
    os.environ["SMALLLM_CACHE"] = str(path)
    return path


def quiet(_message: str) -> None:
    """Trainer log sink for in-process runs."""


def tiny_config(run_dir: Path | str, *overrides: str) -> RunConfig:
    """A run that trains micro-w32 on a small synthetic corpus in a second or two."""
    return load_config(None, [*TINY_OVERRIDES, *TINY_TASKS, f"run_dir={run_dir}", *overrides])


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    return tiny_config(tmp_path / "run")


class StopAt(Callback):
    """Request a stop after step ``step``, as SIGTERM would (the checkpointer then saves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if record.step == self.step:
            control.request_stop("test")
