"""The training stream: background windows with task instances placed exactly (see ``mixture``).

Row g of the stream is a pure function of (data config, g): its background window comes from a
seeded per-epoch permutation (or, with ``background.shuffle=false``, the order) of non-overlapping
``seq_len`` windows of the token shards, and its task instances from the placement rules. So batch k is produced directly (resume replays nothing),
and data-parallel rank r of W takes rows ``r·B/W … (r+1)·B/W − 1`` of every global batch: the
ranks are disjoint and together cover every instance exactly once.

Placement inside a row:

* ``prefix``   – instances (``prompt answer <eod>``) overwrite the first tokens of the row, as in
  Huang et al.; several are concatenated, in an order drawn per row (seeded), so at paper scale
  (more than one instance per row) most instances follow another's ``<eod>``, and evaluation scores
  them there;
* ``document`` – instances are inserted, as their own EOD-terminated documents, at the first
  document boundary (after an ``<eod>``) that leaves room, else right after the prefix; the rest of
  the background shifts right and its tail is dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from smalllm.data.config import DataConfig, TaskConfig
from smalllm.data.eval_sets import TaskEvalSet
from smalllm.data.mixture import PlacementRule, SkillSequence, make_rule
from smalllm.data.mixture_policy import MixtureSchedule, ScheduledSkillSequence, build_mixture
from smalllm.data.pool_cache import POOLS_DIR, found_in_background
from smalllm.data.pools import InstancePool
from smalllm.data.shards import TokenShards, cache_root
from smalllm.data.task_tokens import COUNTED_TOKENS, task_vocab
from smalllm.errors import ConfigError
from smalllm.labels import BACKGROUND, Label
from smalllm.tasks import Instance, Task, TaskVocab, build_task, skill_labels, skill_names

STREAM_FORMAT = 2
"""What a data config means, as a version: bump it whenever the same config yields other rows, task
tables or eval sets. A run records it and refuses to resume under another. Format 2: task tables from
background tokens (``data.task_tokens``), placement independent between tasks, a row's instances in
a seeded order, all held-out instances of a finite pool."""


@dataclass
class Batch:
    """Rows of the stream as numpy arrays of shape [rows, seq_len]."""

    input_ids: np.ndarray
    """Token ids (int64)."""
    task_ids: np.ndarray
    """Per-token label index into ``TaskStream.labels`` (0 = background; int16)."""
    answer_mask: np.ndarray
    """True on the answer tokens of task instances."""
    loss_mask: np.ndarray
    """True where the token is a training target (all real tokens; no padding in packed rows)."""


@dataclass
class Family:
    """One configured task: its placement rule, sub-skill sequence and instance pools."""

    task: Task
    placement: str
    rule: PlacementRule
    sequence: SkillSequence | ScheduledSkillSequence
    pools: list[InstancePool]
    label_base: int
    """Label index of sub-skill 0 in ``TaskStream.labels``."""
    mixture: MixtureSchedule | None = None
    """The per-round weights of ``data.mixture`` when it names this family (None: static)."""

    def instance(self, k: int) -> tuple[Instance, int]:
        """The k-th training instance of the family and its label index."""
        skill, j = self.sequence[k]
        return self.pools[skill].train_instance(j), self.label_base + skill


def build_families(cfg: DataConfig, vocab: TaskVocab, global_batch: int) -> list[Family]:
    """Build every configured task against ``vocab`` and check that the mixture can be placed.

    These are all the stream's checks that need no corpus: unknown tasks and parameters, skill
    weights that do not match a family, token ids outside the vocabulary, instances longer than a
    row, and frequencies that would need more task tokens than a row holds. The run and
    ``smalllm train --dry-run`` both call it (through :mod:`smalllm.train.preflight`), so they
    refuse the same configs with the same message.
    """
    families: list[Family] = []
    label_base = 1  # label 0 is the background
    for ti, tcfg in enumerate(cfg.tasks):
        family = _family(cfg, ti, tcfg, vocab, global_batch, label_base)
        families.append(family)
        label_base += len(family.task.skills)
    _check_capacity(families, cfg.seq_len)
    _install_mixture(cfg, families, global_batch)
    return families


def _install_mixture(cfg: DataConfig, families: list[Family], global_batch: int) -> None:
    """Give the family named by ``data.mixture.task`` its per-round weights (static: nothing changes)."""
    if cfg.mixture.policy == "static":
        return
    family = next(f for f in families if f.task.name == cfg.mixture.task)  # validated to exist
    schedule = build_mixture(cfg.mixture, family.task, list(family.sequence.weights))
    if schedule is None:
        return
    family.mixture = schedule
    family.sequence = ScheduledSkillSequence(schedule, family.rule, cfg.mixture.round_steps * global_batch)


def _family(
    cfg: DataConfig, ti: int, tcfg: TaskConfig, vocab: TaskVocab, global_batch: int, label_base: int
) -> Family:
    where = f"data.tasks.{ti}"
    task = build_task(tcfg.name, tcfg.params, vocab, seed=tcfg.seed, where=where)
    weights = list(tcfg.skill_weights) if tcfg.skill_weights is not None else task.default_skill_weights()
    if len(weights) != len(task.skills):
        raise ConfigError(
            f"{where}.skill_weights: {len(weights)} weights for {len(task.skills)} sub-skills of '{task.name}'"
        )
    # An online mixture scores validation instances of its own, held out beside the evaluated ones.
    # (A single-skill task is refused by build_mixture, with a message about that, not about pools.)
    online = cfg.mixture.policy == "online" and cfg.mixture.task == tcfg.name and len(task.skills) > 1
    validation = cfg.mixture.eval_size if online else 0
    pools = []
    for skill in range(len(task.skills)):
        try:
            pool = InstancePool(task, skill, tcfg, ti, cache_root(cfg) / POOLS_DIR, validation)
            _check_pool(pool, vocab, cfg.seq_len, where)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        pools.append(pool)
    sequence = SkillSequence(weights)
    mean_length = float(sum(w * p.mean_length() for w, p in zip(sequence.weights, pools)))
    rule = make_rule(tcfg, ti, cfg.seq_len, global_batch, mean_length, cfg.seed)
    return Family(task, tcfg.placement, rule, sequence, pools, label_base)


def _check_pool(pool: InstancePool, vocab: TaskVocab, seq_len: int, where: str) -> None:
    instances = (pool.train[:2000] if pool.train else [pool.train_instance(k) for k in range(50)]) + pool.test
    size = vocab.vocab_size
    declared = pool.task.answer_set(pool.skill)
    allowed = set(declared) if declared is not None else None
    if declared is not None and len(allowed) != len(declared):
        raise ConfigError(f"{where}.name: task '{pool.task.name}' repeats a token in its answer_set")
    for inst in instances:
        if allowed is not None and not allowed.issuperset(inst.answer):
            token = next(t for t in inst.answer if t not in allowed)
            raise ConfigError(
                f"{where}.name: task '{pool.task.name}' emits answer token {token} outside its answer_set"
            )
        bad = [t for t in inst.prompt + inst.answer if not 0 <= t < size]
        if bad:
            raise ConfigError(
                f"{where}.name: task '{pool.task.name}' emits token id {bad[0]} outside the vocabulary of {size}"
            )
        if inst.length > seq_len:
            raise ConfigError(
                f"{where}: an instance of '{pool.task.name}' has {inst.length} tokens, longer than data.seq_len={seq_len}"
            )


def _check_capacity(families: list[Family], seq_len: int) -> None:
    need = [f.rule.max_per_row() * max(p.max_length() for p in f.pools) for f in families]
    if sum(need) <= seq_len:
        return
    # A gap schedule delivers a whole period in its first batch: name the gap if it is what overflows.
    for i, f in enumerate(families):
        spread = int(np.ceil(f.rule.rates.max(initial=0.0))) * max(p.max_length() for p in f.pools)
        if f.rule.gap and sum(need) - need[i] + spread <= seq_len:
            raise ConfigError(
                f"data.tasks.{i}.schedule.gap_batches: a period's instances all arrive in its first batch, "
                f"so a row may need {sum(need)} task tokens but data.seq_len={seq_len}; "
                "lower gap_batches or the frequency"
            )
    raise ConfigError(
        f"data.tasks: at these frequencies a row may need {sum(need)} task tokens but data.seq_len={seq_len}; "
        "lower the frequencies or raise data.seq_len"
    )


class TaskStream:
    """Seekable, deterministic stream of training rows with controlled task frequencies."""

    def __init__(
        self, cfg: DataConfig, corpus: TokenShards, global_batch: int, families: list[Family] | None = None
    ) -> None:
        """``families``: the result of :func:`build_families` for this tokenizer, when the caller has
        already built them (the trainer builds them in its checks, before the run directory exists)."""
        self.cfg = cfg
        self.corpus = corpus
        self.seq_len = cfg.seq_len
        self.global_batch = global_batch
        self.tokenizer = corpus.tokenizer
        self.vocab = task_vocab(cfg, corpus.tokenizer, corpus)
        self.eod = self.vocab.eod_id
        self.n_windows = corpus.train.num_windows(self.seq_len)
        if self.n_windows < 1:
            raise ConfigError(
                f"data.seq_len: {self.seq_len} is longer than the whole background corpus ({len(corpus.train)} tokens)"
            )
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)
        self.families = families if families is not None else build_families(cfg, self.vocab, global_batch)
        self.labels: list[Label] = [BACKGROUND] + [
            label for f in self.families for label in skill_labels(f.task)
        ]
        self.mixture: MixtureSchedule | None = next(
            (f.mixture for f in self.families if f.mixture is not None), None
        )
        """The run's mixture policy state (None: static); the trainer records its evaluations."""
        self._dropped: dict[str, int] | None = None

    # ------------------------------------------------------------------ rows

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        """This rank's share of global batch ``step``."""
        if self.global_batch % world:
            raise ConfigError(
                f"train.global_batch_size: {self.global_batch} is not divisible by {world} processes"
            )
        local = self.global_batch // world
        start = step * self.global_batch + rank * local
        return self.rows(start, start + local)

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start … stop − 1`` of the global stream."""
        n, L = stop - start, self.seq_len
        ids = self._background(start, n)
        task_ids = np.zeros((n, L), dtype=np.int16)
        answer = np.zeros((n, L), dtype=bool)
        placed: dict[int, list[tuple[int, int]]] = defaultdict(list)
        grid = np.arange(start, stop + 1, dtype=np.int64)
        for fi, family in enumerate(self.families):
            counts = family.rule.count(grid)
            for r in np.flatnonzero(np.diff(counts)):
                placed[int(r)].extend((fi, k) for k in range(int(counts[r]), int(counts[r + 1])))
        for r, items in placed.items():
            if len(items) > 1:
                # A seeded order per row, so no task sits behind another by construction (the one
                # listed first in the config would otherwise always be at position 0).
                order = np.random.default_rng([self.cfg.seed, start + r, 0x0D]).permutation(len(items))
                items = [items[i] for i in order]
            self._inject(ids[r], task_ids[r], answer[r], items)
        return Batch(
            input_ids=ids, task_ids=task_ids, answer_mask=answer, loss_mask=np.ones((n, L), dtype=bool)
        )

    def _background(self, start: int, n: int) -> np.ndarray:
        rows = np.arange(start, start + n, dtype=np.int64)
        epochs = rows // self.n_windows
        windows = np.empty(n, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            windows[sel] = self._permutation(int(epoch))[rows[sel] % self.n_windows]
        return self.corpus.train.windows(windows, self.seq_len)

    def background_passes(self, num_rows: int) -> float:
        """Passes over the background corpus that ``num_rows`` rows make (one window per row)."""
        return num_rows / self.n_windows

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.cfg.background.shuffle:
                self._perm = np.random.default_rng([self.cfg.seed, epoch, 0xB6]).permutation(self.n_windows)
            else:  # the corpus's own order (a given global order), pass after pass
                self._perm = np.arange(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def _inject(
        self, ids: np.ndarray, tids: np.ndarray, amask: np.ndarray, items: list[tuple[int, int]]
    ) -> None:
        pos = 0
        documents = []
        for fi, k in items:
            if self.families[fi].placement == "document":
                documents.append((fi, k))
                continue
            pos = self._write(ids, tids, amask, pos, fi, k)
        if not documents:
            return
        block_ids = np.zeros(self.seq_len, dtype=np.int64)
        block_tids = np.zeros(self.seq_len, dtype=np.int16)
        block_amask = np.zeros(self.seq_len, dtype=bool)
        size = 0
        for fi, k in documents:
            size = self._write(block_ids, block_tids, block_amask, size, fi, k)
        at = self._boundary(ids, pos, size)
        keep = self.seq_len - at - size
        ids[at + size :] = ids[at : at + keep].copy()
        tids[at + size :] = tids[at : at + keep].copy()
        amask[at + size :] = amask[at : at + keep].copy()
        ids[at : at + size], tids[at : at + size], amask[at : at + size] = (
            block_ids[:size],
            block_tids[:size],
            block_amask[:size],
        )

    def _boundary(self, ids: np.ndarray, pos: int, size: int) -> int:
        """First position >= pos that starts a document and leaves ``size`` tokens of room."""
        if pos > 0:  # right after a prefix instance, which ends with <eod>
            return pos
        eods = np.flatnonzero(ids[: self.seq_len - size] == self.eod)
        return int(eods[0]) + 1 if len(eods) and eods[0] + 1 <= self.seq_len - size else pos

    def _write(self, ids, tids, amask, pos: int, fi: int, k: int) -> int:
        inst, label = self.families[fi].instance(k)
        p, a = len(inst.prompt), len(inst.answer)
        end = pos + p + a + 1
        ids[pos : pos + p] = inst.prompt
        ids[pos + p : end - 1] = inst.answer
        ids[end - 1] = self.eod
        tids[pos:end] = label
        amask[pos + p : end - 1] = True
        return end

    # ------------------------------------------------------------------ accounting and eval data

    def frequency_table(self, num_rows: int) -> list[dict]:
        """Requested (expected) versus realised instance counts over ``num_rows``, per task and,
        for families, per sub-skill."""
        tokens = num_rows * self.seq_len
        out = []
        for f in self.families:
            requested = float(f.rule.scheduled(num_rows))  # a gap period is due in its first batch
            realised = int(f.rule.count(num_rows))
            rows = [(f.task.name, requested, realised)]
            if len(f.pools) > 1:
                per_skill = f.sequence.counts(realised)
                if isinstance(f.sequence, ScheduledSkillSequence):  # each round at its own weights
                    wanted = f.sequence.requested(num_rows)
                else:
                    wanted = requested * f.sequence.weights
                rows += [
                    (str(self.labels[f.label_base + s]), float(w), int(n))
                    for s, (w, n) in enumerate(zip(wanted, per_skill))
                ]
            for label, req, real in rows:
                out.append(
                    {
                        "label": label,
                        "requested": req,
                        "realised": real,
                        "per_token": real / tokens if tokens else 0.0,
                        "placement": f.placement,
                    }
                )
        return out

    def injection_steps(self, task: str, num_steps: int) -> list[int]:
        """Global batches ``s < num_steps`` that hold at least one instance of ``task`` (batch ``s`` is
        trained by optimizer step ``s + 1``): under a ``gap`` schedule, the first batch of each period
        that receives instances; under the others, nearly every batch at ordinary frequencies."""
        family = next((f for f in self.families if f.task.name == task), None)
        if family is None:
            names = ", ".join(f.task.name for f in self.families) or "none"
            raise ConfigError(f"task '{task}' is not in this run's data.tasks (it has: {names})")
        return np.flatnonzero(_per_batch(family, 0, num_steps, self.global_batch) > 0).tolist()

    @property
    def held_out_dropped(self) -> dict[str, int]:
        """Per task, the evaluated held-out instances left out because they occur verbatim in the
        training background (``data.decontaminate``; all 0 when it is off).

        Searched once, on first use, in the first :data:`~smalllm.data.task_tokens.COUNTED_TOKENS`
        tokens of the training background shards (every row is one window of one shard, so up to
        that size this covers all the text rows can hold; :attr:`decontaminated_tokens` says how
        many were read). Only evaluation changes (:meth:`~smalllm.data.pools.InstancePool.drop_from_evaluation`).
        The result is kept in the data cache (``pools/``), keyed by the corpus and the instances."""
        return self._decontaminate()

    @property
    def decontaminated_tokens(self) -> int:
        """Training background tokens the decontamination searched (0 when it is off)."""
        return min(len(self.corpus.train), COUNTED_TOKENS) if self.cfg.decontaminate else 0

    def _decontaminate(self) -> dict[str, int]:
        if self._dropped is None:
            keys: set = set()
            if self.cfg.decontaminate:
                held = [
                    i
                    for f in self.families
                    if not f.task.memorization  # scored on its training set by design
                    for pool in f.pools
                    for i in pool.eval_instances()
                ]
                sequences = [i.prompt + i.answer for i in held]
                found = found_in_background(
                    sequences, self.corpus, COUNTED_TOKENS, cache_root(self.cfg) / POOLS_DIR
                )
                keys = {held[i].key for i in found}
            self._dropped = {
                f.task.name: sum(pool.drop_from_evaluation(keys) for pool in f.pools) for f in self.families
            }
        return self._dropped

    def eval_sets(self) -> list[TaskEvalSet]:
        """Held-out instances per task, grouped by sub-skill (fixed per run; decontaminated, see
        :attr:`held_out_dropped`)."""
        self._decontaminate()
        sets = []
        # Above one prefix instance per row on average (paper scale), most of a prefix task's
        # instances follow another one's <eod>, so it is scored there rather than at position 0.
        crowded = (
            sum(float(f.rule.rates.max(initial=0.0)) for f in self.families if f.placement == "prefix") > 1
        )
        for f in self.families:
            task = f.task
            instances = [inst for pool in f.pools for inst in pool.eval_instances()]
            sets.append(
                TaskEvalSet(
                    task=task.name,
                    # Keys read eval/{task}/{skill}/…: a skill name carries no second task prefix.
                    skills=skill_names(task),
                    instances=instances,
                    chance_loss=[task.chance_loss(s) for s in range(len(task.skills))],
                    answer_sets=[_sorted_or_none(task.answer_set(s)) for s in range(len(task.skills))],
                    # Where training mostly put the task: a row's start, or just after an <eod>.
                    prefix=(self.eod,) if f.placement == "document" or crowded else (),
                )
            )
        return sets

    def mixture_eval_set(self, per_skill: int) -> TaskEvalSet:
        """The online mixture family's validation set, ``per_skill`` instances of each sub-skill:
        what the trainer scores at every round boundary. Held out from training and disjoint from
        :meth:`eval_sets` (the pools set it aside), so the policy never tunes on what the run reports."""
        fi = next(i for i, f in enumerate(self.families) if f.mixture is not None)
        full = self.eval_sets()[fi]
        kept = [inst for pool in self.families[fi].pools for inst in pool.validation[:per_skill]]
        return TaskEvalSet(
            task=full.task,
            skills=full.skills,
            instances=kept,
            chance_loss=full.chance_loss,
            answer_sets=full.answer_sets,
            prefix=full.prefix,
        )

    def fit_instances(self, sample: int) -> list[list[Instance]]:
        """Per task (in :meth:`eval_sets` order), training instances to fit baselines on; see
        :meth:`~smalllm.data.pools.InstancePool.fit_instances`."""
        return [[inst for pool in f.pools for inst in pool.fit_instances(sample)] for f in self.families]

    def batch_instances(self, step: int) -> list[int]:
        """Per task (in :meth:`eval_sets` order), the instances placed in global batch ``step`` (all
        processes' rows together; from the placement rules alone, no row is built)."""
        return [int(_per_batch(f, step, step + 1, self.global_batch)[0]) for f in self.families]

    def reference_instances(self, task: int, size: int | None) -> list[Instance]:
        """Training instances of task ``task`` (its index in :meth:`eval_sets` order), the same on
        every call: the first ``size`` the stream places (all sub-skills, in the stream's proportions;
        a finite pool's train part is stored shuffled, so these are a random sample of it), without
        repeats (a finite pool that runs out gives fewer); ``size`` None: every instance of a finite
        pool's train part. A family under a mixture policy is dealt here at its configured
        ``skill_weights``: its scheduled sequence would ask for the weights of rounds not yet trained
        (an online policy's are unknown until their evaluations), and the set must not change with them."""
        family = self.families[task]
        sequence = (
            SkillSequence(family.mixture.policy.base) if family.mixture is not None else family.sequence
        )
        finite = all(p.cfg.pool == "finite" for p in family.pools)
        if size is None:
            if not finite:
                raise ConfigError(f"data.tasks.{task}.pool: a fresh pool has no train part to take whole")
            return [inst for pool in family.pools for inst in pool.train]
        available = sum(len(p.train) for p in family.pools) if finite else size
        out: list[Instance] = []
        seen: set[int] = set()
        # A finite skill that runs out cycles; its repeats are skipped (bounded: each pass adds one).
        for k in range(size * len(family.pools) + available):
            if len(out) == min(size, available):
                break
            skill, j = sequence[k]
            inst = family.pools[skill].train_instance(j)
            if id(inst) not in seen:
                seen.add(id(inst))
                out.append(inst)
        return out

    def background_holdout(self, num_sequences: int) -> np.ndarray:
        """Held-out background text as [n, seq_len] rows (fewer if the held-out part is short)."""
        n = min(num_sequences, len(self.corpus.holdout) // self.seq_len)
        return np.asarray(self.corpus.holdout[: n * self.seq_len], dtype=np.int64).reshape(n, self.seq_len)


def _per_batch(family: Family, first: int, stop: int, global_batch: int) -> np.ndarray:
    """Instances of ``family`` in each global batch ``first … stop − 1`` (from its rule alone)."""
    boundaries = np.arange(first, stop + 1, dtype=np.int64) * global_batch
    return np.diff(family.rule.count(boundaries))


def _sorted_or_none(answers: tuple[int, ...] | None) -> tuple[int, ...] | None:
    # Sorted, so a tie of the restricted argmax goes to the lower token id, as the full argmax's does.
    return None if answers is None else tuple(sorted(int(a) for a in answers))
