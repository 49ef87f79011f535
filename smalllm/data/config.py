"""The ``data`` section of a run config: tokenizer, background corpus and the injected tasks.

Only rules that the values alone decide live here. Rules that need a task generator or a
tokenizer (unknown task names and parameters, instances longer than a row, frequencies that
cannot fit in a row) are checked by :func:`smalllm.data.stream.build_families`, which both the
run and ``smalllm train --dry-run`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import MISSING

from smalllm.errors import did_you_mean, require
from smalllm.validation import COUNT_MAX, choices, integer, number, one_of, seed

TokenizerKind = Literal["bpe", "byte", "char", "pretrained"]
BackgroundSource = Literal["synthetic", "files", "hub", "tokens"]
TextUnit = Literal["file", "paragraph", "line"]
TokenDtype = Literal["uint16", "uint32"]
OrderUnit = Literal["document", "window"]
ScheduleKind = Literal["uniform", "gap", "piecewise"]
Unit = Literal["per_token", "token_fraction", "example_fraction"]
Placement = Literal["prefix", "document"]
Pool = Literal["finite", "fresh"]
TableSource = Literal["background", "vocabulary"]
MixturePolicyName = Literal["static", "stratified", "curriculum", "online"]

TOKENIZER_KINDS = choices(TokenizerKind)
SOURCES = choices(BackgroundSource)
TEXT_UNITS = choices(TextUnit)
TOKEN_DTYPES = choices(TokenDtype)
ORDER_UNITS = choices(OrderUnit)
SCHEDULE_KINDS = choices(ScheduleKind)
UNITS = choices(Unit)
PLACEMENTS = choices(Placement)
POOLS = choices(Pool)
TABLE_SOURCES = choices(TableSource)
MIXTURE_POLICIES = choices(MixturePolicyName)

VOCAB_MAX = 2**21
"""Largest tokenizer vocabulary (the biggest released vocabularies are about 256K)."""
SEQ_LEN_MAX = 2**20
"""Longest training sequence."""


def check_frequency(value: float, field_name: str) -> None:
    """Frequencies and weights: inf or NaN would turn the placement counts (and the loss) into NaN."""
    require(math.isfinite(value) and value >= 0, field_name, f"must be a finite number >= 0, got {value}")


@dataclass
class TokenizerConfig:
    kind: TokenizerKind = "bpe"
    """bpe (byte-level BPE trained on the background corpus), byte, char, or pretrained (load
    ``name_or_path``)."""
    vocab_size: int = 512
    """Target vocabulary for ``bpe`` (special tokens included); ignored by byte/char/pretrained."""
    name_or_path: str | None = None
    """For ``kind=pretrained``: a local tokenizer directory, else a Hugging Face hub name (e.g.
    ``allenai/OLMo-1B-hf``; fetched once into the HF cache, so it needs the network the first time)."""
    path: str | None = None
    """Former name of ``name_or_path`` (a local directory), still read so that runs saved with it
    resume; new configs use ``name_or_path``."""

    def pretrained_source(self) -> str:
        """Where ``kind=pretrained`` loads from: ``name_or_path``, else the former ``path``."""
        return self.name_or_path or self.path or ""

    def validate(self, prefix: str = "data.tokenizer") -> None:
        one_of(self.kind, TOKENIZER_KINDS, f"{prefix}.kind")
        integer(self.vocab_size, f"{prefix}.vocab_size", ge=64, le=VOCAB_MAX)
        require(
            self.kind != "pretrained" or bool(self.pretrained_source()),
            f"{prefix}.name_or_path",
            f"required when {prefix}.kind=pretrained",
        )


@dataclass
class SyntheticCorpusConfig:
    num_words: int = 2000
    """Lexicon size of the built-in Zipfian corpus; small values give a simplified vocabulary."""
    zipf_exponent: float = 1.1
    """Exponent of the Zipf distribution over words within each part of speech."""
    num_documents: int = 20000
    """Documents generated for the corpus (about 40-60 tokens each at the default BPE size)."""

    def validate(self, prefix: str = "data.background.synthetic") -> None:
        integer(self.num_words, f"{prefix}.num_words", ge=20, le=1_000_000)
        # Beyond ~10 the distribution is one word per part of speech: a typo, not an experiment.
        number(self.zipf_exponent, f"{prefix}.zipf_exponent", gt=0, le=10)
        integer(self.num_documents, f"{prefix}.num_documents", gt=0, le=COUNT_MAX)


@dataclass
class BackgroundConfig:
    source: BackgroundSource = "synthetic"
    """synthetic (built in, no download), files (local text/jsonl/parquet), hub (a datasets name) or
    tokens (pre-tokenized OLMo-style ``.npy``/``.bin`` token files)."""
    paths: list[str] = field(default_factory=list)
    """Local files for ``source=files`` (the format follows the extension) or ``source=tokens`` (read
    in this order)."""
    text_unit: TextUnit = "paragraph"
    """How ``.txt`` files are cut into documents: file (each file is one document), paragraph (blocks
    separated by blank lines) or line (each line)."""
    end_of_document: bool = True
    """Text sources: true ends every document with ``<eod>`` and drops the separators (blank lines,
    line ends) of ``text_unit``; false keeps them in the text and adds no ``<eod>``, so the token
    stream is the files' exact text (what a character-level model of a play should see). False is
    only for ``source=files`` with ``.txt`` paths: other documents have no separators to keep."""
    token_dtype: TokenDtype = "uint16"
    """``source=tokens``: dtype of raw ``.bin`` token files (uint16 up to 65,536 ids, else uint32);
    ``.npy`` files carry their own."""
    order_file: str | None = None
    """``source=tokens``: a ``.npy`` (or text, one per line) list of indices, counted over ``paths``
    in order, giving the global order to read them in (None: file order); unlisted ones are left out.
    What an index counts is ``order_unit``."""
    order_unit: OrderUnit = "document"
    """``source=tokens``: document (the pieces ending at the tokenizer's end-of-document id) or window
    (``data.seq_len`` tokens: file i holds len_i // seq_len of them, its tail dropped; this is how
    OLMo numbers the instances of its ``global_indices.npy``, so with ``shuffle=false`` the run reads
    OLMo's batches in OLMo's order). Held-out documents are counted in the same unit."""
    shuffle: bool = True
    """Shuffle the stream's background windows each pass (seeded by ``data.seed``); false reads the
    corpus in order, keeping a given global order (``order_file``) for the first pass and every pass."""
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

    def validate(self, prefix: str = "data.background") -> None:
        one_of(self.source, SOURCES, f"{prefix}.source")
        require(
            self.source not in ("files", "tokens") or bool(self.paths),
            f"{prefix}.paths",
            f"required when source={self.source}",
        )
        one_of(self.text_unit, TEXT_UNITS, f"{prefix}.text_unit")
        # Only .txt files keep separators (blank lines, line ends) in the text; a record of any other
        # source has none, so without <eod> its documents would run into each other.
        require(
            self.end_of_document
            or (self.source == "files" and all(Path(p).suffix.lower() == ".txt" for p in self.paths)),
            f"{prefix}.end_of_document",
            "false is only for source=files with .txt paths (other documents would run together)",
        )
        one_of(self.token_dtype, TOKEN_DTYPES, f"{prefix}.token_dtype")
        one_of(self.order_unit, ORDER_UNITS, f"{prefix}.order_unit")
        require(
            self.order_file is None or self.source == "tokens",
            f"{prefix}.order_file",
            "only for source=tokens",
        )
        require(self.source != "hub" or bool(self.hub_name), f"{prefix}.hub_name", "required when source=hub")
        require(
            not (self.source == "hub" and self.streaming and self.max_documents is None),
            f"{prefix}.max_documents",
            "required with streaming=true (the stream has no end)",
        )
        if self.max_documents is not None:
            integer(self.max_documents, f"{prefix}.max_documents", ge=1, le=10**12)
        integer(self.holdout_documents, f"{prefix}.holdout_documents", ge=0, le=10_000_000)
        self.synthetic.validate(f"{prefix}.synthetic")
        known = [self.max_documents] if self.max_documents is not None else []
        if self.source == "synthetic":
            known.append(self.synthetic.num_documents)
        if known:
            # Otherwise the corpus build fails only after tokenizing everything.
            require(
                self.holdout_documents < min(known),
                f"{prefix}.holdout_documents",
                f"{self.holdout_documents} leaves none of the corpus's {min(known)} documents to train on",
            )


@dataclass
class TaskTokensConfig:
    """Which tokens the tasks' random token tables are drawn from (T_CMP/T_ADD's value table and
    labels, fact_lookup's entities, sparse_parity's control tokens).

    Huang et al. draw ordinary vocabulary tokens that occur in the data ("address analyze pony"), so
    that the model knows each table token from the background before the task shapes it. See
    :mod:`smalllm.data.task_tokens` for the exact rules.
    """

    source: TableSource = "background"
    """background (tokens that occur in the run's training background at least ``min_count`` times)
    or vocabulary (any non-special id, including ids the background never uses)."""
    min_count: int = 100
    """For ``source=background``: fewest occurrences in the training background token shards. At 100
    every table token is also read as ordinary text, at least 100 times per pass over the corpus, so
    the background trains its embedding too; the default corpus (512-token BPE) still has 232
    eligible tokens, that of ``configs/demo.yaml`` 222, against the 102 a default ``t_cmp`` needs."""
    word_initial: bool = False
    """For ``source=background``: keep only tokens whose text is a space followed by letters (a whole
    word, like the paper's "address analyze pony"), for tokenizers that have such tokens (byte-level
    BPE, most pretrained ones; byte and char tokenizers have none, and there the rule is skipped).
    Off by default because the default 512-token BPE of the built-in corpus has only 94 such tokens
    in its background, fewer than the 102 a default ``t_cmp`` needs; without it a table token still
    has a visible text of its own that round-trips (mostly letter pieces such as " t" or "ind")."""

    def validate(self, prefix: str = "data.task_tokens") -> None:
        one_of(self.source, TABLE_SOURCES, f"{prefix}.source")
        integer(self.min_count, f"{prefix}.min_count", ge=1, le=COUNT_MAX)
        require(isinstance(self.word_initial, bool), f"{prefix}.word_initial", "expected true/false")


@dataclass
class ScheduleConfig:
    kind: ScheduleKind = "uniform"
    """uniform (evenly spread), gap (bursts every ``gap_batches``) or piecewise (``points``)."""
    gap_batches: int = 1
    """For ``gap``: all instances of this many batches arrive together in the first of them."""
    points: list[list[float]] = field(default_factory=list)
    """For ``piecewise``: ``[[step, frequency], ...]``; the frequency holds from that step on."""

    def validate(self, prefix: str) -> None:
        one_of(self.kind, SCHEDULE_KINDS, f"{prefix}.kind")
        integer(self.gap_batches, f"{prefix}.gap_batches", ge=1, le=COUNT_MAX)
        if self.kind != "piecewise":
            return
        pts = self.points
        require(bool(pts), f"{prefix}.points", "piecewise schedule needs [[step, frequency], ...]")
        require(all(len(p) == 2 for p in pts), f"{prefix}.points", "each point is [step, frequency]")
        for i, (step, freq) in enumerate(pts):
            number(step, f"{prefix}.points.{i}.0", ge=0, le=COUNT_MAX)
            require(float(step).is_integer(), f"{prefix}.points.{i}.0", f"a step must be whole, got {step}")
            check_frequency(freq, f"{prefix}.points.{i}.1")
        steps = [p[0] for p in pts]
        require(steps == sorted(steps), f"{prefix}.points", "steps must be >= 0 and increasing")


@dataclass
class TaskConfig:
    name: str = MISSING
    """Registered task name (``smalllm tasks list``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Task parameters (complexity knobs); unknown names are rejected."""
    frequency: float = 0.0
    """How often the task appears, in ``unit``; split across sub-skills by ``skill_weights``."""
    unit: Unit = "per_token"
    """per_token (instances per training token), token_fraction (share of training tokens) or
    example_fraction (share of training sequences carrying one instance)."""
    placement: Placement = "prefix"
    """prefix (overwrites the first tokens of a sequence, as Huang et al.) or document (inserted
    as its own EOD-separated document at a background document boundary)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """When instances arrive (same long-run frequency)."""
    pool: Pool = "finite"
    """finite (a fixed pool split train/test) or fresh (new instances, test set held out by key)."""
    pool_size: int = 10000
    """Instances in a finite pool (train and test together), as in Huang et al. (10K)."""
    test_fraction: float = 0.5
    """Share of a finite pool held out for evaluation."""
    skill_weights: list[float] | None = None
    """Relative frequencies of a family's sub-skills (None: the task's own default)."""
    eval_size: int | None = None
    """Cap on the held-out instances evaluated per sub-skill. None: all of a finite pool's test part
    (T_CMP's default table: 4,950 pairs); a fresh pool, which has no test part, draws 256."""
    seed: int = 0
    """Seed of this task's instance generator (kept apart from the data seed for reuse across runs)."""

    def peak_frequency(self) -> float:
        """Highest frequency the task reaches: a piecewise point may raise it above ``frequency``."""
        points = (
            [p[1] for p in self.schedule.points if len(p) == 2] if self.schedule.kind == "piecewise" else []
        )
        return max([self.frequency, *points])

    def validate(self, prefix: str) -> None:
        require(bool(self.name), f"{prefix}.name", "must name a registered task (smalllm tasks list)")
        one_of(self.unit, UNITS, f"{prefix}.unit")
        one_of(self.placement, PLACEMENTS, f"{prefix}.placement")
        one_of(self.pool, POOLS, f"{prefix}.pool")
        check_frequency(self.frequency, f"{prefix}.frequency")
        # Every unit is at most 1: a share cannot exceed the whole, and an instance has >= 2 tokens.
        require(
            self.frequency <= 1, f"{prefix}.frequency", f"a {self.unit} must be <= 1, got {self.frequency}"
        )
        self.schedule.validate(f"{prefix}.schedule")
        if self.schedule.kind == "piecewise":
            require(
                all(p[1] <= 1 for p in self.schedule.points),
                f"{prefix}.schedule.points",
                f"a {self.unit} must be <= 1",
            )
        integer(self.pool_size, f"{prefix}.pool_size", ge=2, le=10_000_000)
        number(self.test_fraction, f"{prefix}.test_fraction", gt=0, lt=1, interval=True)
        if self.skill_weights is not None:
            for i, weight in enumerate(self.skill_weights):
                # Relative weights: 1e9 : 1 is already "never"; larger values overflow their sum.
                check_frequency(weight, f"{prefix}.skill_weights.{i}")
                require(weight <= 1e9, f"{prefix}.skill_weights.{i}", f"must be <= 1e9, got {weight}")
            require(
                sum(self.skill_weights) > 0,
                f"{prefix}.skill_weights",
                "must be non-negative with a positive sum",
            )
        if self.eval_size is not None:
            integer(self.eval_size, f"{prefix}.eval_size", ge=1, le=1_000_000)
        seed(self.seed, f"{prefix}.seed")


@dataclass
class MixtureConfig:
    """How one task family's sub-skill weights change during training (Skill-It, Chen et al. 2023).

    The policy is consulted once per round of ``round_steps`` optimizer steps and sets the weights of
    the sub-skills of ``task``; the family's total frequency stays as configured. Rules that need the
    task (skill names, the graph's shape, the number of weights) are checked by
    :func:`smalllm.data.mixture_policy.build_mixture`. See ``docs/mixtures.md``.
    """

    policy: MixturePolicyName = "static"
    """static (the family's ``skill_weights`` throughout: the stream as without this section),
    stratified (uniform over ``targets`` and their prerequisites in ``graph``), curriculum
    (``points``) or online (Skill-It's online mixture from held-out losses every round)."""
    task: str | None = None
    """Name of the configured task family whose sub-skills the policy weights (e.g. ``lego``)."""
    round_steps: int = 100
    """Optimizer steps per round: the weights change only at multiples of it."""
    eta: float = 0.5
    """Online: learning rate of the multiplicative update (Skill-It: 0.5 on LEGO, 0.1 on addition)."""
    window: int = 3
    """Online: how many of the latest rounds' held-out losses each update sums (Skill-It: 3)."""
    graph: str | None = None
    """JSON skills graph ``{"skills": [names], "matrix": [[A_ij]]}``, A_ij = how much training on
    skill i lowers skill j's loss (None: the identity, no skill helps another)."""
    targets: list[str] = field(default_factory=list)
    """Stratified and online: the skills to learn (empty: all sub-skills of ``task``)."""
    points: list[Any] = field(default_factory=list)
    """Curriculum: ``[[step, [w_1, ..., w_k]], ...]``; weights hold from that step (a multiple of
    ``round_steps``) on; before the first point the family's ``skill_weights``."""
    eval_size: int = 100
    """Online: validation instances per sub-skill scored at every round boundary (Skill-It: 100):
    held-out instances after those the run's evaluation reports, so the policy never tunes on them."""
    multiplicative: bool = True
    """Online: True keeps the factor p_t (``p_{t+1} ∝ p_t·exp(η Σ_window A L)``); False drops it, as
    Skill-It's released code does (``p_{t+1} ∝ exp(η Σ_window A L)``)."""

    def validate(self, prefix: str = "data.mixture") -> None:
        one_of(self.policy, MIXTURE_POLICIES, f"{prefix}.policy")
        integer(self.round_steps, f"{prefix}.round_steps", ge=1, le=COUNT_MAX)
        number(self.eta, f"{prefix}.eta", ge=0, le=1e6)
        integer(self.window, f"{prefix}.window", ge=1, le=COUNT_MAX)
        integer(self.eval_size, f"{prefix}.eval_size", ge=1, le=1_000_000)
        for i, name in enumerate(self.targets):
            require(isinstance(name, str) and bool(name), f"{prefix}.targets.{i}", "must be a skill name")
        require(len(set(self.targets)) == len(self.targets), f"{prefix}.targets", "names a skill twice")
        require(isinstance(self.multiplicative, bool), f"{prefix}.multiplicative", "must be true or false")
        self._validate_unused(prefix)
        if self.policy == "static":
            return
        require(bool(self.task), f"{prefix}.task", f"required with policy={self.policy}")
        if self.policy == "curriculum":
            self._validate_points(f"{prefix}.points")

    def _validate_unused(self, prefix: str) -> None:
        """Refuse a setting the chosen policy ignores, so a run cannot look configured when it is not."""
        defaults = MixtureConfig()
        for name, policies in _MIXTURE_FIELD_USERS.items():
            if self.policy not in policies and getattr(self, name) != getattr(defaults, name):
                require(
                    False,
                    f"{prefix}.{name}",
                    f"policy={self.policy} ignores it (it is used by {', '.join(policies)})",
                )

    def _validate_points(self, where: str) -> None:
        require(bool(self.points), where, "a curriculum needs [[step, [weights]], ...]")
        steps = []
        for i, point in enumerate(self.points):
            require(
                isinstance(point, list | tuple) and len(point) == 2 and isinstance(point[1], list | tuple),
                f"{where}.{i}",
                "each point is [step, [w_1, ..., w_k]]",
            )
            step, weights = point
            number(step, f"{where}.{i}.0", ge=0, le=COUNT_MAX)
            require(float(step).is_integer(), f"{where}.{i}.0", f"a step must be whole, got {step}")
            require(
                int(step) % self.round_steps == 0,
                f"{where}.{i}.0",
                f"step {int(step)} is not a multiple of round_steps={self.round_steps}",
            )
            steps.append(int(step))
            for j, weight in enumerate(weights):
                number(weight, f"{where}.{i}.1.{j}", ge=0, le=1e9)
            require(sum(weights) > 0, f"{where}.{i}.1", "weights must be >= 0 with a positive sum")
        require(steps == sorted(set(steps)), where, "steps must be increasing (no step twice)")


_MIXTURE_FIELD_USERS: dict[str, tuple[str, ...]] = {
    "eta": ("online",),
    "window": ("online",),
    "multiplicative": ("online",),
    "eval_size": ("online",),
    "graph": ("stratified", "online"),
    "targets": ("stratified", "online"),
    "points": ("curriculum",),
}
"""Which policies read each policy-specific field of :class:`MixtureConfig`."""


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
    task_tokens: TaskTokensConfig = field(default_factory=TaskTokensConfig)
    """Which tokens the tasks' random token tables are drawn from."""
    cache_dir: str | None = None
    """Where tokenized shards are cached (None: $SMALLLM_CACHE or ~/.cache/smalllm)."""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    """How one family's sub-skill weights change per round (default static: as configured)."""
    decontaminate: bool = True
    """Leave out of evaluation every held-out task instance that occurs verbatim (prompt + answer
    tokens) in the training background, so no evaluated instance was seen as training text. Table
    tokens are frequent background tokens, so a few short instances occur by chance (38 of the 4,950
    ``t_cmp`` pairs on the default corpus). Searched in the first 2^30 training background tokens;
    the count left out per task is logged and recorded as ``held_out_dropped`` in ``summary.json``.
    Only the evaluated sets change: the training stream, validation sets and an online mixture's
    choices are the same either way."""

    def validate(self, prefix: str = "data") -> None:
        integer(self.seq_len, f"{prefix}.seq_len", ge=8, le=SEQ_LEN_MAX)
        seed(self.seed, f"{prefix}.seed")
        self.tokenizer.validate(f"{prefix}.tokenizer")
        self.background.validate(f"{prefix}.background")
        require(
            not (self.background.source == "tokens" and self.tokenizer.kind == "bpe"),
            f"{prefix}.tokenizer.kind",
            "source=tokens needs the tokenizer that wrote the token files (pretrained, byte or char), not bpe",
        )
        self.task_tokens.validate(f"{prefix}.task_tokens")
        names: set[str] = set()
        for i, task in enumerate(self.tasks):
            where = f"{prefix}.tasks.{i}"
            require(task.name not in names, f"{where}.name", f"task '{task.name}' is listed twice")
            names.add(task.name)
            task.validate(where)
        for unit in ("token_fraction", "example_fraction"):
            total = sum(task.peak_frequency() for task in self.tasks if task.unit == unit)
            require(total <= 1, f"{prefix}.tasks", f"{unit} frequencies sum to {total:g} > 1")
        self.mixture.validate(f"{prefix}.mixture")
        if self.mixture.policy != "static":
            require(
                self.mixture.task in names,
                f"{prefix}.mixture.task",
                f"'{self.mixture.task}' is not a configured task{did_you_mean(str(self.mixture.task), names)}",
            )
