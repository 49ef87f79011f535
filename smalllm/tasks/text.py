"""Task instances as text, and the check that the text re-tokenizes to the very same ids.

Instances are token ids (see :mod:`smalllm.tasks.base`). An outside model, or a harness such as
lm-evaluation-harness, sees text instead: the context is encoded on its own and the answer as the
rest of ``context + answer``. That is only the instance the ids describe when

* ``encode(context) == prefix + prompt`` (the decoded prompt does not re-merge into other ids);
* ``encode(context + answer) == prefix + prompt + answer`` (the answer does not merge with the
  context's last token either);
* the context does not end in whitespace (lm-eval moves trailing whitespace of a context into the
  continuation, which changes the split);
* for a choice over an answer set, every alternative passes the second check too (else the harness
  would score a different token sequence for that alternative).

:func:`text_problem` says which of these fails (None when none does); exports and outside-model
evaluation drop the instances it flags and report how many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smalllm.tasks.base import Instance


@dataclass(frozen=True)
class TextInstance:
    """One instance as text: the context to condition on and the answer to score after it."""

    context: str
    """Decoded ``prefix + prompt``."""
    answer: str
    """Decoded answer; scored as the continuation of ``context`` with no delimiter in between."""


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def render(tokenizer: Any, instance: Instance, prefix: Sequence[int] = ()) -> TextInstance:
    """The text of ``prefix + prompt`` and of the answer (not checked: see :func:`text_problem`)."""
    return TextInstance(
        tokenizer.decode([*prefix, *instance.prompt]), tokenizer.decode(list(instance.answer))
    )


def text_problem(
    tokenizer: Any,
    instance: Instance,
    prefix: Sequence[int] = (),
    choices: Sequence[int] | None = None,
) -> str | None:
    """Why the text of ``instance`` does not re-tokenize to its ids, or None when it does.

    ``choices`` (single-token answers only) are the alternatives of a multiple choice: each one's
    text after the context must re-tokenize to the context's ids plus that one token.
    """
    text = render(tokenizer, instance, prefix)
    head = [*prefix, *instance.prompt]
    if not text.context or text.context != text.context.rstrip():
        return "context ends in whitespace"
    if _encode(tokenizer, text.context) != head:
        return "context re-tokenizes differently"
    if _encode(tokenizer, text.context + text.answer) != head + list(instance.answer):
        return "answer re-tokenizes differently after the context"
    if choices is not None:
        for token in choices:
            if _encode(tokenizer, text.context + tokenizer.decode([int(token)])) != [*head, int(token)]:
                return f"answer choice {int(token)} re-tokenizes differently after the context"
    return None
