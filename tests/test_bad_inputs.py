"""Bad inputs: every case exits non-zero with exactly one ``smalllm: error:`` line naming the field or
file, without a traceback, and leaves what was written before untouched.

Cases run in-process through :func:`smalllm.cli.main`; a few also run as real subprocesses to prove
the exit code and stderr end to end, and one with ``--debug`` to show that it gives the traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, TINY_TASKS, assert_one_line_error, tiny_config, tree_snapshot

from smalllm import checkpoints as ckpt
from smalllm.cli import main
from smalllm.data.shards import corpus_dir
from smalllm.eval import checkpoint_eval
from smalllm.run_record import RunDir
from smalllm.tasks import _REGISTRY as TASK_REGISTRY
from smalllm.tasks import Instance, Task, register, registered_tasks
from smalllm.train.trainer import train

BASE = (*TINY_OVERRIDES, *TINY_TASKS, "train.device=cpu")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus_cache) -> Path:
    """A completed tiny run (config, metrics, eval sets, final checkpoint); cases work on copies."""
    run_dir = tmp_path_factory.mktemp("bad-inputs") / "run"
    assert train(tiny_config(run_dir, "train.device=cpu"), log=lambda _m: None)["status"] == "completed"
    return run_dir


@dataclass
class Ctx:
    """What a case builder gets: a scratch directory and the finished run to copy from."""

    tmp: Path
    finished: Path
    guarded: list[Path] = field(default_factory=list)
    """Existing runs the case touches: their files must be unchanged afterwards."""
    markers: list[Path] = field(default_factory=list)
    """Files that would exist only if untrusted code had run."""
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def run_copy(self) -> Path:
        run = self.tmp / "existing"
        shutil.copytree(self.finished, run)
        self.guarded.append(run)
        return run

    def checkpoint_copy(self) -> tuple[Path, Path]:
        run = self.run_copy()
        latest = ckpt.latest_checkpoint(run / "checkpoints")
        assert latest is not None
        return run, latest

    def corpus_copy(self) -> tuple[Path, Path]:
        """(cache root, corpus directory) of a private copy of the tiny config's token shards."""
        src = corpus_dir(tiny_config(self.tmp).data)
        dst = self.tmp / "cache" / src.name
        shutil.copytree(src, dst)
        return dst.parent, dst

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


Builder = Callable[[Ctx], tuple[list[str], str]]
CASES: dict[str, Builder] = {}
DRY_RUN_CASES: list[str] = []
"""Cases that are one ``smalllm train`` of a new run: ``--dry-run`` must refuse them the same way."""


def case(name: str, dry_run: bool = False) -> Callable[[Builder], Builder]:
    def register_case(fn: Builder) -> Builder:
        assert name not in CASES, name
        CASES[name] = fn
        if dry_run:
            DRY_RUN_CASES.append(name)
        return fn

    return register_case


def train_argv(ctx: Ctx, *overrides: str) -> list[str]:
    return ["train", *BASE, f"run_dir={ctx.tmp / 'run'}", *overrides]


def override_case(name: str, expect: str, *overrides: str) -> None:
    """A case that is one ``smalllm train`` of the tiny config with some bad overrides."""
    case(name, dry_run=True)(lambda ctx: (train_argv(ctx, *overrides), expect))


# ----------------------------------------------------------------------------------------------
# Config files
# ----------------------------------------------------------------------------------------------

YAML_CASES = {
    # name: (file content, expected text in the error line)
    "yaml-unknown-section": ("trian:\n  lr: 0.1\n", "trian: unknown key (did you mean 'train'?)"),
    "yaml-unknown-key": ("train:\n  lrr: 0.1\n", "train.lrr: unknown key (did you mean 'lr'?)"),
    "yaml-unknown-deep-key": (
        "data:\n  background:\n    synthetic:\n      num_word: 10\n",
        "data.background.synthetic.num_word: unknown key (did you mean 'num_words'?)",
    ),
    "yaml-unknown-task-key": (
        "data:\n  tasks:\n    - name: copy\n      freq: 0.1\n",
        "data.tasks.0.freq: unknown key (did you mean 'frequency'?)",
    ),
    "yaml-wrong-type": ("train:\n  max_tokens: lots\n", "train.max_tokens: wrong type"),
    "yaml-float-for-int": ("train:\n  max_tokens: 1.5\n", "train.max_tokens: wrong type"),
    "yaml-exponent-without-digits": ("train:\n  lr: .e5\n", "train.lr: wrong type"),
    "yaml-tasks-not-a-list": ("data:\n  tasks:\n    name: copy\n", "data.tasks: expected a list"),
    "yaml-invalid": ("train:\n  lr: [1, 2\n", "bad.yaml: line 3 is not valid YAML"),
    "yaml-tab-indent": ("train:\n\tlr: 1\n", "bad.yaml: line 2 is not valid YAML"),
    "yaml-top-level-list": ("- train\n- model\n", "bad.yaml: top level must be a mapping"),
    "yaml-top-level-scalar": ("just text\n", "bad.yaml: top level must be a mapping"),
    "yaml-duplicate-section": (
        "train:\n  lr: 0.1\nmodel:\n  arch: llama\ntrain:\n  seed: 3\n",
        "bad.yaml: line 5: duplicate key 'train' (first given at line 1)",
    ),
    "yaml-duplicate-key": (
        "train:\n  lr: 0.1\n  seed: 1\n  lr: 0.2\n",
        "bad.yaml: line 4: duplicate key 'train.lr' (first given at line 2)",
    ),
    "yaml-duplicate-task-key": (
        "data:\n  tasks:\n    - name: copy\n      frequency: 0.1\n      frequency: 0.2\n",
        "bad.yaml: line 5: duplicate key 'data.tasks.0.frequency' (first given at line 4)",
    ),
    "yaml-anchor-and-alias": (
        "model: &m {arch: llama}\neval: *m\n",
        "bad.yaml: line 1: YAML anchors (&m) are not supported",
    ),
    "yaml-merge-key": (
        "train:\n  <<: *base\n",
        "bad.yaml: line 2: YAML aliases (*base) are not supported",
    ),
    "yaml-alias-bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "bad.yaml: line 1: YAML anchors (&a) are not supported",
    ),
    "yaml-too-deep": (
        "run_dir: " + "[" * 200 + "]" * 200 + "\n",
        "bad.yaml: line 1: nested more than 64 levels",
    ),
    "yaml-literal-choice": ("model:\n  arch: gpt3\n", "model.arch: 'gpt3' is not one of olmo, llama"),
    "yaml-bad-seed": (
        "train:\n  seed: -1\n",
        "train.seed: a seed must be an integer in [0, 4294967295], got -1",
    ),
}


def yaml_case(name: str, text: str, expect: str) -> None:
    def build(ctx: Ctx) -> tuple[list[str], str]:
        path = ctx.write("bad.yaml", text)
        return ["train", str(path), f"run_dir={ctx.tmp / 'run'}"], expect

    case(name, dry_run=True)(build)


for _name, (_text, _expect) in YAML_CASES.items():
    yaml_case(_name, _text, _expect)


@case("yaml-missing-file", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    return ["train", str(ctx.tmp / "nope.yaml")], "nope.yaml: config file not found"


@case("yaml-not-utf8", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    path = ctx.tmp / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x9c garbage")
    return ["train", str(path)], "binary.yaml: not a text (UTF-8) YAML file"


@case("yaml-too-large", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    path = ctx.write("big.yaml", "run_dir: x\n" + "# padding\n" * 500_000)
    return ["train", str(path)], "big.yaml: larger than 4 MiB; not a config"


@case("yaml-python-tag-is-not-executed", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    marker = ctx.tmp / "yaml-ran-code"
    ctx.markers.append(marker)
    text = f"run_dir: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    return ["train", str(ctx.write("evil.yaml", text))], "evil.yaml: line 1 is not valid YAML"


# ----------------------------------------------------------------------------------------------
# Command-line overrides
# ----------------------------------------------------------------------------------------------

override_case("override-unknown-key", "train.lrr: unknown key (did you mean 'lr'?)", "train.lrr=1e-3")
override_case("override-unknown-section", "trian: unknown key (did you mean 'train'?)", "trian.lr=1e-3")
override_case("override-wrong-type-float", "train.lr: wrong type", "train.lr=fast")
override_case("override-wrong-type-bool", "logging.tensorboard: wrong type", "logging.tensorboard=maybe")
override_case("override-no-equals", "override 'train.lr': expected key=value", "train.lr")
override_case("override-empty-key", "override '=5': expected key=value", "=5")
override_case("override-not-a-section", "train.lr.x: 'train.lr' is not a section", "train.lr.x=1")
override_case("override-list-index", "data.tasks.5: no such list element", "data.tasks.5.frequency=0.1")
override_case(
    "override-task-list-unknown-key",
    "data.tasks.0.freq: unknown key (did you mean 'frequency'?)",
    "data.tasks=[{name: copy, freq: 0.1}]",
)
override_case("range-lr-negative", "train.lr: must be > 0", "train.lr=-1")
override_case("range-warmup", "train.warmup_fraction: must be in [0, 1)", "train.warmup_fraction=1.5")
override_case("range-seq-len", "data.seq_len: must be >= 8", "data.seq_len=4")
override_case("range-max-tokens", "train.max_tokens: must be > 0", "train.max_tokens=0")
override_case(
    "range-test-fraction", "data.tasks.0.test_fraction: must be in (0, 1)", "data.tasks.0.test_fraction=1"
)
override_case("unknown-preset", "model.preset: unknown preset 'micro-w33'", "model.preset=micro-w33")
override_case("unknown-arch", "model.arch: 'gpt3' is not one of", "model.arch=gpt3")
override_case("unknown-unit", "data.tasks.0.unit: 'per_tok' is not one of", "data.tasks.0.unit=per_tok")
override_case("unknown-placement", "data.tasks.0.placement: 'suffix'", "data.tasks.0.placement=suffix")
override_case(
    "unknown-task-schedule", "data.tasks.0.schedule.kind: 'burst'", "data.tasks.0.schedule.kind=burst"
)
override_case("unknown-lr-schedule", "train.schedule: 'cosin' is not one of", "train.schedule=cosin")
override_case("unknown-pool", "data.tasks.0.pool: 'infinite'", "data.tasks.0.pool=infinite")
override_case("unknown-tokenizer-kind", "data.tokenizer.kind: 'wordpiece'", "data.tokenizer.kind=wordpiece")
override_case("unknown-nan-policy", "train.nan_policy: 'ignore'", "train.nan_policy=ignore")
override_case(
    "batch-not-divisible", "train.global_batch_size: 8 is not a multiple", "train.micro_batch_size=3"
)
override_case("fp16-on-cpu", "train.precision: fp16 needs a GPU", "train.precision=fp16")

override_case(
    "override-duplicate-key",
    "override data.tasks=[{name: copy, name: t_cmp}]: line 1: duplicate key 'data.tasks.0.name'",
    "data.tasks=[{name: copy, name: t_cmp}]",
)
override_case(
    "override-alias",
    "line 1: YAML anchors (&t) are not supported",
    "data.tasks=[&t {name: copy}, *t]",
)
override_case(
    "override-literal-in-list",
    "data.tasks.0.unit: 'per_tok' is not one of",
    "data.tasks=[{name: copy, unit: per_tok}]",
)

# ----------------------------------------------------------------------------------------------
# Ranges: every numeric field refuses negative, infinite, NaN and absurdly large values
# ----------------------------------------------------------------------------------------------

SEED_RULE = "a seed must be an integer in [0, 4294967295]"
RANGE_CASES: list[tuple[str, str, str]] = [
    # (name, override, expected text in the error line)
    ("seed-train-negative", "train.seed=-1", f"train.seed: {SEED_RULE}, got -1"),
    (
        "seed-train-2**70",
        "train.seed=1180591620717411303424",
        f"train.seed: {SEED_RULE}, got 1180591620717411303424",
    ),
    ("seed-train-2**32", "train.seed=4294967296", f"train.seed: {SEED_RULE}, got 4294967296"),
    ("seed-data-negative", "data.seed=-1", f"data.seed: {SEED_RULE}, got -1"),
    ("seed-data-huge", "data.seed=1180591620717411303424", f"data.seed: {SEED_RULE}"),
    ("seed-task-negative", "data.tasks.0.seed=-7", f"data.tasks.0.seed: {SEED_RULE}, got -7"),
    ("seed-task-huge", "data.tasks.1.seed=1180591620717411303424", f"data.tasks.1.seed: {SEED_RULE}"),
    ("eps-negative", "train.eps=-1e-8", "train.eps: must be > 0, got -1e-08"),
    ("eps-zero", "train.eps=0", "train.eps: must be > 0, got 0.0"),
    ("eps-nan", "train.eps=nan", "train.eps: must be a finite number > 0, got nan"),
    ("eps-huge", "train.eps=10", "train.eps: must be <= 1, got 10.0"),
    ("lr-inf", "train.lr=.inf", "train.lr: must be a finite number > 0, got inf"),
    ("lr-nan", "train.lr=nan", "train.lr: must be a finite number > 0, got nan"),
    ("beta1-one", "train.beta1=1", "train.beta1: must be in [0, 1), got 1.0"),
    ("beta1-nan", "train.beta1=nan", "train.beta1: must be in [0, 1), got nan"),
    ("beta2-negative", "train.beta2=-0.5", "train.beta2: must be in [0, 1), got -0.5"),
    ("weight-decay-negative", "train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
    ("weight-decay-inf", "train.weight_decay=inf", "train.weight_decay: must be a finite number >= 0"),
    ("grad-clip-negative", "train.grad_clip=-1", "train.grad_clip: must be >= 0, got -1.0"),
    ("grad-clip-nan", "train.grad_clip=nan", "train.grad_clip: must be a finite number >= 0, got nan"),
    ("min-lr-ratio-above-one", "train.min_lr_ratio=2", "train.min_lr_ratio: must be in [0, 1], got 2.0"),
    ("decay-fraction-negative", "train.decay_fraction=-0.2", "train.decay_fraction: must be in [0, 1]"),
    ("max-tokens-1e29", "train.max_tokens=1e29", "train.max_tokens: must be <= 1e15, got 1e29"),
    (
        "max-tokens-written-out",
        "train.max_tokens=100000000000000000000000000000",
        "train.max_tokens: must be <= 1e15, got 1e29",
    ),
    ("max-tokens-negative", "train.max_tokens=-5", "train.max_tokens: must be > 0, got -5"),
    ("lr-exponent-without-digits", "train.lr=-e5", "train.lr: wrong type"),
    ("max-tokens-inf", "train.max_tokens=.inf", "train.max_tokens: wrong type"),
    ("global-batch-zero", "train.global_batch_size=0", "train.global_batch_size: must be >= 1, got 0"),
    ("micro-batch-huge", "train.micro_batch_size=100000000", "train.micro_batch_size: must be <= 1e7"),
    ("num-threads-zero", "train.num_threads=0", "train.num_threads: must be >= 1, got 0"),
    ("num-threads-huge", "train.num_threads=100000", "train.num_threads: must be <= 4096"),
    ("log-every-zero", "train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("checkpoint-every-negative", "train.checkpoint_every=-1", "train.checkpoint_every: must be >= 0"),
    ("keep-last-zero", "train.keep_last=0", "train.keep_last: must be >= 1, got 0"),
    ("peak-flops-negative", "train.peak_flops=-1", "train.peak_flops: must be > 0, got -1.0"),
    ("peak-flops-inf", "train.peak_flops=inf", "train.peak_flops: must be a finite number > 0, got inf"),
    ("memory-fraction-zero", "train.memory_fraction=0", "train.memory_fraction: must be in (0, 1], got 0.0"),
    ("memory-fraction-nan", "train.memory_fraction=nan", "train.memory_fraction: must be in (0, 1], got nan"),
    ("device-unknown", "train.device=tpu", "train.device: 'tpu' is not one of auto, cpu, cuda"),
    (
        "precision-unknown",
        "train.precision=fp8",
        "train.precision: 'fp8' is not one of auto, fp32, bf16, fp16",
    ),
    (
        "loss-ratio-negative",
        "eval.criterion={metric: loss_ratio, threshold: -0.5}",
        "eval.criterion.threshold: must be in (0, 1), got -0.5",
    ),
    (
        "loss-ratio-nan",
        "eval.criterion={metric: loss_ratio, threshold: .nan}",
        "eval.criterion.threshold: must be in (0, 1), got nan",
    ),
    (
        "loss-ratio-chance",
        "eval.criterion={metric: loss_ratio, threshold: 1}",
        "eval.criterion.threshold: must be in (0, 1), got 1",
    ),
    (
        "accuracy-threshold-zero",
        "eval.criterion.threshold=0",
        "eval.criterion.threshold: must be in (0, 1], got 0.0",
    ),
    ("accuracy-threshold-inf", "eval.criterion.threshold=inf", "eval.criterion.threshold: must be in (0, 1]"),
    ("criterion-metric", "eval.criterion.metric=accuracy", "eval.criterion.metric: 'accuracy' is not one of"),
    ("criterion-at-end", "eval.criterion.at_end=maybe", "eval.criterion.at_end: 'maybe' is not one of"),
    ("eval-batch-tokens-zero", "eval.batch_tokens=0", "eval.batch_tokens: must be >= 1, got 0"),
    ("eval-every-steps-negative", "eval.every_steps=-1", "eval.every_steps: must be >= 0, got -1"),
    ("eval-every-tokens-zero", "eval.every_tokens=0", "eval.every_tokens: must be > 0, got 0"),
    ("eval-every-tokens-huge", "eval.every_tokens=1e20", "eval.every_tokens: must be <= 1e15, got 1e20"),
    ("eval-batch-zero", "eval.batch_size=0", "eval.batch_size: must be >= 1, got 0"),
    ("eval-background-negative", "eval.background_sequences=-1", "eval.background_sequences: must be >= 0"),
    ("eval-samples-negative", "eval.samples=-1", "eval.samples: must be >= 0, got -1"),
    ("eval-sample-tokens-huge", "eval.sample_tokens=5000", "eval.sample_tokens: must be <= 4096, got 5000"),
    ("eval-patience-negative", "eval.criterion.patience=-1", "eval.criterion.patience: must be >= 0, got -1"),
    ("init-std-zero", "model.init_std=0", "model.init_std: must be > 0, got 0.0"),
    ("init-std-inf", "model.init_std=inf", "model.init_std: must be a finite number > 0, got inf"),
    ("init-std-huge", "model.init_std=5", "model.init_std: must be <= 1, got 5.0"),
    ("attn-unknown", "model.attn_implementation=flash", "model.attn_implementation: 'flash' is not one of"),
    ("seq-len-huge", "data.seq_len=1073741824", "data.seq_len: must be <= 1048576, got 1073741824"),
    ("vocab-size-small", "data.tokenizer.vocab_size=32", "data.tokenizer.vocab_size: must be >= 64, got 32"),
    ("vocab-size-huge", "data.tokenizer.vocab_size=1e9", "data.tokenizer.vocab_size: must be <= 2097152"),
    (
        "num-words-small",
        "data.background.synthetic.num_words=5",
        "data.background.synthetic.num_words: must be >= 20",
    ),
    (
        "zipf-inf",
        "data.background.synthetic.zipf_exponent=inf",
        "data.background.synthetic.zipf_exponent: must be a finite number > 0",
    ),
    (
        "zipf-zero",
        "data.background.synthetic.zipf_exponent=0",
        "data.background.synthetic.zipf_exponent: must be > 0",
    ),
    (
        "num-documents-zero",
        "data.background.synthetic.num_documents=0",
        "data.background.synthetic.num_documents: must be > 0",
    ),
    (
        "max-documents-zero",
        "data.background.max_documents=0",
        "data.background.max_documents: must be >= 1, got 0",
    ),
    (
        "holdout-negative",
        "data.background.holdout_documents=-1",
        "data.background.holdout_documents: must be >= 0",
    ),
    (
        "holdout-takes-everything",
        "data.background.holdout_documents=1500",
        "data.background.holdout_documents: 1500 leaves none of the corpus's 1500 documents to train on",
    ),
    ("pool-size-one", "data.tasks.0.pool_size=1", "data.tasks.0.pool_size: must be >= 2, got 1"),
    ("pool-size-huge", "data.tasks.0.pool_size=1e12", "data.tasks.0.pool_size: must be <= 1e7"),
    ("eval-size-zero", "data.tasks.0.eval_size=0", "data.tasks.0.eval_size: must be >= 1, got 0"),
    (
        "test-fraction-nan",
        "data.tasks.0.test_fraction=nan",
        "data.tasks.0.test_fraction: must be in (0, 1), got nan",
    ),
    (
        "gap-batches-zero",
        "data.tasks.0.schedule.gap_batches=0",
        "data.tasks.0.schedule.gap_batches: must be >= 1",
    ),
    (
        "frequency-nan",
        "data.tasks.0.frequency=nan",
        "data.tasks.0.frequency: must be a finite number >= 0, got nan",
    ),
    (
        "frequency-per-token-above-one",
        "data.tasks.0.frequency=3",
        "data.tasks.0.frequency: a per_token must be <= 1",
    ),
    ("frequency-huge", "data.tasks.0.frequency=1e300", "data.tasks.0.frequency: a per_token must be <= 1"),
]
for _name, _override, _expect in RANGE_CASES:
    override_case(_name, _expect, _override)

override_case(
    "hub-streaming-without-limit",
    "data.background.max_documents: required with streaming=true",
    "data.background.source=hub",
    "data.background.hub_name=some/corpus",
    "data.background.streaming=true",
)
override_case(
    "wandb-without-project",
    "logging.wandb_project: must not be empty",
    "logging.wandb=true",
    "logging.wandb_project=' '",
)

# ----------------------------------------------------------------------------------------------
# Frequency specifications
# ----------------------------------------------------------------------------------------------

override_case(
    "frequency-negative",
    "data.tasks.0.frequency: must be a finite number >= 0",
    "data.tasks.0.frequency=-0.01",
)
override_case(
    "frequency-infinite", "data.tasks.0.frequency: must be a finite number", "data.tasks.0.frequency=.inf"
)
override_case("frequency-not-a-number", "data.tasks[0].frequency: wrong type", "data.tasks.0.frequency=often")
override_case(
    "fraction-above-one",
    "data.tasks.1.frequency: a example_fraction must be <= 1",
    "data.tasks.1.frequency=1.5",
)
override_case(
    "fractions-sum-above-one",
    "data.tasks: example_fraction frequencies sum to 1.2 > 1",
    "data.tasks.0.unit=example_fraction",
    "data.tasks.0.frequency=0.6",
    "data.tasks.1.frequency=0.6",
)
override_case(
    "piecewise-point-malformed",
    "data.tasks.0.schedule.points: each point is [step, frequency]",
    "data.tasks.0.schedule.kind=piecewise",
    "data.tasks.0.schedule.points=[[0]]",
)
override_case(
    "piecewise-point-empty",
    "data.tasks.0.schedule.points: each point is [step, frequency]",
    "data.tasks.0.schedule.kind=piecewise",
    "data.tasks.0.schedule.points=[[]]",
)
override_case(
    "piecewise-steps-decreasing",
    "data.tasks.0.schedule.points: steps must be >= 0 and increasing",
    "data.tasks.0.schedule.kind=piecewise",
    "data.tasks.0.schedule.points=[[5, 0.01], [2, 0.01]]",
)
override_case(
    "piecewise-missing-points",
    "data.tasks.0.schedule.points: piecewise schedule needs",
    "data.tasks.0.schedule.kind=piecewise",
)
override_case(
    "piecewise-not-numbers",
    "data.tasks[0].schedule.points[0][1]: wrong type",
    "data.tasks.0.schedule.kind=piecewise",
    "data.tasks.0.schedule.points=[[0, lots]]",
)
override_case(
    "frequency-over-capacity", "data.tasks: at these frequencies a row may need", "data.tasks.0.frequency=0.5"
)
override_case(
    # 0.32 t_cmp instances per 32-token row fit spread out; a 40-batch period in one batch does not.
    "gap-period-overflows-first-batch",
    "data.tasks.0.schedule.gap_batches: a period's instances all arrive in its first batch, so a row may need",
    "data.tasks.0.schedule.kind=gap",
    "data.tasks.0.schedule.gap_batches=40",
)
override_case(
    "skill-weights-count",
    "data.tasks.0.skill_weights: 2 weights for 1 sub-skills",
    "data.tasks.0.skill_weights=[1, 2]",
)

PIECEWISE = "data.tasks.0.schedule.kind=piecewise"
override_case(
    "piecewise-frequency-inf",
    "data.tasks.0.schedule.points.1.1: must be a finite number >= 0, got inf",
    PIECEWISE,
    "data.tasks.0.schedule.points=[[0, 0.01], [5, .inf]]",
)
override_case(
    "piecewise-frequency-nan",
    "data.tasks.0.schedule.points.0.1: must be a finite number >= 0, got nan",
    PIECEWISE,
    "data.tasks.0.schedule.points=[[0, .nan]]",
)
override_case(
    "piecewise-frequency-negative",
    "data.tasks.0.schedule.points.0.1: must be a finite number >= 0, got -0.1",
    PIECEWISE,
    "data.tasks.0.schedule.points=[[0, -0.1]]",
)
override_case(
    "piecewise-step-inf",
    "data.tasks.0.schedule.points.1.0: must be a finite number >= 0, got inf",
    PIECEWISE,
    "data.tasks.0.schedule.points=[[0, 0.01], [.inf, 0.02]]",
)
override_case(
    "piecewise-step-fractional",
    "data.tasks.0.schedule.points.1.0: a step must be whole, got 2.5",
    PIECEWISE,
    "data.tasks.0.schedule.points=[[0, 0.01], [2.5, 0.02]]",
)
override_case(
    "piecewise-step-negative",
    "data.tasks.0.schedule.points.0.0: must be >= 0, got -1.0",
    PIECEWISE,
    "data.tasks.0.schedule.points=[[-1, 0.01]]",
)
override_case(
    "piecewise-fraction-above-one",
    "data.tasks.1.schedule.points: a example_fraction must be <= 1",
    "data.tasks.1.schedule.kind=piecewise",
    "data.tasks.1.schedule.points=[[0, 0.05], [3, 1.5]]",
)
override_case(
    "skill-weights-inf",
    "data.tasks.0.skill_weights.0: must be a finite number >= 0, got inf",
    "data.tasks.0.skill_weights=[.inf]",
)
override_case(
    "skill-weights-nan",
    "data.tasks.0.skill_weights.0: must be a finite number >= 0, got nan",
    "data.tasks.0.skill_weights=[.nan]",
)
override_case(
    "skill-weights-negative",
    "data.tasks.0.skill_weights.1: must be a finite number >= 0, got -1.0",
    "data.tasks=[{name: addition, frequency: 0.01, skill_weights: [1, -1]}]",
)
override_case(
    "skill-weights-all-zero",
    "data.tasks.0.skill_weights: must be non-negative with a positive sum",
    "data.tasks=[{name: addition, frequency: 0.01, skill_weights: [0, 0]}]",
)
override_case(
    "skill-weights-empty",
    "data.tasks.0.skill_weights: must be non-negative with a positive sum",
    "data.tasks.0.skill_weights=[]",
)
override_case(
    "skill-weights-huge",
    "data.tasks.0.skill_weights.0: must be <= 1e9, got 1e+300",
    "data.tasks=[{name: addition, frequency: 0.01, skill_weights: [1e+300, 1e+300]}]",
)
override_case(
    "skill-weights-count-family",
    "data.tasks.0.skill_weights: 2 weights for 3 sub-skills of 'addition'",
    "data.tasks=[{name: addition, frequency: 0.01, skill_weights: [1, 1]}]",
)

# ----------------------------------------------------------------------------------------------
# Task parameters
# ----------------------------------------------------------------------------------------------

override_case(
    "task-unknown",
    "data.tasks.0.name: unknown task 't_cmpp' (did you mean 't_cmp'?)",
    "data.tasks.0.name=t_cmpp",
)
override_case(
    "task-param-unknown", "data.tasks.0.params.num_vals: unknown parameter", "data.tasks.0.params.num_vals=3"
)
override_case(
    "task-param-type",
    "data.tasks.0.params.num_values: expected an integer",
    "data.tasks.0.params.num_values=abc",
)
override_case(
    "task-param-range",
    "data.tasks.0.params: num_values: must be at least 2",
    "data.tasks.0.params.num_values=1",
)
override_case(
    "task-listed-twice",
    "data.tasks.1.name: task 'copy' is listed twice",
    "data.tasks=[{name: copy}, {name: copy}]",
)


@case("tasks-show-unknown")
def _(ctx: Ctx) -> tuple[list[str], str]:
    return ["tasks", "show", "t_cmpp"], "unknown task 't_cmpp' (did you mean 't_cmp'?)"


@case("tasks-show-param-syntax")
def _(ctx: Ctx) -> tuple[list[str], str]:
    return ["tasks", "show", "t_cmp", "num_values"], "task parameter 'num_values': expected name=value"


@case("models-unknown-arch")
def _(ctx: Ctx) -> tuple[list[str], str]:
    return [
        "models",
        "--arch",
        "gpt3",
    ], "--arch: 'gpt3' is not one of olmo, llama, gpt2, gpt_neox (did you mean 'gpt2'?)"


@case("data-inspect-negative-rows")
def _(ctx: Ctx) -> tuple[list[str], str]:
    return ["data", "inspect", *BASE, "--rows", "-1"], "--rows and --steps must be >= 0"


@case("task-from-module-path-is-not-imported", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    """Configs name registered tasks; they never make smalllm import code."""
    marker = ctx.tmp / "plugin-imported"
    ctx.markers.append(marker)
    (ctx.tmp / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    sys.path.insert(0, str(ctx.tmp))
    ctx.cleanups.append(lambda: sys.path.remove(str(ctx.tmp)))
    return train_argv(
        ctx, "data.tasks.0.name=evil_plugin:Task"
    ), "data.tasks.0.name: unknown task 'evil_plugin:Task'"


# ----------------------------------------------------------------------------------------------
# Vocabulary and context
# ----------------------------------------------------------------------------------------------


class OutOfVocabTask(Task):
    """Test-only plug-in whose answer is a token id just past the end of the vocabulary."""

    name = "test_out_of_vocab"
    description = "test only: answers with an id outside the vocabulary"

    @dataclass
    class Params:
        offset: int = 0
        """How far past the last id the answer is."""

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        prompt = tuple(int(t) for t in rng.integers(2, self.vocab.vocab_size, size=4))
        return Instance(prompt, (self.vocab.vocab_size + self.params.offset,), skill)


@case("vocab-plugin-emits-out-of-range-id", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    registered_tasks()  # load the built-ins first, then add the test plug-in in-process
    register(OutOfVocabTask)
    ctx.cleanups.append(lambda: TASK_REGISTRY.pop(OutOfVocabTask.name, None))
    return (
        train_argv(ctx, f"data.tasks=[{{name: {OutOfVocabTask.name}, frequency: 0.01}}]"),
        "data.tasks.0.name: task 'test_out_of_vocab' emits token id 300 outside the vocabulary of 300",
    )


override_case(
    "vocab-too-small-for-task",
    "data.tasks.0.params: task 't_cmp': task needs 400 distinct table tokens",
    "data.tasks.0.params.num_values=400",
)
override_case(
    "context-shorter-than-instance",
    "data.tasks.1: an instance of 'copy' has 82 tokens, longer than data.seq_len=32",
    "data.tasks.1.params.length=40",
)
override_case(
    "context-shorter-than-instance-small",
    "data.tasks.1: an instance of 'copy' has 10 tokens, longer than data.seq_len=8",
    "data.seq_len=8",
)
override_case(
    "pretrained-tokenizer-missing",
    "data.tokenizer.name_or_path: tokenizer directory",
    "data.tokenizer.kind=pretrained",
    "data.tokenizer.name_or_path=/nonexistent/tok",
)
override_case(
    "background-file-missing",
    "data.background.paths: file '/nonexistent/corpus.txt' not found",
    "data.background.source=files",
    "data.background.paths=[/nonexistent/corpus.txt]",
)


def corpus_file_case(name: str, filename: str, content: bytes, expect: str) -> None:
    """A run on one bad local corpus file: refused before any build, by the dry run too (it reads
    the files through as the build would); ``{path}`` in ``expect`` is the file's path."""

    def build(ctx: Ctx) -> tuple[list[str], str]:
        path = ctx.tmp / filename
        path.write_bytes(content)
        argv = train_argv(ctx, "data.background.source=files", f"data.background.paths=['{path}']")
        return argv, expect.format(path=path)

    case(name, dry_run=True)(build)


corpus_file_case(
    "background-file-not-utf8", "corpus.txt", b"fine\n\xff\xfe\n", "{path}: line 2 is not UTF-8 text"
)
corpus_file_case("background-file-empty", "corpus.jsonl", b"", "{path}: empty file (no documents)")
corpus_file_case(
    "background-file-bad-json-line",
    "corpus.jsonl",
    b'{"text": "a"}\n{bad\n',
    "{path}: line 2 is not valid JSON",
)


@case("cache-dir-is-a-file", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    blocker = ctx.write("a-file", "not a directory")
    return train_argv(
        ctx, f"data.cache_dir={blocker}"
    ), f"data.cache_dir: '{blocker}' exists and is not a directory"


@case("cache-dir-under-a-file", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    blocker = ctx.write("a-file", "not a directory")
    return train_argv(
        ctx, f"data.cache_dir={blocker}/cache"
    ), f"data.cache_dir: cannot write to '{blocker}/cache'"


# ----------------------------------------------------------------------------------------------
# Memory pre-flight and the run directory
# ----------------------------------------------------------------------------------------------

override_case("model-too-big-for-memory", "model.preset: 4b needs ~", "model.preset=4b", "data.seq_len=2048")


@case("run-dir-exists", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    run = ctx.run_copy()
    return ["train", *BASE, f"run_dir={run}"], f"run_dir: '{run}' already holds a run; pass --resume"


@case("run-dir-under-a-file", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    blocker = ctx.write("a-file", "not a directory")
    return ["train", *BASE, f"run_dir={blocker}/run"], f"run_dir: cannot write to '{blocker}/run'"


@case("resume-without-a-run")
def _(ctx: Ctx) -> tuple[list[str], str]:
    return [
        "train",
        "--resume",
        f"run_dir={ctx.tmp / 'none'}",
    ], f"run_dir: '{ctx.tmp / 'none'}' has no run to resume"


# ----------------------------------------------------------------------------------------------
# Token shards
# ----------------------------------------------------------------------------------------------


@case("shard-truncated", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    cache, corpus = ctx.corpus_copy()
    shard = corpus / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:1001])
    return train_argv(ctx, f"data.cache_dir={cache}"), f"{shard}: corrupt token shard"


@case("shard-ids-outside-vocab", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    cache, corpus = ctx.corpus_copy()
    shard = corpus / "train_00000.bin"
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[7] = 60000
    ids.tofile(shard)
    return train_argv(
        ctx, f"data.cache_dir={cache}"
    ), f"{corpus}: token id 60000 outside the tokenizer's vocabulary"


@case("holdout-truncated", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    cache, corpus = ctx.corpus_copy()
    holdout = corpus / "holdout.bin"
    holdout.write_bytes(holdout.read_bytes()[:11])
    return train_argv(ctx, f"data.cache_dir={cache}"), f"{holdout}: corrupt held-out shard"


@case("index-not-json", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    cache, corpus = ctx.corpus_copy()
    (corpus / "index.json").write_text('{"dtype": "uint16", ')
    return train_argv(ctx, f"data.cache_dir={cache}"), f"{corpus / 'index.json'}: unreadable corpus index"


@case("index-missing-shards", dry_run=True)
def _(ctx: Ctx) -> tuple[list[str], str]:
    cache, corpus = ctx.corpus_copy()
    index = json.loads((corpus / "index.json").read_text())
    del index["shards"]
    (corpus / "index.json").write_text(json.dumps(index))
    return train_argv(ctx, f"data.cache_dir={cache}"), f"{corpus / 'index.json'}: unreadable corpus index"


@case("data-inspect-truncated-shard")
def _(ctx: Ctx) -> tuple[list[str], str]:
    cache, corpus = ctx.corpus_copy()
    shard = corpus / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    return ["data", "inspect", *BASE, f"data.cache_dir={cache}"], f"{shard}: corrupt token shard"


# ----------------------------------------------------------------------------------------------
# Checkpoints: on --resume and on `smalllm eval`
# ----------------------------------------------------------------------------------------------


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def reseal(checkpoint: Path, name: str) -> None:
    """Update the manifest entry of ``name`` so the checkpoint passes its size and checksum checks."""
    manifest = json.loads((checkpoint / ckpt.MANIFEST).read_text())
    data = (checkpoint / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps(manifest))


@case("resume-truncated-weights")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    truncate(latest / "model.safetensors")
    return ["train", "--resume", f"run_dir={run}"], f"{latest / 'model.safetensors'}: truncated"


@case("resume-missing-manifest")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    (latest / ckpt.MANIFEST).unlink()
    return [
        "train",
        "--resume",
        f"run_dir={run}",
    ], f"{latest / ckpt.MANIFEST}: missing or unreadable manifest"


@case("resume-checksum-mismatch")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    flip_byte(latest / "model.safetensors")
    return ["train", "--resume", f"run_dir={run}"], f"{latest / 'model.safetensors'}: checksum mismatch"


@case("resume-garbage-trainer-state")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    (latest / ckpt.STATE).write_bytes(b"this is not a torch file")
    reseal(latest, ckpt.STATE)
    return ["train", "--resume", f"run_dir={run}"], f"{latest / ckpt.STATE}: unreadable trainer state"


class _RunsCode:
    """Unpickling this calls ``open(marker, 'w')``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@case("resume-malicious-pickle-is-refused")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    marker = ctx.tmp / "pickle-ran-code"
    ctx.markers.append(marker)
    state = torch.load(latest / ckpt.STATE, weights_only=True)
    torch.save({**state, "payload": _RunsCode(marker)}, latest / ckpt.STATE)
    reseal(latest, ckpt.STATE)  # a well-formed checkpoint in every other respect
    return [
        "train",
        "--resume",
        f"run_dir={run}",
    ], f"{latest / ckpt.STATE}: unreadable trainer state (UnpicklingError)"


@case("resume-weights-of-another-model")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    return (
        ["train", "--resume", f"run_dir={run}", "model.preset=micro-w48"],
        f"{latest / 'model.safetensors'}: does not match the model",
    )


@case("eval-truncated-checkpoint")
def _(ctx: Ctx) -> tuple[list[str], str]:
    _run, latest = ctx.checkpoint_copy()
    truncate(latest / "model.safetensors")
    return ["eval", str(latest)], f"{latest}: incomplete or corrupt checkpoint"


@case("eval-checksum-mismatch")
def _(ctx: Ctx) -> tuple[list[str], str]:
    _run, latest = ctx.checkpoint_copy()
    flip_byte(latest / "model.safetensors")
    return ["eval", str(latest)], f"{latest / 'model.safetensors'}: checksum mismatch"


@case("eval-run-without-good-checkpoint")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run, latest = ctx.checkpoint_copy()
    truncate(latest / ckpt.STATE, keep=10)
    return ["eval", str(run)], f"{run}: the run has no complete checkpoint"


@case("eval-missing-path")
def _(ctx: Ctx) -> tuple[list[str], str]:
    return ["eval", str(ctx.tmp / "nowhere")], f"{ctx.tmp / 'nowhere'}: not a model directory"


@case("eval-run-before-its-first-checkpoint")
def _(ctx: Ctx) -> tuple[list[str], str]:
    run = ctx.run_copy()
    shutil.rmtree(run / "checkpoints")  # as a run is until its first checkpoint
    return ["eval", str(run)], f"{run}: the run has no complete checkpoint"


def test_eval_of_a_run_in_training_before_its_first_checkpoint(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "not a model directory (no config.json) nor a run directory" before."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoints")
    trainer = RunDir(run)
    trainer.acquire()  # what a training run holds
    try:
        before = tree_snapshot(tmp_path)
        capsys.readouterr()
        rc = main(["eval", str(run)])
        out, err = capsys.readouterr()
        assert_unchanged(before, tree_snapshot(tmp_path), tmp_path)
    finally:
        trainer.release()
    expect = f"{run}: the run has no complete checkpoint yet (being trained by pid {os.getpid()} on "
    assert_one_line_error(rc, out, err, expect)


def _rotate_on_first_load(monkeypatch: pytest.MonkeyPatch, old: Path, new: Path | None) -> None:
    """Make the first model load find ``old`` deleted, as when a training run replaces its latest
    checkpoint (by ``new``, if given) while ``smalllm eval`` reads it."""
    real = checkpoint_eval.AutoModelForCausalLM.from_pretrained
    calls = []

    def load(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            if new is not None:
                shutil.copytree(old, new)
            shutil.rmtree(old)
            raise OSError(f"{path} does not appear to have a file named config.json")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_eval.AutoModelForCausalLM, "from_pretrained", load)


def test_eval_of_a_run_follows_its_rotated_checkpoint(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``smalllm eval RUN`` while the run trains: the latest checkpoint is deleted under the reader,
    which then scores the new latest (it said "Repo id must be in the form ..." before)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    old = ckpt.latest_checkpoint(run / "checkpoints")
    assert old is not None
    new = old.with_name(f"step_{ckpt.checkpoint_step(old) + 1:08d}")
    _rotate_on_first_load(monkeypatch, old, new)
    record = checkpoint_eval.evaluate_checkpoint(run, out=tmp_path / "out.jsonl", log=lambda _m: None)
    assert record["checkpoint"] == str(new)


def test_eval_of_a_named_checkpoint_that_is_deleted_says_so(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    old = ckpt.latest_checkpoint(run / "checkpoints")
    assert old is not None
    _rotate_on_first_load(monkeypatch, old, None)
    out_file = tmp_path / "out.jsonl"
    capsys.readouterr()
    rc = main(["eval", str(old), "--out", str(out_file)])
    out, err = capsys.readouterr()
    assert_one_line_error(rc, out, err, f"{old}: the checkpoint was deleted while it was being read")
    assert not out_file.exists()


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def assert_unchanged(before: dict[str, str], after: dict[str, str], where: Path) -> None:
    """Nothing written or lost: name what differs, so a failure says which file."""
    added = sorted(set(after) - set(before))
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or lost or changed), f"{where}: written {added}, lost {lost}, changed {changed}"


def test_case_count() -> None:
    print(f"\n{len(CASES)} bad-input cases")
    assert len(CASES) >= 180


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Ctx(tmp_path, finished_run)
    try:
        argv, expect = CASES[name](ctx)
        before = [tree_snapshot(run) for run in ctx.guarded]
        scratch = tree_snapshot(ctx.tmp)
        capsys.readouterr()
        rc = main(argv)
        out, err = capsys.readouterr()
    finally:
        for cleanup in ctx.cleanups:
            cleanup()
    assert_one_line_error(rc, out, err, expect)
    assert [tree_snapshot(run) for run in ctx.guarded] == before, "files of the existing run changed"
    assert_unchanged(scratch, tree_snapshot(ctx.tmp), ctx.tmp)
    for marker in ctx.markers:
        assert not marker.exists(), f"untrusted code ran: {marker} exists"
    if name == "task-from-module-path-is-not-imported":
        assert "evil_plugin" not in sys.modules


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smalllm.cli", *argv], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "name",
    [
        "override-unknown-key",
        "run-dir-exists",
        "resume-truncated-weights",
        "seed-train-2**70",
        "yaml-alias-bomb",
    ],
)
def test_bad_input_subprocess(name: str, tmp_path: Path, finished_run: Path) -> None:
    """End to end: the real process exits 2 with one stderr line and no traceback."""
    ctx = Ctx(tmp_path, finished_run)
    argv, expect = CASES[name](ctx)
    before = [tree_snapshot(run) for run in ctx.guarded]
    scratch = tree_snapshot(ctx.tmp)
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, expect)
    assert [tree_snapshot(run) for run in ctx.guarded] == before
    assert_unchanged(scratch, tree_snapshot(ctx.tmp), ctx.tmp)
    for marker in ctx.markers:
        assert not marker.exists()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "train", *BASE, f"run_dir={tmp_path / 'run'}", "train.lrr=1e-3")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: train.lrr: unknown key" in proc.stderr


# ----------------------------------------------------------------------------------------------
# The dry run refuses what the run refuses, with the same message
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DRY_RUN_CASES)
def test_dry_run_refuses_like_the_run(
    name: str, tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bad new-run case above, as ``smalllm train --dry-run``: same one line, nothing written."""
    ctx = Ctx(tmp_path, finished_run)
    try:
        argv, expect = CASES[name](ctx)
        assert argv[0] == "train" and "--resume" not in argv
        scratch = tree_snapshot(ctx.tmp)
        capsys.readouterr()
        rc = main([*argv, "--dry-run"])
        out, err = capsys.readouterr()
    finally:
        for cleanup in ctx.cleanups:
            cleanup()
    assert_one_line_error(rc, out, err, expect)
    assert_unchanged(scratch, tree_snapshot(ctx.tmp), ctx.tmp)
    for marker in ctx.markers:
        assert not marker.exists(), f"untrusted code ran: {marker} exists"


BAD_TASK_SPECS = {
    "unknown-task": ["data.tasks.0.name=t_cmpp"],
    "frequency-cannot-fit": ["data.tasks.0.frequency=0.5"],
    "unknown-parameter": ["data.tasks.0.params.num_vals=3"],
    "parameter-out-of-range": ["data.tasks.0.params.num_values=1"],
    "skill-weights-wrong-length": ["data.tasks.0.skill_weights=[1, 2]"],
    "skill-weight-inf": ["data.tasks.0.skill_weights=[.inf]"],
    "instance-longer-than-row": ["data.tasks.1.params.length=40"],
    "family-weights-wrong-length": ["data.tasks=[{name: addition, frequency: 0.01, skill_weights: [1, 1]}]"],
    "model-too-big": ["model.preset=4b", "data.seq_len=2048"],
}


@pytest.mark.parametrize("spec", list(BAD_TASK_SPECS))
def test_bad_task_spec_same_message_dry_run_and_run(
    spec: str, tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad task spec three ways: a dry run against the cached corpus, a dry run before any
    corpus exists (an empty cache: the tokenizer is built or stood in for), and a real run. All
    three refuse with the identical line, and none writes anything (not even an empty run_dir)."""
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    argv = ["train", *BASE, f"run_dir={tmp_path / 'run'}", *BAD_TASK_SPECS[spec]]
    scratch = tree_snapshot(tmp_path)
    lines = []
    for variant in (
        [*argv, "--dry-run"],
        [*argv, f"data.cache_dir={empty_cache}", "--dry-run"],
        argv,
    ):
        capsys.readouterr()
        rc = main(variant)
        out, err = capsys.readouterr()
        assert_one_line_error(rc, out, err, "")
        # The memory refusal quotes the memory free at that moment; everything else is fixed.
        lines.append(re.sub(r"[0-9.]+ GiB is usable", "<free> GiB is usable", err.strip()))
    assert lines[0] == lines[1] == lines[2], "\n".join(lines)
    assert_unchanged(scratch, tree_snapshot(tmp_path), tmp_path)


def test_too_few_table_tokens_same_message_dry_run_and_run(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table larger than the eligible background tokens: the dry run against the cached corpus and
    the run refuse with the identical line and count; a dry run before any corpus exists has no
    counts, and refuses it against the whole vocabulary (the most that could be eligible)."""
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    argv = ["train", *BASE, f"run_dir={tmp_path / 'run'}", "data.tasks.0.params.num_values=400"]
    lines = []
    for variant in ([*argv, "--dry-run"], argv, [*argv, f"data.cache_dir={empty_cache}", "--dry-run"]):
        capsys.readouterr()
        rc = main(variant)
        out, err = capsys.readouterr()
        assert_one_line_error(
            rc, out, err, "data.tasks.0.params: task 't_cmp': task needs 400 distinct table tokens"
        )
        lines.append(err.strip())
    assert (
        lines[0] == lines[1]
        and "only 65 are eligible (data.task_tokens: seen >= 100 times in the background, round-trip)"
        in lines[0]
    )
    assert "only 298 are eligible (at most" in lines[2]
    assert not (tmp_path / "run").exists()


def test_alias_bomb_is_refused_at_once() -> None:
    """A billion-laughs document is refused while parsing, before anything expands it."""
    from smalllm.errors import ConfigError
    from smalllm.safe_yaml import load_yaml_text

    bomb = (
        "a: &a ["
        + ", ".join(["lol"] * 9)
        + "]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
            for p, c in zip("abcdefghijklmnopqrstuvwxy", "bcdefghijklmnopqrstuvwxyz")
        )
    )
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^bomb: line 1: YAML anchors \(&a\) are not supported"):
        load_yaml_text(bomb, "bomb")
    assert time.perf_counter() - start < 1.0
