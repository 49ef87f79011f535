"""Metric labels: one spelling of every per-task key, read back exactly, and names that cannot be read
back refused when a task is registered or built."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smalllm.data.tokenizer import byte_tokenizer
from smalllm.errors import ConfigError
from smalllm.eval.emergence import eval_labels
from smalllm.labels import BACKGROUND, EVAL, TRAIN, Label, MetricKey, parse_key
from smalllm.tasks import _REGISTRY, Instance, Task, TaskVocab, build_task, register, skill_labels

_segment = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1)
_skill = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=0), min_size=1).map("/".join)


@given(
    task=_segment, skill=st.none() | _skill.filter(bool), metric=_segment, kind=st.sampled_from([EVAL, TRAIN])
)
def test_every_key_reads_back_as_the_label_and_metric_it_was_written_from(task, skill, metric, kind):
    label = Label(task, skill)
    assert parse_key(label.key(metric, kind)) == MetricKey(kind, label, metric)


def test_keys_of_existing_tasks_keep_their_spelling():
    assert Label("t_cmp").key("acc") == "eval/t_cmp/acc"
    assert Label("addition", "digit0").key("loss_ratio") == "eval/addition/digit0/loss_ratio"
    assert Label("sparse_parity", "3").key("loss", TRAIN) == "train/sparse_parity/3/loss"
    assert BACKGROUND.key("loss") == "eval/background/loss"
    assert BACKGROUND.key("loss", TRAIN) == "train/background/loss"
    assert str(Label("lego", "depth2")) == "lego/depth2" and str(Label("copy")) == "copy"


@pytest.mark.parametrize(
    "key", ["loss", "lr", "tokens_per_s", "eval/loss", "eval//acc", "eval/t/", "kind/t/acc"]
)
def test_other_keys_are_not_metric_keys(key):
    assert parse_key(key) is None


def test_slashes_in_a_skill_name_stay_in_the_skill():
    assert parse_key("eval/fam/a/x/acc") == MetricKey(EVAL, Label("fam", "a/x"), "acc")
    records = [
        {"kind": "eval", "step": 1, "eval/fam/acc": 0.5, "eval/fam/a/x/acc": 0.25, "eval/fam/b/acc": 0.75},
        {"kind": "eval", "step": 2, "eval/solo/acc": 1.0, "eval/background/loss": 3.0},
    ]
    assert eval_labels(records) == [Label("fam"), Label("fam", "a/x"), Label("fam", "b"), Label("solo")]


# ---------------------------------------------------------------------------------------------- names


@dataclass
class _Params:
    skills: tuple[str, ...] = ("a",)
    """Sub-skill names the task reports."""


class _Named(Task):
    description = "test only: a task with configurable sub-skill names"
    Params = _Params

    @property
    def skills(self) -> list[str]:
        return list(self.params.skills)

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        return Instance((2,), (3,), skill)


@pytest.fixture
def named_task():
    cls = type("Named", (_Named,), {"name": "test_named"})
    register(cls)
    yield cls
    _REGISTRY.pop(cls.name, None)


@pytest.mark.parametrize(
    "name, message",
    [
        ("a/b", "task name 'a/b': must be non-empty and contain no '/'"),
        ("background", "task name 'background' is reserved for the background text"),
    ],
)
def test_task_names_that_no_key_could_hold_are_refused_at_registration(name, message):
    with pytest.raises(ConfigError, match=message):
        register(type("Bad", (_Named,), {"name": name}))
    assert name not in _REGISTRY


def test_sub_skill_names_with_a_slash_become_labels_whole(named_task):
    vocab = TaskVocab(byte_tokenizer())
    task = build_task("test_named", {"skills": ["test_named/a/x", "b"]}, vocab)
    # A leading "task/" is the tasks' own prefix; what follows it is the skill, slashes and all.
    assert skill_labels(task) == [Label("test_named", "a/x"), Label("test_named", "b")]
    assert skill_labels(build_task("test_named", {"skills": ["only"]}, vocab)) == [Label("test_named")]


@pytest.mark.parametrize(
    "skills, message",
    [
        (["a", "test_named/a"], r"sub-skill name\(s\) \['a'\] appear more than once"),
        (["a", ""], "a sub-skill has an empty name"),
        (["a", "test_named/"], "a sub-skill has an empty name"),
    ],
)
def test_sub_skill_names_that_keys_could_not_tell_apart_are_refused(named_task, skills, message):
    with pytest.raises(ConfigError, match=rf"^data\.tasks\.0\.params: task 'test_named': {message}"):
        build_task("test_named", {"skills": skills}, TaskVocab(byte_tokenizer()), where="data.tasks.0")
