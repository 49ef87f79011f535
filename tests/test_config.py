"""Config sections beside their components: re-exports, Literal choices, per-section validate(),
layering of the section modules, and the safe YAML loader."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import smalllm.config as top
from smalllm.config import RunConfig, load_config, save_config
from smalllm.data import config as data_config
from smalllm.errors import ConfigError
from smalllm.eval import config as eval_config
from smalllm.model import config as model_config
from smalllm.safe_yaml import load_yaml_file, load_yaml_text
from smalllm.train import config as train_config

SECTIONS = {
    "ModelConfig": model_config,
    "TokenizerConfig": data_config,
    "SyntheticCorpusConfig": data_config,
    "BackgroundConfig": data_config,
    "ScheduleConfig": data_config,
    "TaskConfig": data_config,
    "DataConfig": data_config,
    "EvalConfig": eval_config,
    "TrainConfig": train_config,
    "LoggingConfig": train_config,
    "InterferenceConfig": train_config,
}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_sections_live_beside_their_component_and_are_re_exported(name: str) -> None:
    cls = getattr(SECTIONS[name], name)
    assert getattr(top, name) is cls
    assert callable(cls.validate)
    for f in dataclasses.fields(cls):
        assert f.name in _field_docs(cls), f"{name}.{f.name} has no docstring"


def _field_docs(cls: type) -> set[str]:
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        prev.target.id
        for prev, node in zip(body, body[1:])
        if isinstance(prev, ast.AnnAssign)
        and isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
    }


LITERALS = {
    (model_config.ModelConfig, "arch"): ("olmo", "llama", "gpt2", "gpt_neox"),
    (data_config.TokenizerConfig, "kind"): ("bpe", "byte", "char", "pretrained"),
    (data_config.BackgroundConfig, "source"): ("synthetic", "files", "hub", "tokens"),
    (data_config.BackgroundConfig, "text_unit"): ("file", "paragraph", "line"),
    (data_config.BackgroundConfig, "token_dtype"): ("uint16", "uint32"),
    (data_config.ScheduleConfig, "kind"): ("uniform", "gap", "piecewise"),
    (data_config.TaskConfig, "unit"): ("per_token", "token_fraction", "example_fraction"),
    (data_config.TaskConfig, "placement"): ("prefix", "document"),
    (data_config.TaskConfig, "pool"): ("finite", "fresh"),
    (train_config.TrainConfig, "schedule"): ("cosine", "wsd", "linear", "constant"),
    (train_config.TrainConfig, "precision"): ("auto", "fp32", "bf16", "fp16"),
    (train_config.TrainConfig, "device"): ("auto", "cpu", "cuda"),
    (train_config.TrainConfig, "nan_policy"): ("stop", "skip"),
}


@pytest.mark.parametrize(("owner", "field"), list(LITERALS), ids=lambda x: getattr(x, "__name__", x))
def test_enumerations_are_literal_types(owner: type, field: str) -> None:
    hint = typing.get_type_hints(owner)[field]
    assert typing.get_origin(hint) is typing.Literal
    assert typing.get_args(hint) == LITERALS[(owner, field)]


def test_omegaconf_enforces_literals_too() -> None:
    """The installed OmegaConf checks Literal fields itself (a second line of defence)."""
    schema = OmegaConf.structured(model_config.ModelConfig)
    with pytest.raises(ValidationError):
        schema.arch = "gpt3"


def test_section_validate_names_the_dotted_field_under_any_prefix() -> None:
    task = data_config.TaskConfig(name="copy", frequency=float("inf"))
    with pytest.raises(
        ConfigError, match=r"^exp\.tasks\.3\.frequency: must be a finite number >= 0, got inf$"
    ):
        task.validate("exp.tasks.3")
    with pytest.raises(ConfigError, match=r"^t\.eps: must be > 0, got -1"):
        train_config.TrainConfig(eps=-1).validate("t")
    with pytest.raises(ConfigError, match=r"^e\.criterion\.threshold: must be in \(0, 1\), got -0\.1$"):
        crit = eval_config.CriterionConfig(metric="loss_ratio", threshold=-0.1)
        eval_config.EvalConfig(criterion=crit).validate("e")
    with pytest.raises(ConfigError, match=r"^m\.arch: 'gpt3' is not one of"):
        model_config.ModelConfig(arch="gpt3").validate("m")  # type: ignore[arg-type]


def test_run_config_composes_the_sections() -> None:
    cfg = RunConfig()
    cfg.validate()
    cfg.data.tasks = [data_config.TaskConfig(name="copy", seed=-1)]
    with pytest.raises(ConfigError, match=r"^data\.tasks\.0\.seed: a seed must be"):
        cfg.validate()
    cfg.data.tasks = []
    cfg.eval.criterion.patience = -2
    with pytest.raises(ConfigError, match=r"^eval\.criterion\.patience: must be >= 0, got -2$"):
        cfg.validate()


def test_default_config_loads_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.model.preset == "micro-w64" and [t.name for t in cfg.data.tasks] == [
        "t_cmp",
        "t_add",
        "addition",
    ]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_integral_floats_are_accepted_for_integers(tmp_path: Path) -> None:
    """``2e6`` tokens means 2000000; a fraction of a token stays a type error."""
    assert load_config(None, ["train.max_tokens=2e6"]).train.max_tokens == 2_000_000
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_tokens: 3.0e+6\n  global_batch_size: 64.0\n")
    cfg = load_config(path)
    assert (cfg.train.max_tokens, cfg.train.global_batch_size) == (3_000_000, 64)
    with pytest.raises(ConfigError, match="train.max_tokens: wrong type"):
        load_config(None, ["train.max_tokens=2.5"])


# The layers of issue 11: a section module may import the bottom (errors, validation) and its own
# component's lower modules, never a layer above it nor the top-level config.
ALLOWED = {
    "smalllm/data/config.py": {"smalllm.errors", "smalllm.validation"},
    "smalllm/model/config.py": {"smalllm.errors", "smalllm.validation", "smalllm.model.presets"},
    "smalllm/eval/config.py": {"smalllm.errors", "smalllm.validation"},
    "smalllm/train/config.py": {"smalllm.errors", "smalllm.validation"},
    "smalllm/validation.py": {"smalllm.errors"},
    "smalllm/safe_yaml.py": {"smalllm.errors"},
}


@pytest.mark.parametrize("path", list(ALLOWED))
def test_section_modules_import_only_downwards(path: str) -> None:
    tree = ast.parse((Path(__file__).parent.parent / path).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    ours = {m for m in imported if m and m.startswith("smalllm")}
    assert ours <= ALLOWED[path], ours - ALLOWED[path]


def test_safe_yaml_file_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml_file(empty) is None
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_yaml_file(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"^s: line 3: duplicate key 'grids\.0\.a'"):
        load_yaml_text("grids:\n  - a: 1\n    a: 2\n", "s")
    # Equal text under different tags is not a duplicate: 1 and "1" are different keys.
    assert load_yaml_text('1: a\n"1": b\n', "s") == {1: "a", "1": "b"}


def test_a_config_saved_before_eval_criterion_still_loads(tmp_path: Path) -> None:
    # Runs saved before eval.criterion state it as three eval keys; reports and resume checks read them.
    old = tmp_path / "config.yaml"
    old.write_text("eval:\n  accuracy_threshold: 0.8\n  loss_ratio_threshold: null\n  patience: 3\n")
    crit = load_config(old).eval.criterion
    assert (crit.metric, crit.threshold, crit.patience) == ("acc", 0.8, 3)
    old.write_text("eval:\n  accuracy_threshold: 0.9\n  loss_ratio_threshold: 0.5\n")
    crit = load_config(old).eval.criterion
    assert (crit.metric, crit.threshold, crit.patience) == ("loss_ratio", 0.5, 2)
