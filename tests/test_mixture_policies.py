"""Mixture policies (Skill-It): the online update by hand, static = today's stream, rounds placed as
weighted, kill/resume bit-identical, one-line errors for bad values, and ``data inspect``'s rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES, StopAt, quiet, tiny_config

from smalllm import checkpoints as ckpt
from smalllm.config import load_config
from smalllm.data.inspect import inspect_stream
from smalllm.data.mixture_policy import MixtureNotReady, ScheduledSkillSequence
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream, build_families
from smalllm.data.tokenizer import byte_tokenizer
from smalllm.errors import ConfigError, SmalllmError
from smalllm.run_record import RunDir, without_wall_clock
from smalllm.tasks import TaskVocab
from smalllm.train.trainer import Trainer, train

LEGO = "data.tasks=[{name: lego, frequency: 0.5, unit: example_fraction, params: {num_vars: 3}, pool_size: 1000, eval_size: 16}]"
"""One LEGO family of 3 skills (depth1..3), in half the rows of the tiny run."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ensure_corpus(tiny_config(tmp_path_factory.mktemp("r")).data, log=quiet)


def lego_config(tmp_path: Path, *overrides: str):
    return tiny_config(tmp_path / "run", LEGO, *overrides)


def families_of(cfg, batch: int = 8):
    """The families of ``cfg`` against a byte vocabulary: the stream's checks without a corpus."""
    return build_families(cfg.data, TaskVocab(byte_tokenizer()), batch)


def skills_of_rows(stream: TaskStream, start: int, stop: int) -> list[int]:
    """The sub-skill (0-based) of every LEGO instance in rows ``start … stop − 1``, in row order."""
    batch = stream.rows(start, stop)
    return [int(t) - 1 for row in batch.task_ids for t in row[row > 0][:1]]


# ---------------------------------------------------------------------------------- online update


def online_schedule(tmp_path: Path, graph: dict, *overrides: str):
    """The LEGO family's online schedule at η = 0.5 and a window of 2 rounds, on ``graph``."""
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    cfg = lego_config(
        tmp_path,
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "data.mixture.eta=0.5",
        "data.mixture.window=2",
        f"data.mixture.graph={path}",
        *overrides,
    )
    (family,) = families_of(cfg)
    return family.mixture


def normalised(values: list[float]) -> list[float]:
    return [v / sum(values) for v in values]


def test_online_update_matches_a_hand_computation(tmp_path: Path) -> None:
    """3 skills, 2 rounds: p_1 ∝ exp(η Σ_j A_ij), p_{t+1} ∝ p_t · exp(η Σ_window A L)."""
    # Listed out of order and with the task prefix on one name: the loader puts them in skill order.
    # In skill order A = [[1, .5, 0], [0, 1, .5], [0, 0, 1]].
    schedule = online_schedule(
        tmp_path,
        {"skills": ["depth3", "lego/depth1", "depth2"], "matrix": [[1, 0, 0], [0, 1, 0.5], [0.5, 0, 1]]},
    )
    np.testing.assert_array_equal(schedule.policy.graph, [[1, 0.5, 0], [0, 1, 0.5], [0, 0, 1]])

    # Round 0: row sums of A are 1.5, 1.5, 1.
    p0 = normalised([math.exp(0.5 * 1.5), math.exp(0.5 * 1.5), math.exp(0.5 * 1.0)])
    np.testing.assert_allclose(schedule.weights_of(0), p0, rtol=1e-12)
    with pytest.raises(MixtureNotReady):
        schedule.weights_of(1)
    # End of round 0: L = (1, 2, 3); A @ L = (1 + 1, 2 + 1.5, 3) = (2, 3.5, 3).
    schedule.record(0, np.array([1.0, 2.0, 3.0]))
    p1 = normalised([p0[0] * math.exp(0.5 * 2.0), p0[1] * math.exp(0.5 * 3.5), p0[2] * math.exp(0.5 * 3.0)])
    np.testing.assert_allclose(schedule.weights_of(1), p1, rtol=1e-12)
    # End of round 1: the window of 2 sums L(0) + L(1) = (1.5, 3.5, 5.5); A @ that = (3.25, 6.25, 5.5).
    schedule.record(1, np.array([0.5, 1.5, 2.5]))
    p2 = normalised([p1[0] * math.exp(0.5 * 3.25), p1[1] * math.exp(0.5 * 6.25), p1[2] * math.exp(0.5 * 5.5)])
    np.testing.assert_allclose(schedule.weights_of(2), p2, rtol=1e-12)
    # A third round's window drops round 0: L(1) + L(2).
    schedule.record(2, np.array([0.25, 1.0, 2.0]))
    summed = np.array([0.75, 2.5, 4.5])
    g = np.array([[1, 0.5, 0], [0, 1, 0.5], [0, 0, 1]]) @ summed
    p3 = np.array(p2) * np.exp(0.5 * g)
    np.testing.assert_allclose(schedule.weights_of(3), p3 / p3.sum(), rtol=1e-12)


def test_online_targets_mask_the_graph_and_a_large_eta_does_not_overflow(tmp_path: Path) -> None:
    cfg = lego_config(
        tmp_path,
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "data.mixture.eta=1000",
        "data.mixture.targets=[depth3]",
    )
    (family,) = families_of(cfg)
    schedule = family.mixture
    # Identity graph, target depth3: only depth3's own loss counts, so it takes (almost) everything.
    schedule.weights_of(0)
    schedule.record(0, np.array([9.0, 9.0, 2.0]))
    w = schedule.weights_of(1)
    assert np.isfinite(w).all() and w[2] == pytest.approx(1.0) and w.sum() == pytest.approx(1.0)
    with pytest.raises(SmalllmError, match=r"held-out loss of lego/depth1 is nan"):
        schedule.record(1, np.array([math.nan, 1.0, 1.0]))


def test_online_update_without_the_previous_weights_matches_a_hand_computation(tmp_path: Path) -> None:
    """multiplicative=false (Skill-It's released code): p_{t+1} ∝ exp(η Σ_window A L), no p_t."""
    schedule = online_schedule(
        tmp_path,
        {"skills": ["depth1", "depth2", "depth3"], "matrix": [[1, 0.5, 0], [0, 1, 0.5], [0, 0, 1]]},
        "data.mixture.multiplicative=false",
    )

    # Round 0 as with the factor: row sums of A are 1.5, 1.5, 1.
    p0 = normalised([math.exp(0.75), math.exp(0.75), math.exp(0.5)])
    np.testing.assert_allclose(schedule.weights_of(0), p0, rtol=1e-12)
    # L(0) = (1, 2, 3): A @ L = (2, 3.5, 3); p_0 does not enter.
    schedule.record(0, np.array([1.0, 2.0, 3.0]))
    p1 = normalised([math.exp(1.0), math.exp(1.75), math.exp(1.5)])
    np.testing.assert_allclose(schedule.weights_of(1), p1, rtol=1e-12)
    # L(0) + L(1) = (1.5, 3.5, 5.5): A @ that = (3.25, 6.25, 5.5); p_1 does not enter either.
    schedule.record(1, np.array([0.5, 1.5, 2.5]))
    p2 = normalised([math.exp(1.625), math.exp(3.125), math.exp(2.75)])
    np.testing.assert_allclose(schedule.weights_of(2), p2, rtol=1e-12)


# ---------------------------------------------------------------------------------- stream


def _online_losses(r: int) -> np.ndarray:
    """Losses that move the online weights every round (eta 1: far from uniform)."""
    return np.array([1.0 + r % 3, 2.0, 0.5 * (r % 2)])


def test_a_sequence_stopped_by_a_missing_evaluation_deals_as_one_that_never_stopped(tmp_path: Path) -> None:
    online = [
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "data.mixture.round_steps=1",
        "data.mixture.eta=1",
    ]
    (stopped,) = families_of(lego_config(tmp_path, *online))
    rows_per_round = 8
    per_round = [int(stopped.rule.count((r + 1) * rows_per_round)) for r in range(12)]
    stopped.mixture.record(0, _online_losses(0))
    # Rounds 0 and 1 are known, round 2 is not: the request is stopped part way through.
    with pytest.raises(MixtureNotReady, match=r"round 2 "):
        stopped.sequence[per_round[5]]
    for r in range(1, 11):
        stopped.mixture.record(r, _online_losses(r))
    (straight,) = families_of(lego_config(tmp_path, *online))
    for r in range(11):
        straight.mixture.record(r, _online_losses(r))
    n = per_round[10]
    assert n > 30
    assert [stopped.sequence[k] for k in range(n)] == [straight.sequence[k] for k in range(n)]
    np.testing.assert_array_equal(stopped.sequence.counts(n), straight.sequence.counts(n))


class _Alternating:
    """A schedule whose two-skill weights change every round: (0.61, 0.39), (0.59, 0.41), ..."""

    labels = ["t/a", "t/b"]

    def weights_of(self, r: int) -> np.ndarray:
        return np.array([0.6, 0.4]) + (0.01 if r % 2 == 0 else -0.01) * np.array([1.0, -1.0])


class _OnePerRow:
    """Placement with one instance in every row."""

    def count(self, rows):
        return np.asarray(rows, dtype=np.int64)


def test_one_instance_per_round_follows_the_weights_not_their_argmax() -> None:
    sequence = ScheduledSkillSequence(_Alternating(), _OnePerRow(), rows_per_round=1)
    counts = sequence.counts(100)
    # The running target is 60 / 40 after 100 rounds; a quota reset per round would give [100, 0].
    np.testing.assert_array_equal(counts, [60, 40])
    # Each sub-skill's instances are numbered in order, so its pool is read on without repeats.
    dealt = [sequence[k] for k in range(100)]
    for s in (0, 1):
        assert [j for skill, j in dealt if skill == s] == list(range(counts[s]))


def test_online_mixture_and_interference_on_the_same_task_draw_a_fixed_reference_set(
    corpus, tmp_path: Path
) -> None:
    online = lego_config(
        tmp_path,
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "data.mixture.round_steps=1",
        "interference.enabled=true",
        "interference.task=lego",
    )
    stream = TaskStream(online.data, corpus, 8)
    # Needs no round's weights (round 1's are not known: no evaluation recorded), and is the set a
    # run without the mixture draws: the family's configured weights, straight from its pools.
    reference = stream.reference_instances(0, 60)
    plain = TaskStream(lego_config(tmp_path).data, corpus, 8).reference_instances(0, 60)
    assert [i.key for i in reference] == [i.key for i in plain] and len(reference) == 60


def test_the_online_policy_scores_validation_instances_the_run_never_reports(corpus, tmp_path: Path) -> None:
    cfg = lego_config(
        tmp_path, "data.mixture.policy=online", "data.mixture.task=lego", "data.mixture.eval_size=20"
    )
    stream = TaskStream(cfg.data, corpus, 8)
    validation = stream.mixture_eval_set(20)
    (reported,) = stream.eval_sets()
    assert len(validation.instances) == 3 * 20
    assert [sum(i.skill == s for i in validation.instances) for s in range(3)] == [20, 20, 20]
    assert not {i.key for i in validation.instances} & {i.key for i in reported.instances}
    trained = {i.key for pool in stream.families[0].pools for i in pool.train}
    assert not {i.key for i in validation.instances} & trained
    # A fresh pool sets aside a draw of its own and keeps it out of training by key.
    fresh = tiny_config(
        tmp_path / "fresh",
        LEGO.replace("pool_size: 1000", "pool: fresh"),
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "data.mixture.eval_size=20",
    )
    (family,) = families_of(fresh)
    for pool in family.pools:
        held = {i.key for i in pool.validation}
        assert len(held) == 20 and not held & {i.key for i in pool.eval_instances()}
        assert not held & {pool.train_instance(k).key for k in range(500)}
    # A finite pool whose test part is all reported has none to spare: a one-line error.
    short = lego_config(
        tmp_path, "data.mixture.policy=online", "data.mixture.task=lego", "data.mixture.eval_size=490"
    )
    with pytest.raises(
        ConfigError, match=r"^data\.mixture\.eval_size: 490 validation instances wanted"
    ) as err:
        families_of(short)
    assert "\n" not in str(err.value)


def test_online_round_evaluations_are_in_the_dry_run_estimate(tmp_path: Path) -> None:
    from smalllm.sweep.estimates import INSTANCE_TOKENS_GUESS, measurement_flops
    from smalllm.train.plan import make_plan

    plain = lego_config(tmp_path)
    plan = make_plan(plain)
    assert measurement_flops(plain, plan) == 0
    online = lego_config(
        tmp_path,
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "data.mixture.round_steps=4",
        "data.mixture.eval_size=10",
    )
    # 32 steps: boundaries at 4, 8, ..., 28 (7 rounds scored), 3 sub-skills, 10 instances each.
    tokens = 7 * 3 * 10 * INSTANCE_TOKENS_GUESS
    assert measurement_flops(online, plan) == pytest.approx(tokens * plan.flops_per_token / 3)


def test_static_policy_reproduces_todays_stream(corpus, tmp_path: Path) -> None:
    plain = lego_config(tmp_path)
    static = lego_config(
        tmp_path,
        "data.mixture.policy=static",
        "data.mixture.task=lego",
        "data.mixture.round_steps=2",
    )
    a, b = TaskStream(plain.data, corpus, 8), TaskStream(static.data, corpus, 8)
    assert b.mixture is None
    for step in (0, 1, 5, 40, 3):
        for name in ("input_ids", "task_ids", "answer_mask", "loss_mask"):
            np.testing.assert_array_equal(getattr(a.batch(step), name), getattr(b.batch(step), name))
    assert a.frequency_table(400) == b.frequency_table(400)
    # Stratified over every skill of an identity graph is the uniform static stream, dealt alike.
    stratified = lego_config(tmp_path, "data.mixture.policy=stratified", "data.mixture.task=lego")
    c = TaskStream(stratified.data, corpus, 8)
    assert isinstance(c.families[0].sequence, ScheduledSkillSequence)
    for step in (0, 7, 31):
        np.testing.assert_array_equal(a.batch(step).task_ids, c.batch(step).task_ids)
        np.testing.assert_array_equal(a.batch(step).input_ids, c.batch(step).input_ids)


def test_stratified_takes_targets_and_their_prerequisites(tmp_path: Path) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text(
        json.dumps({"skills": ["depth1", "depth2", "depth3"], "matrix": [[1, 0, 0], [0, 1, 0.5], [0, 0, 1]]})
    )
    cfg = lego_config(
        tmp_path,
        "data.mixture.policy=stratified",
        "data.mixture.task=lego",
        f"data.mixture.graph={graph}",
        "data.mixture.targets=[depth3]",
    )
    (family,) = families_of(cfg)
    np.testing.assert_array_equal(family.mixture.weights_of(5), [0, 0.5, 0.5])


def test_curriculum_rounds_are_placed_at_their_weights_and_rows_stay_random_access(
    corpus, tmp_path: Path
) -> None:
    cfg = lego_config(
        tmp_path,
        "data.mixture.policy=curriculum",
        "data.mixture.task=lego",
        "data.mixture.round_steps=4",
        "data.mixture.points=[[0, [1, 0, 0]], [8, [0, 1, 1]]]",
    )
    stream = TaskStream(cfg.data, corpus, 8)
    rows_per_round = 4 * 8
    first, later = (
        skills_of_rows(stream, 0, 2 * rows_per_round),
        skills_of_rows(stream, 2 * rows_per_round, 200),
    )
    assert set(first) == {0} and len(first) > 10
    assert set(later) == {1, 2} and abs(later.count(1) - later.count(2)) <= 2
    # Seeking: a fresh stream gives the same rows of a late round without drawing the earlier ones.
    fresh = TaskStream(cfg.data, corpus, 8)
    np.testing.assert_array_equal(fresh.rows(150, 170).input_ids, stream.rows(150, 170).input_ids)
    # The family's total is the configured one; per skill each round's expected count at its weights.
    table = {row["label"]: row for row in stream.frequency_table(160)}
    plain = {
        row["label"]: row for row in TaskStream(lego_config(tmp_path).data, corpus, 8).frequency_table(160)
    }
    assert table["lego"] == plain["lego"]
    assert table["lego/depth1"]["requested"] == pytest.approx(table["lego"]["requested"] * 64 / 160)
    assert sum(table[f"lego/depth{d}"]["realised"] for d in (1, 2, 3)) == table["lego"]["realised"]


def test_online_rows_after_the_first_round_wait_for_its_evaluation(corpus, tmp_path: Path) -> None:
    cfg = lego_config(
        tmp_path, "data.mixture.policy=online", "data.mixture.task=lego", "data.mixture.round_steps=2"
    )
    stream = TaskStream(cfg.data, corpus, 8)
    stream.rows(0, 16)  # round 0 needs no evaluation
    with pytest.raises(MixtureNotReady, match=r"round 1 \(from step 2\)"):
        stream.rows(0, 40)
    stream.mixture.record(0, np.array([1.0, 1.0, 1.0]))
    stream.rows(0, 32)  # rounds 0 and 1
    with pytest.raises(MixtureNotReady, match=r"round 2 \(from step 4\)"):
        stream.rows(30, 34)


# ---------------------------------------------------------------------------------- kill / resume

RESUME = (
    "train.device=cpu",
    "train.log_every=1",
    "eval.every_steps=16",
    "data.mixture.policy=online",
    "data.mixture.task=lego",
    "data.mixture.round_steps=4",
    "data.mixture.eval_size=8",
    "data.mixture.eta=20",
)


def test_online_policy_state_survives_kill_and_resume(tmp_path: Path, capsys) -> None:
    reference = tmp_path / "reference"
    train(tiny_config(reference, LEGO, *RESUME), log=quiet)
    cfg = tiny_config(tmp_path / "run", LEGO, *RESUME)
    trainer = Trainer(cfg, log=quiet)
    trainer.callbacks.insert(0, StopAt(10))  # inside round 2, after two evaluations
    assert trainer.fit()["status"] == "interrupted"
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert len(state["mixture"]["weights"]) == 3 and len(state["mixture"]["losses"]) == 2
    summary = train(cfg, resume=True, log=quiet)
    assert summary["status"] == "completed" and summary["mixture_eval_seconds"] > 0

    run, ref = RunDir(tmp_path / "run"), RunDir(reference)
    assert run.read_mixture() == ref.read_mixture()
    rounds = ref.read_mixture()
    # Rounds 0..7: step 32 ends the run, so no round 8 is scored or logged.
    assert [r["round"] for r in rounds] == list(range(8)) and "losses" in rounds[1]
    assert rounds[-1]["weights"] != rounds[0]["weights"], "the online weights never moved"
    assert [without_wall_clock(r) for r in run.read_metrics()] == [
        without_wall_clock(r) for r in ref.read_metrics()
    ]
    mixture_records = [r for r in ref.read_metrics() if r["kind"] == "mixture"]
    assert [r["step"] for r in mixture_records] == list(range(0, 29, 4))
    assert mixture_records[2]["mixture/lego/depth1/loss"] == rounds[2]["losses"]["lego/depth1"]
    weights = "model.safetensors"
    latest = [ckpt.latest_checkpoint(d / "checkpoints") / weights for d in (tmp_path / "run", reference)]
    assert latest[0].read_bytes() == latest[1].read_bytes()

    # `data inspect` shows the run's logged rounds; without the run only round 0 is known.
    shown = inspect_stream(cfg.data, 8, 8192, rows=1, run_dir=reference)
    assert "mixture: policy online on lego, rounds of 4 steps" in shown
    assert f"{rounds[7]['weights']['lego/depth3']:>14.4f}" in shown.split("mixture:")[1]
    alone = inspect_stream(cfg.data, 8, 8192, rows=1)
    assert "pass --run RUN_DIR" in alone and "table covers 4 steps" in alone
    # The leakage audit scans the rows the run placed, or only round 0's without its log.
    from smalllm.cli import main

    capsys.readouterr()
    assert main(["audit", str(reference)]) in (0, None)
    assert "scanned 256 rows" in capsys.readouterr().out
    assert main(["audit", str(reference / "config.yaml")]) in (0, None)
    assert "online mixture: scanning the 32 rows of the rounds known so far" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.mixture.eta=-1"], r"^data\.mixture\.eta: must be >= 0, got -1"),
        (["data.mixture.eta=.nan"], r"^data\.mixture\.eta: must be a finite number"),
        (["data.mixture.eta=.inf"], r"^data\.mixture\.eta: must be a finite number"),
        (["data.mixture.window=0"], r"^data\.mixture\.window: must be >= 1, got 0"),
        (["data.mixture.round_steps=0"], r"^data\.mixture\.round_steps: must be >= 1"),
        (["data.mixture.eval_size=0"], r"^data\.mixture\.eval_size: must be >= 1"),
        (
            ["data.mixture.policy=onlne"],
            r"^data\.mixture\.policy: 'onlne' is not one of .*did you mean 'online'",
        ),
        (["data.mixture.task=null"], r"^data\.mixture\.task: required with policy=online"),
        (
            ["data.mixture.task=leg"],
            r"^data\.mixture\.task: 'leg' is not a configured task \(did you mean 'lego'",
        ),
        (["data.mixture.targets=[depth1, depth1]"], r"^data\.mixture\.targets: names a skill twice"),
        (
            ["data.mixture.policy=curriculum"],
            r"^data\.mixture\.points: a curriculum needs \[\[step, \[weights\]\], \.\.\.\]",
        ),
        (
            ["data.mixture.policy=curriculum", "data.mixture.points=[[0, [1, 1, 1]], [150, [1, 0, 0]]]"],
            r"^data\.mixture\.points\.1\.0: step 150 is not a multiple of round_steps=100",
        ),
        (
            ["data.mixture.policy=curriculum", "data.mixture.points=[[0, [1, -1, 1]]]"],
            r"^data\.mixture\.points\.0\.1\.1: must be >= 0, got -1",
        ),
        (
            ["data.mixture.policy=curriculum", "data.mixture.points=[[100, [1, 1, 1]], [0, [1, 0, 0]]]"],
            r"^data\.mixture\.points: steps must be increasing",
        ),
        (
            ["data.mixture.policy=curriculum", "data.mixture.points=[[0, 3]]"],
            r"^data\.mixture\.points\.0: each point is \[step, \[w_1, \.\.\., w_k\]\]",
        ),
    ],
)
def test_bad_mixture_values_are_one_line_errors(tmp_path: Path, overrides: list[str], message: str) -> None:
    base = ["data.mixture.policy=online", "data.mixture.task=lego"]
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [*TINY_OVERRIDES, LEGO, f"run_dir={tmp_path}", *base, *overrides])
    assert "\n" not in str(err.value)


def _graph(tmp_path: Path, content: object) -> str:
    path = tmp_path / "graph.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            lambda d: f"data.mixture.graph={d / 'missing.json'}",
            r"^data\.mixture\.graph: no such file '.*missing\.json'$",
        ),
        (
            lambda d: f"data.mixture.graph={_graph(d, '{')}",
            r"^data\.mixture\.graph: '.*' is not readable JSON",
        ),
        (
            lambda d: (
                f"data.mixture.graph={_graph(d, {'skills': ['depth1', 'depth2', 'depth3'], 'matrix': [[1, 0], [0, 1]]})}"
            ),
            r"^data\.mixture\.graph: '.*': matrix must be 3×3 for 3 skills$",
        ),
        (
            lambda d: (
                f"data.mixture.graph={_graph(d, {'skills': ['depth1', 'depth9', 'depth3'], 'matrix': [[1] * 3] * 3})}"
            ),
            r"^data\.mixture\.graph: '.*' names 'depth9', not a sub-skill of 'lego' \(depth1, depth2, depth3\)$",
        ),
        (
            lambda d: (
                f"data.mixture.graph={_graph(d, {'skills': ['depth1', 'depth2'], 'matrix': [[1, 0], [0, 1]]})}"
            ),
            r"^data\.mixture\.graph: '.*' must list each of the 3 sub-skills of 'lego' once",
        ),
        (
            lambda d: (
                f"data.mixture.graph={_graph(d, {'skills': ['depth1', 'depth2', 'depth3'], 'matrix': [[1, 0, 0], [0, 1, 'x'], [0, 0, 1]]})}"
            ),
            r"^data\.mixture\.graph: '.*': matrix entries must be finite numbers$",
        ),
        (
            lambda d: f"data.mixture.graph={_graph(d, {'skills': ['depth1'], 'A': []})}",
            r"^data\.mixture\.graph: '.*' must hold \{\"skills\": \[names\], \"matrix\": \[\[A_ij\]\]\}$",
        ),
        (
            lambda d: "data.mixture.targets=[depth7]",
            r"^data\.mixture\.targets\.0: 'depth7' is not a sub-skill of 'lego'",
        ),
        (
            lambda d: ["data.mixture.policy=curriculum", "data.mixture.points=[[0,[1,1]]]"],
            r"^data\.mixture\.points\.0\.1: 2 weights for the 3 sub-skills of 'lego'$",
        ),
        (
            lambda d: [
                "data.tasks=[{name: copy, frequency: 0.1, unit: example_fraction, params: {length: 4}}]",
                "data.mixture.task=copy",
            ],
            r"^data\.mixture\.task: 'copy' has a single skill; a mixture policy needs a family$",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "shape",
        "unknown-skill",
        "skill-left-out",
        "not-a-number",
        "keys",
        "unknown-target",
        "points-length",
        "single-skill",
    ],
)
def test_graph_target_and_family_errors_name_the_field_or_file(tmp_path: Path, setting, message: str) -> None:
    overrides = setting(tmp_path)
    overrides = [overrides] if isinstance(overrides, str) else overrides
    cfg = lego_config(tmp_path, "data.mixture.policy=online", "data.mixture.task=lego", *overrides)
    with pytest.raises(ConfigError, match=message) as err:
        families_of(cfg)
    assert "\n" not in str(err.value)


def test_inspect_run_without_a_mixture_log_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from smalllm.cli import main

    args = [*TINY_OVERRIDES, LEGO, "data.mixture.policy=online", "data.mixture.task=lego"]
    assert main(["data", "inspect", *args, "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"smalllm: error: --run: {tmp_path} holds no mixture log (mixture.jsonl)"


def test_a_checkpoint_from_another_graph_or_policy_is_refused(tmp_path: Path) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text(
        json.dumps({"skills": ["depth1", "depth2", "depth3"], "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    )
    online = ["data.mixture.policy=online", "data.mixture.task=lego", f"data.mixture.graph={graph}"]
    (family,) = families_of(lego_config(tmp_path, *online))
    family.mixture.weights_of(0)
    family.mixture.record(0, np.array([1.0, 2.0, 3.0]))
    state = family.mixture.state_dict()
    (same,) = families_of(lego_config(tmp_path, *online))
    same.mixture.load_state_dict(state)
    np.testing.assert_array_equal(same.mixture.weights_of(1), family.mixture.weights_of(1))
    graph.write_text(
        json.dumps({"skills": ["depth1", "depth2", "depth3"], "matrix": [[1, 1, 0], [0, 1, 0], [0, 0, 1]]})
    )
    (edited,) = families_of(lego_config(tmp_path, *online))
    with pytest.raises(
        Exception, match=r"^data\.mixture\.graph: '.*graph\.json' changed since the run started"
    ):
        edited.mixture.load_state_dict(state)
    (stratified,) = families_of(
        lego_config(tmp_path, "data.mixture.policy=stratified", "data.mixture.task=lego")
    )
    with pytest.raises(SmalllmError, match=r"^data\.mixture: the checkpoint's policy 'online' differs"):
        stratified.mixture.load_state_dict(state)
    # A policy that does not weight by the graph does not compare it (a checkpoint written before
    # graph was refused for it may hold another).
    curriculum = [
        "data.mixture.policy=curriculum",
        "data.mixture.task=lego",
        "data.mixture.points=[[0, [1, 2, 3]]]",
    ]
    (saved,) = families_of(lego_config(tmp_path, *curriculum))
    saved.mixture.weights_of(2)
    old = saved.mixture.state_dict()
    old["graph"] = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    (resumed,) = families_of(lego_config(tmp_path, *curriculum))
    resumed.mixture.load_state_dict(old)
    np.testing.assert_array_equal(resumed.mixture.weights_of(2), saved.mixture.weights_of(2))
    (strat,) = families_of(lego_config(tmp_path, "data.mixture.policy=stratified", "data.mixture.task=lego"))
    strat.mixture.weights_of(0)
    moved = strat.mixture.state_dict()
    moved["graph"] = old["graph"]
    with pytest.raises(SmalllmError, match=r"^data\.mixture\.graph: 'None' changed since the run started"):
        strat.mixture.load_state_dict(moved)


@pytest.mark.parametrize(
    ("policy", "setting", "field", "users"),
    [
        ("static", "data.mixture.eta=3", "eta", "online"),
        ("stratified", "data.mixture.window=2", "window", "online"),
        ("curriculum", "data.mixture.multiplicative=false", "multiplicative", "online"),
        ("curriculum", "data.mixture.targets=[depth1]", "targets", "stratified, online"),
        ("static", "data.mixture.graph=g.json", "graph", "stratified, online"),
        ("online", "data.mixture.points=[[0, [1, 1, 1]]]", "points", "curriculum"),
        ("stratified", "data.mixture.eval_size=7", "eval_size", "online"),
    ],
)
def test_a_setting_the_policy_ignores_is_refused(tmp_path: Path, policy, setting, field, users) -> None:
    extra = ["data.mixture.points=[[0, [1, 1, 1]]]"] if policy == "curriculum" else []
    with pytest.raises(
        ConfigError, match=rf"^data\.mixture\.{field}: policy={policy} ignores it \(it is used by {users}\)$"
    ):
        lego_config(tmp_path, f"data.mixture.policy={policy}", "data.mixture.task=lego", *extra, setting)
    # The multiplicative switch is checked as a boolean.
    with pytest.raises(ConfigError, match=r"^data\.mixture\.multiplicative: .*not a valid bool"):
        lego_config(
            tmp_path, "data.mixture.policy=online", "data.mixture.task=lego", "data.mixture.multiplicative=x"
        )
