"""Instance pools: where the k-th training instance of a (task, sub-skill) comes from.

Two kinds, both deterministic and random-access in k (so the stream can seek):

* ``finite`` – ``pool_size`` distinct instances are drawn once, shuffled, and split into a test part
  (``test_fraction``) and a train part. Training cycles through the train part in a fixed order.
  This is Huang et al.'s setting (10K instances, 50/50).
* ``fresh`` – the test set (``eval_size`` distinct instances, :data:`FRESH_EVAL_SIZE` by default) is
  drawn first; the k-th training
  instance is drawn from its own RNG stream and re-drawn while its key is in the test set.

Either way a held-out instance can never be a training instance: by construction, not by chance.
An online mixture policy (``data.mixture``) also gets validation instances of its own: a finite
pool's test part after the reported ones, or a fresh pool's separate draw kept out of training by key.
A split that leaves fewer distinct instances to train on than it holds out for evaluation is refused:
the held-out accuracy of such a run measures the split, not the model. Tasks that are about
memorisation (``memorization = True``, e.g. fact lookup) are evaluated on the facts they were
trained on, since there is nothing else to test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from smalllm.data.config import TaskConfig
from smalllm.data.pool_cache import cached_distinct
from smalllm.errors import ConfigError
from smalllm.tasks import Instance, Task, skill_names

FRESH_EVAL_SIZE = 256
"""Held-out instances a fresh pool draws per sub-skill when ``eval_size`` is not set."""


class InstancePool:
    """Training and held-out instances of one sub-skill of one task."""

    def __init__(
        self,
        task: Task,
        skill: int,
        cfg: TaskConfig,
        task_index: int,
        cache_dir: Path | None = None,
        validation_size: int = 0,
    ) -> None:
        """``cache_dir``: where a large finite pool is kept between runs (:mod:`~smalllm.data.pool_cache`;
        None: always drawn). ``validation_size``: held-out instances set aside in :attr:`validation`
        for an online mixture policy to score (``data.mixture.eval_size``), disjoint from both the
        training instances and the evaluated ones."""
        self.task, self.skill, self.cfg = task, skill, cfg
        self._seed = [cfg.seed, task_index, skill]
        self._dropped: set = set()  # keys left out of evaluation (drop_from_evaluation)
        self._keep: Callable[[], None] | None = None
        if cfg.pool == "finite":

            def draw(rng: np.random.Generator, n: int, max_draws: int | None = None) -> list[Instance]:
                return _distinct(task, skill, n, rng, max_draws)

            space = _space(task)
            n = cfg.pool_size if space is None else min(cfg.pool_size, space)
            instances, self._keep = cached_distinct(task, skill, n, [*self._seed, 1], draw, cache_dir)
            n_test = max(1, round(len(instances) * cfg.test_fraction))
            if task.memorization:
                self.train, self.test = instances, instances
            else:
                self.test, self.train = instances[:n_test], instances[n_test:]
                self._check_split(len(self.train))
            self._test_keys: set = set()
            # The test part after the instances the evaluator reports: held out, never reported.
            reported = len(self.eval_instances())
            self.validation = self.test[reported : reported + validation_size]
        else:
            self.test = _distinct(task, skill, self._fresh_size, np.random.default_rng([*self._seed, 2]))
            self.train = []
            # A draw of its own (not a longer test draw), so the test set is the one it always was.
            self.validation = (
                _distinct(
                    task,
                    skill,
                    validation_size,
                    np.random.default_rng([*self._seed, 4]),
                    exclude={i.key for i in self.test},
                )
                if validation_size
                else []
            )
            self._test_keys = set() if task.memorization else {i.key for i in self.test + self.validation}
            if not task.memorization:
                space = _space(task)
                if len(self.test) < self._fresh_size:  # the task ran out of instances: all are held out
                    self._check_split(0)
                elif space is not None:
                    self._check_split(space - len(self.test) - len(self.validation))
        if len(self.validation) < validation_size:
            who = f"'{task.name}'" + (
                f" sub-skill '{skill_names(task)[skill]}'" if len(task.skills) > 1 else ""
            )
            raise ConfigError(
                f"data.mixture.eval_size: {validation_size} validation instances wanted, but {who} has only "
                f"{len(self.validation)} held out beyond the {len(self.eval_instances())} the run evaluates; "
                + (
                    "lower it, or lower the task's eval_size or raise its test_fraction"
                    if cfg.pool == "finite"
                    else "lower it: the task has too few distinct instances"
                )
            )

    def drop_from_evaluation(self, keys: set) -> int:
        """Leave the evaluated instances whose keys are in ``keys`` out of :meth:`eval_instances` and
        return how many went (decontamination, :attr:`~smalllm.data.stream.TaskStream.held_out_dropped`).
        Nothing else moves: they stay out of training, the validation set keeps its instances, and no
        other test instance takes their place, so the training stream and an online mixture's
        choices are the same with or without it. A memorisation task keeps all (scored on its
        training set by design)."""
        if self.task.memorization:
            return 0
        before = len(self.eval_instances())
        self._dropped = {i.key for i in self.eval_instances() if i.key in keys}
        return before - len(self.eval_instances())

    def keep_in_cache(self) -> None:
        """Write a freshly drawn finite pool to the cache (once; nothing for a pool read from it, a
        small one, or one built without a cache). Called once the run's checks have passed."""
        if self._keep is not None:
            self._keep()
            self._keep = None

    def _check_split(self, num_train: int) -> None:
        """Refuse a split that trains on fewer distinct instances than it evaluates on."""
        num_eval = len(self.eval_instances())
        if num_train >= num_eval:
            return
        task = self.task
        who = f"task '{task.name}'" + (
            f" (sub-skill '{skill_names(task)[self.skill]}')" if len(task.skills) > 1 else ""
        )
        knobs = "eval_size" if self.cfg.pool == "fresh" else "eval_size or test_fraction"
        raise ValueError(
            f"pool={self.cfg.pool}: {who} has {num_train} distinct instance(s) left to train on after "
            f"holding out {num_eval} for evaluation, too few for a held-out accuracy to mean anything; "
            f"lower {knobs}, give the task more distinct instances, or mark a task that is about "
            "recalling its training instances with memorization = True"
        )

    def train_instance(self, k: int) -> Instance:
        """The k-th training instance (k counts from the start of training)."""
        if self.cfg.pool == "finite":
            return self.train[k % len(self.train)]
        rng = np.random.default_rng([*self._seed, 3, k])
        for _ in range(1000):
            inst = self.task.generate(rng, self.skill)
            if inst.key not in self._test_keys:
                return inst
        raise ValueError(
            f"pool=fresh: the held-out set of '{self.task.name}' covers nearly all of its instances; "
            "lower eval_size or use pool=finite"
        )

    @property
    def _fresh_size(self) -> int:
        return FRESH_EVAL_SIZE if self.cfg.eval_size is None else self.cfg.eval_size

    def eval_instances(self) -> list[Instance]:
        """Held-out instances for evaluation: the whole test part, or its first ``eval_size``, less
        those :meth:`drop_from_evaluation` left out."""
        chosen = self.test if self.cfg.eval_size is None else self.test[: self.cfg.eval_size]
        return [i for i in chosen if i.key not in self._dropped] if self._dropped else chosen

    def fit_instances(self, sample: int) -> list[Instance]:
        """Training instances a baseline may be fitted on: a finite pool's whole train part, or the
        first ``sample`` training instances of a fresh pool (the same ones in every run). None for a
        memorisation task: it is scored on its training instances, which a rule fitted on them would
        only restate."""
        if self.task.memorization:
            return []
        if self.cfg.pool == "finite":
            return list(self.train)
        return [self.train_instance(k) for k in range(sample)]

    def mean_length(self) -> float:
        """Average instance length in tokens (EOD included), for the token_fraction unit."""
        sample = self.train[:1000] if self.train else [self.train_instance(k) for k in range(200)]
        return float(np.mean([i.length for i in sample]))

    def max_length(self) -> int:
        """Longest instance: the task's own bound, or longer if a sampled instance says otherwise."""
        sample = self.train[:2000] if self.train else [self.train_instance(k) for k in range(200)]
        sampled = max(max(i.length for i in sample), max((i.length for i in self.test), default=0))
        return max(sampled, self.task.max_length())


def _space(task: Task) -> int | None:
    """Distinct instances of one sub-skill, when the task declares its instance space."""
    space = task.instance_space()
    if space is None or len(task.skills) == 1:
        return space
    return space // len(task.skills)


def _distinct(
    task: Task,
    skill: int,
    n: int,
    rng: np.random.Generator,
    max_draws: int | None = None,
    exclude: set | None = None,
) -> list[Instance]:
    """Up to ``n`` distinct instances in first-drawn order, none with a key in ``exclude`` (fewer if
    the task has fewer; gives up after many repeats, or after ``max_draws`` draws)."""
    exclude = exclude or set()
    space = _space(task)
    if space is not None:
        n = min(n, space)
    seen: dict[tuple, Instance] = {}
    misses = draws = 0
    while len(seen) < n and misses < 20 * n + 1000 and (max_draws is None or draws < max_draws):
        draws += 1
        inst = task.generate(rng, skill)
        if inst.key in seen or inst.key in exclude:
            misses += 1
        else:
            seen[inst.key] = inst
    return list(seen.values())
