"""Run configuration: the top-level :class:`RunConfig`, loaded from YAML with dotted overrides.

Each section lives beside the component that reads it, with its own ``validate``:
:class:`~smalllm.model.config.ModelConfig`, :mod:`smalllm.data.config` (data, tokenizer,
background, tasks and their schedules), :class:`~smalllm.eval.config.EvalConfig` and
:mod:`smalllm.train.config` (train, logging, interference). They are re-exported here, so
``from smalllm.config import TaskConfig`` keeps working.

OmegaConf does the parsing, merging and type checking; this module reads YAML through
:mod:`smalllm.safe_yaml` (no duplicate keys, no aliases), checks keys and ``Literal`` choices
against the dataclasses' type hints first (friendlier messages than OmegaConf's), and turns
OmegaConf's exceptions into one-line :class:`~smalllm.errors.ConfigError` messages that name the
field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from smalllm.data.config import (
    PLACEMENTS,
    POOLS,
    SCHEDULE_KINDS,
    SOURCES,
    TOKENIZER_KINDS,
    UNITS,
    BackgroundConfig,
    DataConfig,
    ScheduleConfig,
    SyntheticCorpusConfig,
    TaskConfig,
    TokenizerConfig,
)
from smalllm.errors import ConfigError, did_you_mean, require
from smalllm.eval.config import EvalConfig, upgrade_legacy_eval
from smalllm.model.config import ARCHS, ModelConfig
from smalllm.safe_yaml import YamlSyntaxError, load_yaml_file, load_yaml_text
from smalllm.train.config import LR_SCHEDULES, PRECISIONS, InterferenceConfig, LoggingConfig, TrainConfig
from smalllm.validation import one_of

__all__ = [
    "ARCHS",
    "LR_SCHEDULES",
    "PLACEMENTS",
    "POOLS",
    "PRECISIONS",
    "SCHEDULE_KINDS",
    "SOURCES",
    "TOKENIZER_KINDS",
    "UNITS",
    "BackgroundConfig",
    "DataConfig",
    "EvalConfig",
    "InterferenceConfig",
    "LoggingConfig",
    "ModelConfig",
    "RunConfig",
    "ScheduleConfig",
    "SyntheticCorpusConfig",
    "TaskConfig",
    "TokenizerConfig",
    "TrainConfig",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate",
]


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
    interference: InterferenceConfig = field(default_factory=InterferenceConfig)
    """Gradient interference measurements (off by default)."""

    def validate(self) -> None:
        """Check every section's ranges and choices; raise a one-line :class:`ConfigError` naming the
        first bad field. Rules that need a tokenizer, task generators or the device are checked
        by :func:`smalllm.train.preflight.check_config` (run and dry run alike)."""
        require(bool(self.run_dir.strip()), "run_dir", "must not be empty")
        self.model.validate("model")
        self.data.validate("data")
        self.train.validate("train")
        self.eval.validate("eval")
        self.logging.validate("logging")
        self.interference.validate("interference")
        around = self.eval.around_injections
        require(
            around is None or around in [t.name for t in self.data.tasks],
            "eval.around_injections",
            f"'{around}' is not a task of data.tasks ({', '.join(t.name for t in self.data.tasks) or 'none'})",
        )
        positions = self.model.max_position_embeddings
        require(
            positions is None or positions >= self.data.seq_len,
            "model.max_position_embeddings",
            f"{positions} is shorter than data.seq_len {self.data.seq_len}",
        )
        shape = self.model.shape(self.data.seq_len)
        self.interference.check_run(
            [(t.name, t.pool) for t in self.data.tasks], shape.layers, shape.intermediate, "interference"
        )


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file (default: the built-in one) and overrides.

    Overrides are ``dotted.key=value`` strings, e.g. ``model.preset=20m train.lr=3e-4``.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    return _build(path, _read_yaml(path), overrides)


def _build(path: Path, raw: dict, overrides: list[str] | None) -> RunConfig:
    schema = OmegaConf.structured(RunConfig)
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


def load_run_config(config_file: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config a run trained with, from the ``config.yaml`` it saved, plus ``overrides``.

    A saved config lists every field, so one without ``data.decontaminate`` was written before
    held-out sets were decontaminated: it is read with ``data.decontaminate=false``, and resuming,
    probing or auditing that run rebuilds the held-out sets it was scored on.
    """
    path = Path(config_file)
    raw = _read_yaml(path)
    data = raw.get("data")
    legacy = isinstance(data, dict) and "decontaminate" not in data
    return _build(path, raw, (["data.decontaminate=false"] if legacy else []) + list(overrides or []))


def _read_yaml(path: Path) -> dict:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    if isinstance(data.get("eval"), dict):  # a run saved before eval.criterion
        data["eval"] = upgrade_legacy_eval(data["eval"])
    return data


def _merge(schema: DictConfig, raw: dict, source: str) -> DictConfig:
    raw = _normalize(raw, RunConfig, "")
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, source)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _as_int(value: Any) -> Any:
    """``2e6`` or ``2.0e+6`` for an integer field means 2000000; anything else is left to OmegaConf."""
    if isinstance(value, bool) or not isinstance(value, float | str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if math.isfinite(number) and number.is_integer() else value


def _normalize(raw: Any, hint: Any, dotted: str) -> Any:
    """Check ``raw`` against the type hint of its field before OmegaConf sees it.

    Unknown keys get a suggestion, a value outside a ``Literal``'s choices gets the list of
    choices, and integral floats in integer fields become ints (so ``train.max_tokens=1e29`` meets
    the range rule rather than a type error). Returns the normalised value.
    """
    hint = _unwrap_optional(hint)
    prefix = f"{dotted}." if dotted else ""
    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, dict):
            return raw
        hints = typing.get_type_hints(hint)
        out = {}
        for key, value in raw.items():
            if key not in hints:
                raise ConfigError(f"{prefix}{key}: unknown key{did_you_mean(str(key), hints)}")
            out[key] = _normalize(value, hints[key], f"{prefix}{key}")
        return out
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(raw, dict):
            raise ConfigError(f"{dotted}: expected a list, got a mapping")
        if not isinstance(raw, list):
            return raw
        (item_type,) = typing.get_args(hint)
        return [_normalize(item, item_type, f"{prefix}{i}") for i, item in enumerate(raw)]
    if origin is Literal:
        if isinstance(raw, str):
            one_of(raw, typing.get_args(hint), dotted)
        return raw
    if hint is int:
        return _as_int(raw)
    return raw


def _hint_at(key: str) -> Any:
    """Type hint of the field at dotted ``key`` (``Any`` inside free-form task parameters)."""
    hint: Any = RunConfig
    for part in key.split("."):
        hint = _unwrap_optional(hint)
        if typing.get_origin(hint) is list and part.isdigit():
            (hint,) = typing.get_args(hint)
        elif dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(part, Any)
        else:
            return Any
    return hint


def _apply_override(cfg: DictConfig, item: str) -> DictConfig:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
    _check_dotted_key(cfg, key)
    try:
        parsed = load_yaml_text(value, f"override {item}", root=key) if value.strip() else None
    except YamlSyntaxError:
        parsed = value  # not YAML (e.g. a path with a colon): the text itself
    parsed = _normalize(parsed, _hint_at(key), key)
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


def validate(cfg: RunConfig) -> None:
    """Check ranges and choices of ``cfg`` (see :meth:`RunConfig.validate`)."""
    cfg.validate()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict of a config (for JSON and for trackers)."""
    return dataclasses.asdict(cfg)
