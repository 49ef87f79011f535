"""Text views of the task registry (``smalllm tasks list`` / ``smalllm tasks show``).

A view, not part of the task layer: it needs a tokenizer to show instances as text, and tasks
never import the data layer that builds tokenizers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from smalllm.errors import SmalllmError
from smalllm.tasks import TaskVocab, build_task, describe_params, get_task, registered_tasks


def _default_tokenizer() -> Any:
    from smalllm.data.tokenizer import byte_tokenizer

    return byte_tokenizer()


def _plain(vocab: TaskVocab, ids: Sequence[int]) -> bool:
    """True if every token decodes to one printable, non-space character."""
    pieces = [vocab.decode([i]) for i in ids]
    return all(len(p) == 1 and p.isprintable() and not p.isspace() and p != "\ufffd" for p in pieces)


def render_ids(vocab: TaskVocab, ids: Sequence[int], plain: bool | None = None) -> str:
    """Readable text of token ids.

    Symbol tasks (one printable character per token) read best as plain text (``plain=True``);
    sequences holding random vocabulary tokens are shown token by token, space-separated, in the
    tokenizer's own spelling, because their decoding can run tokens together or hold broken UTF-8.
    ``plain=None`` picks plain text when every token allows it.
    """
    if plain is None:
        plain = _plain(vocab, ids)
    if plain:
        return "".join(vocab.decode([i]) for i in ids)
    return " ".join(str(t) for t in vocab.tokenizer.convert_ids_to_tokens(list(ids)))


def _format_default(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def tasks_table(tokenizer: Any = None) -> str:
    """One row per registered task: name, number of skills, description, parameters with defaults.

    The skill count is that of the default parameters (it may depend on them, e.g. ``lego``).
    """
    vocab = TaskVocab(tokenizer if tokenizer is not None else _default_tokenizer())
    rows = []
    for name, cls in registered_tasks().items():
        try:
            skills = str(len(build_task(name, {}, vocab).skills))
        except SmalllmError:  # e.g. a default that needs more vocabulary than this tokenizer has
            skills = "?"
        params = ", ".join(f"{p}={_format_default(d)}" for p, _, d, _ in describe_params(cls))
        rows.append((name, skills, getattr(cls, "description", ""), params))
    header = ("name", "skills", "description")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(2)]
    indent = " " * (sum(widths) + 4)
    lines = ["  ".join([header[0].ljust(widths[0]), header[1].ljust(widths[1]), header[2]])]
    lines.append("-" * max(len(lines[0]), *(len(indent) + len(r[2]) for r in rows)))
    for name, skills, description, params in rows:
        lines.append("  ".join([name.ljust(widths[0]), skills.ljust(widths[1]), description]))
        lines += textwrap.wrap(
            params, width=110, initial_indent=indent + "params: ", subsequent_indent=indent + "        "
        )
    return "\n".join(lines)


def _skill_list(skills: list[str]) -> str:
    return ", ".join(skills) if len(skills) <= 8 else f"{', '.join(skills[:3])}, …, {skills[-1]}"


def show_task(
    name: str,
    n: int = 8,
    params: dict[str, Any] | None = None,
    tokenizer: Any = None,
    seed: int = 0,
    vocab: TaskVocab | None = None,
    counts: np.ndarray | None = None,
) -> str:
    """``n`` sample instances of task ``name`` as text, answers marked ``⟨…⟩``, its parameters and
    its token tables (id, text and, given ``counts``, background count).

    Samples cycle through the sub-skills so that each one shows up; ``seed`` is the task seed (its
    fixed tables) and also seeds the sampling. ``vocab`` (a run's, see
    :func:`smalllm.data.task_tokens.task_vocab`) overrides ``tokenizer``; without either the byte
    tokenizer is used and tables come from its whole vocabulary.
    """
    cls = get_task(name)
    if vocab is None:
        vocab = TaskVocab(tokenizer if tokenizer is not None else _default_tokenizer())
    task = build_task(name, dict(params or {}), vocab, seed=seed)
    skills = task.skills
    space = task.instance_space()
    lines = [
        f"{name}: {cls.description}",
        f"skills ({len(skills)}): {_skill_list(skills)}",
        f"answer space: {task.answer_space(0)} (chance loss {task.chance_loss(0):.3f} nats)"
        f"   instances: {space if space is not None else 'unbounded'}   max length: {task.max_length()} tokens",
    ]
    if getattr(cls, "memorization", False):
        lines.append("memorisation task: evaluation reuses the training instances")
    lines.append("parameters:")
    for pname, ptype, default, doc in describe_params(cls):
        value = getattr(task.params, pname)
        note = "" if value == default else f" (default {_format_default(default)})"
        lines.append(f"  {pname}: {ptype} = {_format_default(value)}{note}  — {doc}")
    table = task.table_tokens()
    if table:
        from smalllm.data.task_tokens import table_lines

        where = (
            ""
            if counts is not None
            else "; tasks show --config CONFIG.yaml counts them in a run's background"
        )
        lines.append(f"token table ({len(table)} tokens, from {vocab.table_rule}{where}): id 'text' ×count")
        lines += table_lines(vocab, table, counts)
    lines.append(f"samples (seed {seed}):")
    rng = np.random.default_rng(seed)
    samples = [(i % len(skills), task.generate(rng, i % len(skills))) for i in range(n)]
    # One rendering for all samples, so that the same task never switches between the two styles.
    plain = all(_plain(vocab, inst.prompt + inst.answer) for _, inst in samples)
    for skill, inst in samples:
        tag = f"[{skills[skill]}] " if len(skills) > 1 else ""
        lines.append(
            f"  {tag}{render_ids(vocab, inst.prompt, plain)} ⟨{render_ids(vocab, inst.answer, plain)}⟩"
        )
    return "\n".join(lines)
