"""The task plug-in interface.

A task turns a seeded RNG into an :class:`Instance`: prompt token ids, answer token ids and the
sub-skill it exercises. Tasks never see text files or the trainer; they see a :class:`TaskVocab`
that maps their symbols onto the run's tokenizer. That keeps generation deterministic (same seed,
same tokenizer -> same ids) and lets the stream check vocabulary coverage before training starts.

To add a task: subclass :class:`Task`, declare a ``Params`` dataclass (its fields are the task's
parameters, each with a docstring), implement :meth:`Task.generate`, and register it — with
:func:`smalllm.tasks.register` in-process, or through the ``smalllm.tasks`` entry-point group from
an installed package::

    [project.entry-points."smalllm.tasks"]
    my_task = "my_package.tasks:MyTask"

``docs/write_a_task.md`` walks through one, including ``memorization``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from smalllm.errors import ConfigError, did_you_mean
from smalllm.labels import SEP, Label


@dataclass(frozen=True)
class Instance:
    """One task example, already in token ids.

    The training sequence is ``prompt + answer + [eod]``; loss and accuracy are measured on the
    answer tokens given everything before them.
    """

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    skill: int = 0

    @property
    def length(self) -> int:
        """Tokens this instance occupies in a training sequence (EOD included)."""
        return len(self.prompt) + len(self.answer) + 1

    @property
    def key(self) -> tuple[int, ...]:
        """Identity used to keep held-out instances out of training."""
        return self.prompt + (-1,) + self.answer


class TaskVocab:
    """The tokenizer as a task sees it: single-token symbols, text encoding and free token ids.

    ``table_ids`` are the ids a task may draw for its random token tables (:meth:`random_tokens`):
    by default every ordinary (non-special) id. The data layer narrows them to the tokens a run's
    policy allows (``data.task_tokens``: tokens seen in the background corpus, with a word-like text
    form) and names that policy in ``table_rule`` for the too-few-tokens error. Tasks never see the
    corpus itself, so a table stays a pure function of (task seed, tokenizer, eligible ids).
    """

    def __init__(self, tokenizer: Any, table_ids: Sequence[int] | None = None, table_rule: str = "") -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eod_id = int(tokenizer.eos_token_id)
        special = set(tokenizer.all_special_ids)
        self._ordinary = np.array([i for i in range(self.vocab_size) if i not in special], dtype=np.int64)
        self.table_ids = (
            self._ordinary if table_ids is None else np.array(sorted(set(table_ids)), dtype=np.int64)
        )
        """Ids that random token tables are drawn from, ascending."""
        self.table_rule = table_rule or "every ordinary token of the vocabulary"
        """Which tokens ``table_ids`` holds, in words (for error messages)."""

    def symbol(self, text: str) -> int:
        """Id of ``text``, which must be exactly one token of this tokenizer."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(
                f"task symbol {text!r} is not a single token of this tokenizer ({len(ids)} tokens); "
                "use a byte/char tokenizer or a larger BPE vocabulary"
            )
        return int(ids[0])

    def symbols(self, texts: Sequence[str]) -> list[int]:
        """Ids of several single-token symbols."""
        return [self.symbol(t) for t in texts]

    def encode(self, text: str) -> list[int]:
        """Token ids of arbitrary text (may be several tokens)."""
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

    def random_tokens(self, n: int, rng: np.random.Generator) -> list[int]:
        """``n`` distinct token ids of ``table_ids``, drawn with ``rng``."""
        if n > len(self.table_ids):
            raise ConfigError(
                f"task needs {n} distinct table tokens but only {len(self.table_ids)} are eligible "
                f"({self.table_rule})"
            )
        return [int(i) for i in rng.choice(self.table_ids, size=n, replace=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text for display (``smalllm tasks show``)."""
        return self.tokenizer.decode(list(ids))


class Task(ABC):
    """Base class of instance generators. Subclasses set ``name``, ``description`` and ``Params``."""

    name: ClassVar[str]
    """Registry name, used in configs."""
    description: ClassVar[str]
    """One line shown by ``smalllm tasks list``."""
    Params: ClassVar[type]
    """Dataclass of parameters; each field has a default and a docstring."""
    memorization: ClassVar[bool] = False
    """True for a task about recalling the very instances it trains on (a fixed fact table, as in
    ``fact_lookup``): its pool then holds nothing out and evaluation scores the trained instances.
    Leave it False for a task with a rule to learn: its held-out instances are never trained on, and
    a pool too small to hold both parts is refused before training."""

    def __init__(self, params: Any, vocab: TaskVocab, seed: int = 0) -> None:
        self.params = params
        self.vocab = vocab
        self.seed = seed
        # Task-level randomness (a token table, a fact table) comes from this RNG only, so a task is
        # the same object in every process and every run with the same seed.
        self.setup(np.random.default_rng([seed, 0x5EED]))

    def setup(self, rng: np.random.Generator) -> None:  # noqa: B027 - optional hook
        """Draw fixed task-level structure (token tables, facts). Called once from ``__init__``."""

    def table_tokens(self) -> list[int]:
        """Token ids this task drew with :meth:`TaskVocab.random_tokens` (its tables), in draw order;
        shown by ``smalllm tasks show`` and ``smalllm data inspect``. Empty for symbol tasks."""
        return []

    def render(self, instance: Instance, prefix: Sequence[int] = ()) -> tuple[str, str]:
        """(context text, answer text) of ``instance``, so an outside model or harness can read it.

        Instances are ids; the text is their decoding, which re-tokenizes to the same ids only for
        some instances (see :mod:`smalllm.tasks.text`): callers check it with :meth:`text_problem`.
        """
        from smalllm.tasks.text import render

        text = render(self.vocab.tokenizer, instance, prefix)
        return text.context, text.answer

    def text_problem(self, instance: Instance, prefix: Sequence[int] = ()) -> str | None:
        """Why :meth:`render`'s text would not re-tokenize to ``instance``'s ids (None: it does), the
        alternatives of a single-token answer set included."""
        from smalllm.tasks.text import text_problem

        answers = self.answer_set(instance.skill)
        choices = answers if answers is not None and len(instance.answer) == 1 else None
        return text_problem(self.vocab.tokenizer, instance, prefix, choices)

    @property
    def skills(self) -> list[str]:
        """Names of the sub-skills of a task family; a plain task has one."""
        return [self.name]

    def default_skill_weights(self) -> list[float]:
        """Relative frequency of each sub-skill when the config gives none (uniform by default)."""
        return [1.0] * len(self.skills)

    @abstractmethod
    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        """Return one instance of ``skill`` drawn with ``rng`` (and nothing else)."""

    def chance_loss(self, skill: int = 0) -> float:
        """Expected loss (nats per answer token) of a guesser uniform over the valid answers."""
        return float(np.log(self.answer_space(skill)))

    def answer_set(self, skill: int = 0) -> tuple[int, ...] | None:
        """Token ids valid at every answer position of ``skill``; None when the task declares none.

        Declaring it (T_CMP's two labels, the ten digit tokens of an addition, …) turns on the
        evaluator's choice metrics for the task: loss and accuracy with the softmax restricted to these
        tokens, and the probability mass the model puts on them. It also fixes :meth:`answer_space`.
        Every answer token of every instance of ``skill`` must be in it.
        """
        return None

    def answer_space(self, skill: int = 0) -> int:
        """Number of valid values of one answer token (2 for a comparison, 10 for a digit, …).

        The size of :meth:`answer_set` when the task declares one; otherwise 2 unless overridden.
        """
        answers = self.answer_set(skill)
        return 2 if answers is None else len(answers)

    def instance_space(self) -> int | None:
        """Number of distinct instances if small enough to enumerate (None: effectively unbounded)."""
        return None

    def max_length(self) -> int:
        """Longest instance in tokens (EOD included), found by sampling if not overridden."""
        rng = np.random.default_rng(1234)
        return max(self.generate(rng, s).length for s in range(len(self.skills)) for _ in range(64))


def skill_names(task: Task) -> list[str]:
    """Sub-skill names without a leading ``task/`` (tasks may or may not include it)."""
    return [name.removeprefix(f"{task.name}{SEP}") for name in task.skills]


def skill_labels(task: Task) -> list[Label]:
    """Metric label of each sub-skill: the task itself when it has one, ``task/skill`` in a family."""
    if len(task.skills) == 1:
        return [Label(task.name)]
    return [Label(task.name, skill) for skill in skill_names(task)]


# ----------------------------------------------------------------------------------------------
# Parameter parsing: a plain dict from the config -> the task's Params dataclass, with one-line errors
# ----------------------------------------------------------------------------------------------


def parse_params(task_cls: type[Task], raw: dict[str, Any], where: str) -> Any:
    """Instantiate ``task_cls.Params`` from ``raw``, rejecting unknown names and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(task_cls.Params)}
    hints = typing.get_type_hints(task_cls.Params)
    values = {}
    for key, value in (raw or {}).items():
        if key not in fields:
            raise ConfigError(
                f"{where}.{key}: unknown parameter of task '{task_cls.name}'{did_you_mean(key, fields)}"
            )
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    params = task_cls.Params(**values)
    check = getattr(params, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return params


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        # NaN passes every `x < bound` check a task's validate() makes, so it is refused here.
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(v, inner, f"{where}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value


def describe_params(task_cls: type[Task]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) for each parameter, docs read from the dataclass source."""
    docs = _field_docs(task_cls.Params)
    hints = typing.get_type_hints(task_cls.Params)
    out = []
    for f in dataclasses.fields(task_cls.Params):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        out.append((f.name, type_name, default, docs.get(f.name, "")))
    return out


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (the attribute-docstring convention)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs
