"""Run configuration: dataclasses with a docstring per field, loaded from YAML with dotted overrides.

OmegaConf does the parsing, merging and type checking; this module turns its exceptions into one-line
:class:`~smalllm.errors.ConfigError` messages that name the field, and adds range checks that types
alone cannot express. Each component reads only its own section (``model``, ``data``, ``train``,
``eval``, ``logging``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from smalllm.errors import ConfigError, did_you_mean, require

# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    preset: str = "micro-w64"
    """Model size from the ladder (``smalllm models`` lists them): micro-w40 … micro-w176, 4m … 4b."""
    arch: str = "olmo"
    """Hugging Face architecture: olmo (OlmoForCausalLM), llama, gpt2 or gpt_neox."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of weight matrices."""
    tie_embeddings: bool = False
    """Share input embedding and output projection (the ladder's counts assume untied)."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers: sdpa, eager or flash_attention_2."""


@dataclass
class TokenizerConfig:
    kind: str = "bpe"
    """bpe (byte-level BPE trained on the background corpus), byte, char, or pretrained (load ``path``)."""
    vocab_size: int = 512
    """Target vocabulary for ``bpe`` (special tokens included); ignored by byte/char/pretrained."""
    path: str | None = None
    """Directory of a saved tokenizer, for ``kind=pretrained``."""


@dataclass
class SyntheticCorpusConfig:
    num_words: int = 2000
    """Lexicon size of the built-in Zipfian corpus; small values give a simplified vocabulary."""
    zipf_exponent: float = 1.1
    """Exponent of the Zipf distribution over words within each part of speech."""
    num_documents: int = 20000
    """Documents generated for the corpus (about 40-60 tokens each at the default BPE size)."""


@dataclass
class BackgroundConfig:
    source: str = "synthetic"
    """synthetic (built in, no download), files (local text/jsonl/parquet) or hub (a datasets name)."""
    paths: list[str] = field(default_factory=list)
    """Local files for ``source=files``; the format follows the extension."""
    hub_name: str | None = None
    """Dataset name for ``source=hub``, passed to ``datasets.load_dataset``."""
    hub_config: str | None = None
    """Dataset configuration name for ``source=hub``."""
    split: str = "train"
    """Dataset split to read."""
    text_field: str = "text"
    """Column holding the document text."""
    streaming: bool = False
    """Stream the hub dataset instead of downloading it whole (needs ``max_documents``)."""
    max_documents: int | None = None
    """Read at most this many documents (None: all)."""
    holdout_documents: int = 200
    """Documents kept out of training for the held-out background loss."""
    synthetic: SyntheticCorpusConfig = field(default_factory=SyntheticCorpusConfig)
    """Settings of the built-in corpus."""


@dataclass
class ScheduleConfig:
    kind: str = "uniform"
    """uniform (evenly spread), gap (bursts every ``gap_batches``) or piecewise (``points``)."""
    gap_batches: int = 1
    """For ``gap``: all instances of this many batches arrive together in the first of them."""
    points: list[list[float]] = field(default_factory=list)
    """For ``piecewise``: ``[[step, frequency], ...]``; the frequency holds from that step on."""


@dataclass
class TaskConfig:
    name: str = MISSING
    """Registered task name (``smalllm tasks list``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Task parameters (complexity knobs); unknown names are rejected."""
    frequency: float = 0.0
    """How often the task appears, in ``unit``; split across sub-skills by ``skill_weights``."""
    unit: str = "per_token"
    """per_token (instances per training token), token_fraction (share of training tokens) or
    example_fraction (share of training sequences carrying one instance)."""
    placement: str = "prefix"
    """prefix (overwrites the first tokens of a sequence, as Huang et al.) or document (inserted
    as its own EOD-separated document at a background document boundary)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """When instances arrive (same long-run frequency)."""
    pool: str = "finite"
    """finite (a fixed pool split train/test) or fresh (new instances, test set held out by key)."""
    pool_size: int = 10000
    """Instances in a finite pool (train and test together), as in Huang et al. (10K)."""
    test_fraction: float = 0.5
    """Share of a finite pool held out for evaluation."""
    skill_weights: list[float] | None = None
    """Relative frequencies of a family's sub-skills (None: the task's own default)."""
    eval_size: int = 256
    """Held-out instances evaluated per sub-skill."""
    seed: int = 0
    """Seed of this task's instance generator (kept apart from the data seed for reuse across runs)."""


@dataclass
class DataConfig:
    seq_len: int = 64
    """Tokens per training sequence (the context length)."""
    seed: int = 0
    """Seed of the background order and of task placement phases."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How text becomes tokens."""
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    """The corpus the task instances are injected into."""
    tasks: list[TaskConfig] = field(default_factory=list)
    """Injected tasks with their frequencies."""
    cache_dir: str | None = None
    """Where tokenized shards are cached (None: $SMALLLM_CACHE or ~/.cache/smalllm)."""


@dataclass
class TrainConfig:
    max_tokens: int = 2_000_000
    """Training budget in tokens; the number of steps is derived from it."""
    global_batch_size: int = 32
    """Sequences per optimizer step, over all processes and accumulation steps."""
    micro_batch_size: int = 32
    """Sequences per forward pass on one process; accumulation makes up the rest."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    schedule: str = "cosine"
    """cosine (warmup then cosine), wsd (warmup-stable-decay), linear or constant."""
    warmup_fraction: float = 0.05
    """Share of steps spent in linear warmup."""
    decay_fraction: float = 0.2
    """For wsd: share of steps spent in the final decay."""
    weight_decay: float = 0.1
    """AdamW weight decay on weight matrices (not on embeddings, norms or biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Maximum global gradient norm (0 disables clipping)."""
    precision: str = "auto"
    """auto (bf16 on a GPU that supports it, else fp32), fp32, bf16 or fp16."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    device: str = "auto"
    """auto, cpu or cuda."""
    seed: int = 0
    """Seed of model initialisation."""
    num_threads: int | None = None
    """CPU threads for torch (None: leave torch's default)."""
    log_every: int = 10
    """Steps between metric log lines."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted; the final one is always kept)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU (None: a built-in guess for the device and precision)."""
    nan_policy: str = "stop"
    """On a NaN/inf loss: stop (keep the last good checkpoint) or skip (drop the batch)."""
    memory_fraction: float = 0.9
    """Share of the device memory the pre-flight estimate may use."""


@dataclass
class EvalConfig:
    enabled: bool = True
    """Evaluate held-out task instances and background text during training."""
    every_steps: int = 100
    """Steps between evaluations after the log-spaced start (0: log-spaced only)."""
    log_spaced: bool = True
    """Also evaluate at steps 0, 1, 2, 4, 8, … (Pythia-style) before ``every_steps`` takes over."""
    every_tokens: int | None = None
    """Tokens between evaluations; overrides ``every_steps`` when set."""
    batch_size: int = 128
    """Sequences per evaluation forward pass."""
    background_sequences: int = 64
    """Held-out background sequences scored for the background loss."""
    accuracy_threshold: float = 0.9
    """Exact-match accuracy at which a task counts as learned."""
    loss_ratio_threshold: float | None = None
    """Alternatively: learned when answer loss falls below this fraction of chance loss."""
    patience: int = 2
    """Evaluations after the crossing that must confirm it (one isolated dip is tolerated)."""


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Write TensorBoard event files under the run directory."""
    wandb: bool = False
    """Log to Weights & Biases (opt-in; needs the wandb package)."""
    wandb_project: str = "smalllm"
    """W&B project name."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    """Directory of this run: config, metrics, checkpoints, eval sets."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model architecture and size."""
    data: DataConfig = field(default_factory=DataConfig)
    """Tokenizer, background corpus and injected tasks."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and the training loop."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation and emergence detection."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Where metrics go."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file (default: the built-in one) and overrides.

    Overrides are ``dotted.key=value`` strings, e.g. ``model.preset=20m train.lr=3e-4``.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    schema = OmegaConf.structured(RunConfig)
    raw = _read_yaml(path)
    merged = _merge(schema, raw, str(path))
    for item in overrides or []:
        merged = _apply_override(merged, item)
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, str(path))) from None
    assert isinstance(cfg, RunConfig)
    validate(cfg)
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(schema: DictConfig, raw: dict, source: str) -> DictConfig:
    _check_keys(raw, RunConfig, "")
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, source)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _check_keys(raw: Any, cls: type, prefix: str) -> None:
    """Reject unknown keys with a suggestion before OmegaConf's less friendly message."""
    if not isinstance(raw, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"{dotted}: unknown key{did_you_mean(str(key), hints)}")
        hint = hints[key]
        if typing.get_origin(hint) is list:
            if isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a list, got a mapping")
            (item_type,) = typing.get_args(hint)
            if dataclasses.is_dataclass(item_type) and isinstance(value, list):
                for i, item in enumerate(value):
                    _check_keys(item, item_type, f"{dotted}.{i}.")
        elif dataclasses.is_dataclass(hint):
            _check_keys(value, hint, dotted + ".")


def _apply_override(cfg: DictConfig, item: str) -> DictConfig:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
    _check_dotted_key(cfg, key)
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, dict | list) and not any(part.isdigit() for part in key.split(".")):
        # A whole section or list (e.g. data.tasks=[{...}]): check its keys like a config file's.
        nested: Any = parsed
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _check_keys(nested, RunConfig, "")
    try:
        OmegaConf.update(cfg, key, parsed, merge=True, force_add=False)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, f"override {item}")) from None
    return cfg


def _check_dotted_key(cfg: DictConfig, key: str) -> None:
    node: Any = cfg
    walked: list[str] = []
    for part in key.split("."):
        walked.append(part)
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{'.'.join(walked)}: no such list element (list has {len(node)} items)")
            node = node[int(part)]
            continue
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{'.'.join(walked)}: '{'.'.join(walked[:-1])}' is not a section")
        if part not in node:
            # Free-form task parameters are checked later, against the task's own parameters.
            if walked[-2:-1] == ["params"]:
                return
            raise ConfigError(f"{'.'.join(walked)}: unknown key{did_you_mean(part, list(node.keys()))}")
        node = node._get_node(part)


def _describe(exc: OmegaConfBaseException, source: str) -> str:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValidationError):
        msg = msg.replace("Value ", "value ")
        return f"{key or source}: wrong type: {msg}"
    if isinstance(exc, ConfigKeyError):
        return f"{key or source}: unknown key"
    return f"{key or source}: {msg}"


# ----------------------------------------------------------------------------------------------
# Validation beyond types
# ----------------------------------------------------------------------------------------------

ARCHS = ("olmo", "llama", "gpt2", "gpt_neox")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "wsd", "linear", "constant")
UNITS = ("per_token", "token_fraction", "example_fraction")
PLACEMENTS = ("prefix", "document")
SCHEDULE_KINDS = ("uniform", "gap", "piecewise")
POOLS = ("finite", "fresh")
TOKENIZER_KINDS = ("bpe", "byte", "char", "pretrained")
SOURCES = ("synthetic", "files", "hub")


def _one_of(value: str, choices: tuple[str, ...], field_name: str) -> None:
    require(
        value in choices,
        field_name,
        f"'{value}' is not one of {', '.join(choices)}{did_you_mean(value, choices)}",
    )


def _peak_frequency(task: TaskConfig) -> float:
    points = [p[1] for p in task.schedule.points if len(p) == 2] if task.schedule.kind == "piecewise" else []
    return max([task.frequency, *points])


def validate(cfg: RunConfig) -> None:
    """Check ranges and choices; raise a one-line :class:`ConfigError` naming the first bad field."""
    from smalllm.model.presets import PRESETS

    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    require(
        m.preset in PRESETS, "model.preset", f"unknown preset '{m.preset}'{did_you_mean(m.preset, PRESETS)}"
    )
    _one_of(m.arch, ARCHS, "model.arch")
    require(m.init_std > 0, "model.init_std", f"must be > 0, got {m.init_std}")

    require(d.seq_len >= 8, "data.seq_len", f"must be >= 8, got {d.seq_len}")
    _one_of(d.tokenizer.kind, TOKENIZER_KINDS, "data.tokenizer.kind")
    require(
        d.tokenizer.vocab_size >= 64,
        "data.tokenizer.vocab_size",
        f"must be >= 64, got {d.tokenizer.vocab_size}",
    )
    require(
        d.tokenizer.kind != "pretrained" or bool(d.tokenizer.path),
        "data.tokenizer.path",
        "required when data.tokenizer.kind=pretrained",
    )
    bg = d.background
    _one_of(bg.source, SOURCES, "data.background.source")
    require(bg.source != "files" or bool(bg.paths), "data.background.paths", "required when source=files")
    require(bg.source != "hub" or bool(bg.hub_name), "data.background.hub_name", "required when source=hub")
    require(bg.holdout_documents >= 0, "data.background.holdout_documents", "must be >= 0")
    syn = bg.synthetic
    require(syn.num_words >= 20, "data.background.synthetic.num_words", f"must be >= 20, got {syn.num_words}")
    require(syn.zipf_exponent > 0, "data.background.synthetic.zipf_exponent", "must be > 0")
    require(syn.num_documents > 0, "data.background.synthetic.num_documents", "must be > 0")

    names = set()
    for i, task in enumerate(d.tasks):
        where = f"data.tasks.{i}"
        require(task.name not in names, f"{where}.name", f"task '{task.name}' is listed twice")
        names.add(task.name)
        _one_of(task.unit, UNITS, f"{where}.unit")
        _one_of(task.placement, PLACEMENTS, f"{where}.placement")
        _one_of(task.pool, POOLS, f"{where}.pool")
        _one_of(task.schedule.kind, SCHEDULE_KINDS, f"{where}.schedule.kind")
        require(
            math.isfinite(task.frequency) and task.frequency >= 0,
            f"{where}.frequency",
            f"must be a finite number >= 0, got {task.frequency}",
        )
        if task.unit != "per_token":
            require(
                task.frequency <= 1, f"{where}.frequency", f"a {task.unit} must be <= 1, got {task.frequency}"
            )
        require(task.schedule.gap_batches >= 1, f"{where}.schedule.gap_batches", "must be >= 1")
        if task.schedule.kind == "piecewise":
            pts = task.schedule.points
            require(
                bool(pts), f"{where}.schedule.points", "piecewise schedule needs [[step, frequency], ...]"
            )
            require(
                all(len(p) == 2 for p in pts), f"{where}.schedule.points", "each point is [step, frequency]"
            )
            steps = [p[0] for p in pts]
            require(
                steps == sorted(steps) and steps[0] >= 0,
                f"{where}.schedule.points",
                "steps must be >= 0 and increasing",
            )
            require(all(p[1] >= 0 for p in pts), f"{where}.schedule.points", "frequencies must be >= 0")
            if task.unit != "per_token":
                require(
                    all(p[1] <= 1 for p in pts), f"{where}.schedule.points", f"a {task.unit} must be <= 1"
                )
        require(task.pool_size >= 2, f"{where}.pool_size", f"must be >= 2, got {task.pool_size}")
        require(
            0 < task.test_fraction < 1,
            f"{where}.test_fraction",
            f"must be in (0, 1), got {task.test_fraction}",
        )
        require(task.eval_size >= 1, f"{where}.eval_size", "must be >= 1")
        if task.skill_weights is not None:
            require(
                all(w >= 0 for w in task.skill_weights) and sum(task.skill_weights) > 0,
                f"{where}.skill_weights",
                "must be non-negative with a positive sum",
            )
    for unit in ("token_fraction", "example_fraction"):
        # The peak of each task's schedule counts: a piecewise point may raise it above `frequency`.
        total = sum(_peak_frequency(task) for task in d.tasks if task.unit == unit)
        require(total <= 1, "data.tasks", f"{unit} frequencies sum to {total:g} > 1")

    require(t.max_tokens > 0, "train.max_tokens", f"must be > 0, got {t.max_tokens}")
    require(t.global_batch_size >= 1, "train.global_batch_size", f"must be >= 1, got {t.global_batch_size}")
    require(t.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {t.micro_batch_size}")
    require(
        t.global_batch_size % t.micro_batch_size == 0,
        "train.global_batch_size",
        f"{t.global_batch_size} is not a multiple of train.micro_batch_size={t.micro_batch_size}",
    )
    require(t.lr > 0 and math.isfinite(t.lr), "train.lr", f"must be > 0, got {t.lr}")
    require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    _one_of(t.schedule, LR_SCHEDULES, "train.schedule")
    require(
        0 <= t.warmup_fraction < 1, "train.warmup_fraction", f"must be in [0, 1), got {t.warmup_fraction}"
    )
    require(0 <= t.decay_fraction <= 1, "train.decay_fraction", f"must be in [0, 1], got {t.decay_fraction}")
    require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    require(0 <= t.beta1 < 1, "train.beta1", f"must be in [0, 1), got {t.beta1}")
    require(0 <= t.beta2 < 1, "train.beta2", f"must be in [0, 1), got {t.beta2}")
    require(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0, got {t.grad_clip}")
    _one_of(t.precision, PRECISIONS, "train.precision")
    _one_of(t.device, ("auto", "cpu", "cuda"), "train.device")
    _one_of(t.nan_policy, ("stop", "skip"), "train.nan_policy")
    require(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    require(t.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {t.checkpoint_every}")
    require(t.keep_last >= 1, "train.keep_last", f"must be >= 1, got {t.keep_last}")
    require(
        0 < t.memory_fraction <= 1, "train.memory_fraction", f"must be in (0, 1], got {t.memory_fraction}"
    )
    require(t.num_threads is None or t.num_threads >= 1, "train.num_threads", "must be >= 1")

    require(e.every_steps >= 0, "eval.every_steps", f"must be >= 0, got {e.every_steps}")
    require(e.every_tokens is None or e.every_tokens > 0, "eval.every_tokens", "must be > 0")
    require(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
    require(e.background_sequences >= 0, "eval.background_sequences", "must be >= 0")
    require(
        0 < e.accuracy_threshold <= 1,
        "eval.accuracy_threshold",
        f"must be in (0, 1], got {e.accuracy_threshold}",
    )
    require(e.patience >= 0, "eval.patience", f"must be >= 0, got {e.patience}")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict of a config (for JSON and for trackers)."""
    return dataclasses.asdict(cfg)
