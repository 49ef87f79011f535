"""The model card (``README.md``) written into every checkpoint.

A checkpoint pushed to a hub, or handed to a colleague, is read without its run directory: the card
says what the model is (architecture, parameters), what it saw (tokens, the background corpus, each
injected task with its frequency, unit and placement), how well it does each task at this step
(when an evaluation ran at or before it), and the exact config that reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from smalllm.config import RunConfig
from smalllm.data.config import BackgroundConfig, TaskConfig

CARD_METRICS = ("acc", "choice_acc", "loss")
"""Per-task metrics a card shows, in this order (others stay in the run's metrics log)."""


@dataclass(frozen=True)
class CardFacts:
    """What the trainer knows at a checkpoint that the config does not say."""

    step: int
    tokens: int
    params: int
    non_embedding_params: int


def model_card(cfg: RunConfig, facts: CardFacts, metrics: list[dict]) -> str:
    """The markdown card of a checkpoint of ``cfg`` at ``facts.step``.

    ``metrics`` are the run's metrics records; the card quotes the last evaluation at or before this
    step (the final checkpoint's, at the end of a run with evaluation on).
    """
    m = cfg.model
    shape = m.shape(cfg.data.seq_len)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- smalllm",
        "- synthetic-tasks",
        "---",
        "",
        f"# {shape.name} ({m.arch}), step {facts.step:,}",
        "",
        "A small causal language model pretrained with smalllm on a background "
        "corpus with synthetic task instances injected at controlled frequencies. It loads with "
        "`AutoTokenizer` and `AutoModelForCausalLM` from this directory.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {m.arch} (`{m.preset or 'custom shape'}`) |",
        f"| parameters | {facts.params:,} ({facts.non_embedding_params:,} non-embedding) |",
        f"| layers x width | {shape.layers} x {shape.width}, {shape.heads} heads "
        f"({shape.kv_heads or shape.heads} key/value), MLP {shape.mlp_dim} |",
        f"| tied embeddings | {'yes' if m.tie_embeddings else 'no'} |",
        f"| context | {cfg.data.seq_len} tokens |",
        f"| tokenizer | {_tokenizer(cfg)} |",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| tokens trained | {facts.tokens:,} (step {facts.step:,} of a {cfg.train.max_tokens:,}-token run) |",
        f"| batch | {cfg.train.global_batch_size} rows x {cfg.data.seq_len} tokens |",
        f"| learning rate | {cfg.train.lr:g} ({cfg.train.schedule}) |",
        f"| background | {_background(cfg.data.background)} |",
        f"| seeds | data {cfg.data.seed}, train {cfg.train.seed} |",
        "",
        "## Tasks",
        "",
    ]
    lines += _tasks(cfg.data.tasks)
    lines += ["", "## Metrics", ""]
    lines += _metrics(metrics, facts.step)
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg)).rstrip()
    lines += [
        "",
        "## Reproduce",
        "",
        "Save this config as `reproduce.yaml` and train it with smalllm installed (`run_dir=` picks the output):",
        "",
        "```bash",
        "smalllm train reproduce.yaml run_dir=runs/reproduce",
        "```",
        "",
        "```yaml",
        config_yaml,
        "```",
        "",
    ]
    return "\n".join(lines)


def _tokenizer(cfg: RunConfig) -> str:
    t = cfg.data.tokenizer
    if t.kind == "pretrained":
        return f"pretrained `{t.name_or_path or t.path}`"
    if t.kind == "bpe":
        return f"byte-level BPE, {t.vocab_size:,} tokens, trained on the background"
    return t.kind


def _background(b: BackgroundConfig) -> str:
    if b.source == "synthetic":
        s = b.synthetic
        return f"synthetic Zipf text ({s.num_words:,} words, {s.num_documents:,} documents)"
    if b.source == "hub":
        extra = f" ({b.hub_config})" if b.hub_config else ""
        return f"hub data set `{b.hub_name}`{extra}, split {b.split}"
    return f"{b.source}: " + ", ".join(f"`{p}`" for p in b.paths)


def _tasks(tasks: list[TaskConfig]) -> list[str]:
    if not tasks:
        return ["No tasks: background text only."]
    rows = [
        "| task | frequency | unit | placement | schedule | parameters |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks:
        params = ", ".join(f"{k}={v}" for k, v in sorted(t.params.items())) or "-"
        rows.append(
            f"| {t.name} | {t.frequency:g} | {t.unit} | {t.placement} | {t.schedule.kind} | {params} |"
        )
    return rows


def _metrics(records: list[dict], step: int) -> list[str]:
    evals = [r for r in records if r.get("kind") == "eval" and r.get("step", 0) <= step]
    if not evals:
        return ["No evaluation ran up to this step."]
    last = evals[-1]
    by_label: dict[str, dict[str, float]] = {}
    for key, value in last.items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == "eval" and parts[-1] in CARD_METRICS:
            by_label.setdefault("/".join(parts[1:-1]), {})[parts[-1]] = value
    rows = [
        f"Held-out evaluation at step {last['step']:,} ({last.get('tokens', 0):,} tokens):",
        "",
        "| task | " + " | ".join(CARD_METRICS) + " |",
        "|---|" + "---|" * len(CARD_METRICS),
    ]
    for label, values in by_label.items():
        cells = [f"{values[k]:.4f}" if k in values else "-" for k in CARD_METRICS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows
