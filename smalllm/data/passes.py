"""How many passes (epochs) over the background corpus a run makes, for the dry run and the summary.

The stream reads the background as non-overlapping ``seq_len`` windows, one per row, and starts a
new (reshuffled) pass when they run out (:class:`smalllm.data.stream.TaskStream`). So a run of
``rows`` rows makes ``rows / windows`` passes, whatever the tasks overwrite. Above one pass the model
sees every background document more than once, which changes what "rare" means for a task; the
dry run and the run's first lines warn about it.

With the corpus built the count is exact. Before that it is estimated from what is known without
tokenizing: the token files' lengths (``source=tokens``), the file sizes for byte/char tokenizers,
or ``max_documents`` x :data:`HUB_TOKENS_PER_DOCUMENT` for a hub dataset.
"""

from __future__ import annotations

from pathlib import Path

from smalllm.data.background import check_token_files
from smalllm.data.config import DataConfig

HUB_TOKENS_PER_DOCUMENT = 430
"""Tokens per web document assumed for a hub corpus not yet built: C4.en holds about 156B tokens
in 365M documents (Raffel et al., 2020), about 430 per document."""


def estimated_background_tokens(cfg: DataConfig) -> int | None:
    """Background training tokens of ``cfg`` estimated without building the corpus (None: unknown)."""
    bg = cfg.background
    if bg.source == "tokens":
        return sum(len(tokens) for tokens in check_token_files(bg))
    if bg.source == "files" and cfg.tokenizer.kind in ("byte", "char"):
        return sum(Path(p).stat().st_size for p in bg.paths if Path(p).is_file())
    if bg.source == "hub" and bg.max_documents is not None:
        return (bg.max_documents - bg.holdout_documents) * HUB_TOKENS_PER_DOCUMENT
    return None


def passes_line(rows: int, windows: int | None, exact: bool) -> str:
    """One line for the dry run / run log: the passes over the background, with a warning above 1."""
    if not windows:
        return (
            "background   passes over the corpus unknown until it is built "
            "(`smalllm data build CONFIG`, then dry-run again)"
        )
    passes = rows / windows
    about = "" if exact else "about "
    line = f"background   {about}{passes:.3g} passes over the corpus ({windows:,} windows, {rows:,} rows)"
    if passes > 1:
        line += (
            f"  WARNING: every background document is seen ~{passes:.1f} times; use a larger corpus "
            "(or fewer train.max_tokens) for a single pass"
        )
    return line
