"""Mixture policies: how one task family's sub-skill weights change from round to round (Skill-It).

A *round* is ``data.mixture.round_steps`` optimizer steps. Before round ``r`` starts, the stream asks
the run's :class:`MixtureSchedule` for that round's weights; the policy computes them from the
config and, for the online policy, the held-out losses measured at the end of the earlier rounds.
So the weights are a pure function of (config, eval history): the schedule keeps both (the weights
of every round so far and the losses), the trainer saves them in its checkpoint, and a resumed run
continues with exactly the weights the interrupted one had.

Policies (Chen et al. 2023, "Skill-It! A data-driven skills framework"):

* ``static``     – the family's ``skill_weights`` throughout (no schedule: the stream as always);
* ``stratified`` – uniform over the target skills and their prerequisites in the skills graph A
  (``S_prereq = {i : A_ij > 0 for some target j}``); no targets: all skills;
* ``curriculum`` – the weights of the last ``points`` entry at or before the round's first step;
* ``online``     – online Skill-It: ``p_0^i ∝ exp(η Σ_j A_ij)`` and, for round ``t + 1``,
  ``p_{t+1}^i ∝ p_t^i · exp(η Σ_{τ=t−w+1..t} Σ_j A_ij L_j(τ))`` (``multiplicative``, the default) or
  ``p_{t+1}^i ∝ exp(η Σ_{τ=t−w+1..t} Σ_j A_ij L_j(τ))`` (Skill-It's released code), with ``L_j(τ)``
  the validation loss of target skill j at the end of round τ and ``j`` over the targets only
  (Skill-It's target mask). The update is done in log space, so a large η cannot overflow.

The rounds' weights decide which sub-skill each instance of the family exercises: instances keep
their places (the family's placement rule, hence its total frequency, is the configured one) and
are dealt against a running target of their rounds' weights (:class:`ScheduledSkillSequence`). A
schedule with one weighting from round 0 on deals exactly as the static stream with those weights does.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from smalllm.data.config import MixtureConfig
from smalllm.data.mixture import PlacementRule
from smalllm.errors import ConfigError, SmalllmError
from smalllm.tasks.base import Task, skill_labels, skill_names

ROUND_METRIC = "mixture"
"""Prefix of the per-round weight keys in ``metrics.jsonl``: ``mixture/<task>/<skill>``."""


class MixtureNotReady(SmalllmError):
    """A round's weights were asked for before the evaluation they depend on was recorded."""


# ------------------------------------------------------------------------------------------ graph


def skill_index(task: Task) -> dict[str, int]:
    """Every accepted spelling of a sub-skill (``depth1`` and ``lego/depth1``) -> its index."""
    index = {name: i for i, name in enumerate(task.skills)}
    index.update({name: i for i, name in enumerate(skill_names(task))})
    return index


def load_graph(path: str | None, task: Task, where: str = "data.mixture.graph") -> np.ndarray:
    """The skills graph A of ``task`` as a k×k matrix in the task's sub-skill order (identity if no path).

    The file is ``{"skills": [names], "matrix": [[A_ij]], ...}`` (other keys ignored, such as those of
    ``smalllm skills-graph``'s ``skills_graph.json``); its skills may be listed in any order
    and spelled with or without the ``task/`` prefix, but must be exactly the task's sub-skills.
    """
    k = len(task.skills)
    if path is None:
        return np.eye(k)
    file = Path(path)
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file '{path}'") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}: '{path}' is not readable JSON ({type(exc).__name__})") from None
    # Other keys are allowed: ``smalllm skills-graph`` writes its method, steps and raw losses beside them.
    if not isinstance(raw, dict) or not {"skills", "matrix"} <= set(raw):
        raise ConfigError(f'{where}: \'{path}\' must hold {{"skills": [names], "matrix": [[A_ij]]}}')
    names, matrix = raw["skills"], raw["matrix"]
    index = skill_index(task)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: '{path}': skills must be a list of names")
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ConfigError(
            f"{where}: '{path}' names '{unknown[0]}', not a sub-skill of '{task.name}' "
            f"({', '.join(skill_names(task))})"
        )
    order = [index[n] for n in names]
    if sorted(order) != list(range(k)):
        raise ConfigError(
            f"{where}: '{path}' must list each of the {k} sub-skills of '{task.name}' once "
            f"({', '.join(skill_names(task))}), got {len(names)} names"
        )
    if (
        not isinstance(matrix, list)
        or len(matrix) != k
        or not all(isinstance(row, list) and len(row) == k for row in matrix)
    ):
        raise ConfigError(f"{where}: '{path}': matrix must be {k}×{k} for {k} skills")
    values = np.array(
        [
            [v if isinstance(v, int | float) and not isinstance(v, bool) else math.nan for v in row]
            for row in matrix
        ],
        dtype=np.float64,
    )
    if not np.isfinite(values).all():
        raise ConfigError(f"{where}: '{path}': matrix entries must be finite numbers")
    graph = np.empty((k, k))
    graph[np.ix_(order, order)] = values
    return graph


def _indices(names: list[str], task: Task, where: str) -> list[int]:
    index = skill_index(task)
    out = []
    for i, name in enumerate(names):
        if name not in index:
            raise ConfigError(
                f"{where}.{i}: '{name}' is not a sub-skill of '{task.name}' ({', '.join(skill_names(task))})"
            )
        out.append(index[name])
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: names a sub-skill twice")
    return out


def _normalised(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


# --------------------------------------------------------------------------------------- policies


class MixturePolicy(ABC):
    """The weights of a round from the previous round's weights and the eval history."""

    name: str
    needs_eval: bool = False
    """Whether the weights depend on held-out losses (then the trainer measures them every round)."""
    uses_graph: bool = False
    """Whether the weights depend on ``data.mixture.graph`` (then a resumed run checks it is unchanged)."""

    def __init__(self, cfg: MixtureConfig, base: np.ndarray, graph: np.ndarray, targets: list[int]) -> None:
        self.cfg = cfg
        self.base = _normalised(base)
        """The family's configured ``skill_weights``, normalised."""
        self.graph = graph
        self.targets = targets
        """Target sub-skill indices (all sub-skills when none are configured)."""

    @abstractmethod
    def round_weights(self, r: int, previous: np.ndarray | None, losses: list[np.ndarray]) -> np.ndarray:
        """Normalised weights of round ``r``; ``previous`` = round r−1's (None for r = 0) and
        ``losses[τ]`` = the held-out loss per sub-skill at the end of round τ (τ < r)."""


class StaticPolicy(MixturePolicy):
    name = "static"

    def round_weights(self, r: int, previous: np.ndarray | None, losses: list[np.ndarray]) -> np.ndarray:
        return self.base


class StratifiedPolicy(MixturePolicy):
    name = "stratified"
    uses_graph = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        support = set(self.targets)
        support.update(int(i) for i in np.flatnonzero((self.graph[:, self.targets] > 0).any(axis=1)))
        w = np.zeros(len(self.base))
        w[sorted(support)] = 1.0
        self.weights = _normalised(w)

    def round_weights(self, r: int, previous: np.ndarray | None, losses: list[np.ndarray]) -> np.ndarray:
        return self.weights


class CurriculumPolicy(MixturePolicy):
    name = "curriculum"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        k = len(self.base)
        self.points: list[tuple[int, np.ndarray]] = []
        for i, (step, weights) in enumerate(self.cfg.points):
            if len(weights) != k:
                raise ConfigError(
                    f"data.mixture.points.{i}.1: {len(weights)} weights for the {k} sub-skills of '{self.cfg.task}'"
                )
            self.points.append(
                (int(step) // self.cfg.round_steps, _normalised(np.array(weights, dtype=np.float64)))
            )

    def round_weights(self, r: int, previous: np.ndarray | None, losses: list[np.ndarray]) -> np.ndarray:
        current = self.base
        for first_round, weights in self.points:
            if first_round <= r:
                current = weights
        return current


class OnlinePolicy(MixturePolicy):
    name = "online"
    needs_eval = True
    uses_graph = True

    def round_weights(self, r: int, previous: np.ndarray | None, losses: list[np.ndarray]) -> np.ndarray:
        A = self.graph[:, self.targets]  # Skill-It's target mask: only the target columns count
        eta = float(self.cfg.eta)
        if r == 0 or previous is None:
            return _softmax(eta * A.sum(axis=1))
        window = losses[max(0, r - self.cfg.window) : r]
        if len(window) < min(r, self.cfg.window):
            raise MixtureNotReady(f"round {r} needs the held-out losses of rounds up to {r - 1}")
        summed = np.sum([loss[self.targets] for loss in window], axis=0)
        if not self.cfg.multiplicative:  # Skill-It's released code: the window alone, no p_t
            return _softmax(eta * (A @ summed))
        with np.errstate(divide="ignore"):  # a weight that underflowed to 0 stays 0
            logits = np.log(previous) + eta * (A @ summed)
        return _softmax(logits)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


POLICIES: dict[str, type[MixturePolicy]] = {
    p.name: p for p in (StaticPolicy, StratifiedPolicy, CurriculumPolicy, OnlinePolicy)
}


# ---------------------------------------------------------------------------------------- schedule


class MixtureSchedule:
    """A run's mixture state: the weights of every round so far and the losses that produced them.

    Weights are computed on first request, in round order, and then kept: they are what the stream
    placed, so they (not a recomputation) are the truth a resumed run continues from.
    """

    def __init__(self, policy: MixturePolicy, task: Task, round_steps: int) -> None:
        self.policy = policy
        self.task = task
        self.round_steps = round_steps
        self.labels = [str(label) for label in skill_labels(task)]
        """``task/skill`` per sub-skill: the keys of logs and of the losses."""
        self.weights: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []
        """``losses[τ]``: held-out loss per sub-skill at the end of round τ."""

    @property
    def needs_eval(self) -> bool:
        return self.policy.needs_eval

    def weights_of(self, r: int) -> np.ndarray:
        """Normalised sub-skill weights of round ``r``; raises :class:`MixtureNotReady` when they
        depend on an evaluation not yet recorded."""
        while len(self.weights) <= r:
            t = len(self.weights)
            if self.policy.needs_eval and len(self.losses) < t:
                raise MixtureNotReady(
                    f"data.mixture: the weights of round {t} (from step {t * self.round_steps}) depend on the "
                    f"held-out losses at the end of round {t - 1}, which are not recorded yet"
                )
            previous = self.weights[-1] if self.weights else None
            self.weights.append(self.policy.round_weights(t, previous, self.losses))
        return self.weights[r]

    def record(self, r: int, losses: np.ndarray) -> None:
        """The held-out losses per sub-skill at the end of round ``r`` (rounds in order, each once)."""
        if r != len(self.losses):
            raise SmalllmError(f"data.mixture: losses of round {r} recorded after {len(self.losses)} rounds")
        losses = np.asarray(losses, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(losses))
        if len(bad):
            raise SmalllmError(
                f"data.mixture: the held-out loss of {self.labels[bad[0]]} is {losses[bad[0]]} at the end of "
                f"round {r}; the online mixture cannot be updated (lower train.lr)"
            )
        self.losses.append(losses)

    def known_rounds(self) -> int | None:
        """How many rounds' weights can be given now without a new evaluation (None: all)."""
        if not self.policy.needs_eval:
            return None
        return max(len(self.weights), len(self.losses) + 1)

    def load_rounds(self, records: list[dict]) -> None:
        """Take the weights (and losses) of a run's ``mixture.jsonl`` lines, to show or replay what
        that run placed; the lines must be rounds 0, 1, … of this family."""
        for r, line in enumerate(records):
            if line.get("round") != r or set(line.get("weights", {})) != set(self.labels):
                raise SmalllmError(f"mixture log: line {r + 1} is not round {r} of {', '.join(self.labels)}")
        self.weights = [np.array([line["weights"][x] for x in self.labels]) for line in records]
        self.losses = [
            np.array([line["losses"][x] for x in self.labels]) for line in records[1:] if "losses" in line
        ]

    def state_dict(self) -> dict:
        """Plain lists of Python floats (exact float64 round trip; loadable with ``weights_only``)."""
        return {
            "policy": self.policy.name,
            "round_steps": self.round_steps,
            "skills": list(self.labels),
            "graph": self.policy.graph.tolist(),
            "weights": [w.tolist() for w in self.weights],
            "losses": [loss.tolist() for loss in self.losses],
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("policy", "round_steps", "skills"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise SmalllmError(
                    f"data.mixture: the checkpoint's {key} {state.get(key)!r} differs from this run's {mine!r}"
                )
        # Only a policy that weights by the graph cares: a curriculum's unused graph file may change.
        if self.policy.uses_graph and not np.array_equal(
            np.array(state["graph"], dtype=np.float64), self.policy.graph
        ):
            raise SmalllmError(
                f"data.mixture.graph: '{self.policy.cfg.graph}' changed since the run started; a resumed run "
                "must weight its rounds by the same graph (restore the file, or start over with --overwrite)"
            )
        self.weights = [np.array(w, dtype=np.float64) for w in state["weights"]]
        self.losses = [np.array(x, dtype=np.float64) for x in state["losses"]]

    def round_record(self, r: int, step: int, tokens: int) -> dict:
        """The round's line of ``mixture.jsonl``: its weights and the losses it was computed from."""
        record: dict = {
            "round": r,
            "step": step,
            "tokens": tokens,
            "policy": self.policy.name,
            "weights": dict(zip(self.labels, self.weights_of(r).tolist(), strict=True)),
        }
        if r >= 1 and len(self.losses) >= r:
            record["losses"] = dict(zip(self.labels, self.losses[r - 1].tolist(), strict=True))
        return record


def metric_key(label: str) -> str:
    """The metrics key of one sub-skill's weight: ``mixture/<task>/<skill>``."""
    return f"{ROUND_METRIC}/{label}"


def build_mixture(cfg: MixtureConfig, task: Task, base_weights: list[float]) -> MixtureSchedule | None:
    """The schedule of ``cfg`` for ``task`` (None for the static policy, which changes nothing).

    Checks what needs the task: the graph file and its shape, target names, the number of weights
    of each curriculum point, and that the task has sub-skills to weight.
    """
    if cfg.policy == "static":
        return None
    if len(task.skills) < 2:
        raise ConfigError(
            f"data.mixture.task: '{task.name}' has a single skill; a mixture policy needs a family"
        )
    graph = load_graph(cfg.graph, task)
    targets = _indices(list(cfg.targets), task, "data.mixture.targets") or list(range(len(task.skills)))
    policy = POLICIES[cfg.policy](cfg, np.asarray(base_weights, dtype=np.float64), graph, targets)
    return MixtureSchedule(policy, task, cfg.round_steps)


# ---------------------------------------------------------------------------------------- sequence


class ScheduledSkillSequence:
    """Which sub-skill the k-th instance of a family exercises when its weights change per round.

    The same interface as :class:`~smalllm.data.mixture.SkillSequence`. Instance k belongs to the
    round of the row it is placed in (the family's rule decides that, unchanged). Dealing keeps a
    running target: each instance adds its round's weights to it, and goes to the sub-skill with the
    largest ``target_s − n_s`` (ties to the lower index), ``n_s`` the instances dealt so far. So the
    long-run counts follow the weights of the rounds even when a round holds a single instance, and
    with one weighting throughout this is :class:`SkillSequence`'s quota rule
    ``(k + 1)·w_s − n_s``. Each sub-skill's instances are numbered across rounds, so its pool is read
    on without repeats. Extended lazily, round by round.
    """

    def __init__(self, schedule: MixtureSchedule, rule: PlacementRule, rows_per_round: int) -> None:
        self.schedule = schedule
        self.rule = rule
        self.rows_per_round = rows_per_round
        k = len(schedule.labels)
        self._skills = np.zeros(0, dtype=np.int32)
        self._within = np.zeros(0, dtype=np.int64)
        self._dealt = np.zeros(k, dtype=np.int64)
        self._round = 0  # next round to deal
        # The running target is _base + _seg_k·_segment: kept per run of equal weights rather than
        # summed instance by instance, so a static weighting gives exactly (k + 1)·w (bit for bit,
        # hence the same ties) as SkillSequence does.
        self._segment: np.ndarray | None = None
        self._seg_k = 0
        self._base = np.zeros(k, dtype=np.float64)

    def __getitem__(self, k: int) -> tuple[int, int]:
        """(sub-skill, index of this instance among that sub-skill's instances)."""
        if k >= len(self._skills):
            self._extend(k + 1)
        return int(self._skills[k]), int(self._within[k])

    def _extend(self, n: int) -> None:
        # Round by round, each committed whole only once its weights are known: a MixtureNotReady
        # from weights_of leaves the state as it was after the last complete round, so a later call
        # deals the same instances as one that never stopped.
        have = len(self._skills)
        skills, within = [self._skills], [self._within]
        try:
            self._deal(n, have, skills, within)
        finally:  # the complete rounds dealt before any MixtureNotReady are kept
            self._skills = np.concatenate(skills)
            self._within = np.concatenate(within)

    def _deal(self, n: int, have: int, skills: list[np.ndarray], within: list[np.ndarray]) -> None:
        while have < n:
            r = self._round
            w = self.schedule.weights_of(r)
            end = int(self.rule.count((r + 1) * self.rows_per_round))
            segment, seg_k, base = self._segment, self._seg_k, self._base
            if segment is None or not np.array_equal(w, segment):
                if segment is not None:
                    base = base + seg_k * segment
                segment, seg_k = w, 0
            dealt = self._dealt.copy()
            m = end - have
            s_arr = np.empty(m, dtype=np.int32)
            j_arr = np.empty(m, dtype=np.int64)
            for i in range(m):
                s = int(np.argmax(base + (seg_k + 1) * segment - dealt))
                s_arr[i], j_arr[i] = s, dealt[s]
                dealt[s] += 1
                seg_k += 1
            skills.append(s_arr)
            within.append(j_arr)
            self._dealt, self._segment, self._seg_k, self._base = dealt, segment, seg_k, base
            self._round = r + 1
            have = end

    def counts(self, num_instances: int) -> np.ndarray:
        """Instances of each sub-skill among the first ``num_instances`` of the family."""
        if num_instances > len(self._skills):
            self._extend(num_instances)
        return np.bincount(self._skills[:num_instances], minlength=len(self.schedule.labels))

    def requested(self, num_rows: int) -> np.ndarray:
        """Expected instances per sub-skill in rows ``0 … num_rows − 1``: each round's expected
        instances (the rule's schedule) times that round's weights."""
        out = np.zeros(len(self.schedule.labels))
        rounds = -(-num_rows // self.rows_per_round) if num_rows else 0
        for r in range(rounds):
            lo, hi = r * self.rows_per_round, min(num_rows, (r + 1) * self.rows_per_round)
            expected = float(self.rule.scheduled(hi) - self.rule.scheduled(lo))
            out += expected * self.schedule.weights_of(r)
        return out
