"""Choice metrics, bootstrap intervals, baselines and the learned criterion, checked against hand
computations on stand-in models and tiny pools."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smalllm.config import ModelConfig
from smalllm.data.config import TaskConfig
from smalllm.data.eval_sets import TaskEvalSet, load_eval_sets, save_eval_sets
from smalllm.data.pools import FRESH_EVAL_SIZE, InstancePool
from smalllm.data.tokenizer import byte_tokenizer
from smalllm.errors import ConfigError
from smalllm.eval import evaluator
from smalllm.eval.baselines import (
    check_criterion_applies,
    check_threshold,
    compute_baselines,
    one_position_rule,
)
from smalllm.eval.config import CriterionConfig, EvalConfig
from smalllm.eval.emergence import emergence_table
from smalllm.eval.evaluator import bootstrap_ci, evaluate, score_instances
from smalllm.model.build import build_model
from smalllm.tasks import build_task, registered_tasks
from smalllm.tasks.base import Instance, TaskVocab

V = 8
PAD = 0
TABLE = torch.tensor(
    [[0.3 * ((3 * r + 5 * c) % 7) - 0.2 * c for c in range(V)] for r in range(V)], dtype=torch.float32
)
"""Logits of the stand-in model: the next-token logits after token r are TABLE[r]."""


class LastTokenModel(torch.nn.Module):
    """Logits depend only on the current token, so every answer position is computable by hand."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=TABLE[input_ids])


def hand_scores(inst: Instance, answers: tuple[int, ...], prefix: tuple[int, ...] = ()):
    """(loss, choice loss, label mass) per answer token, exact hit, choice hit of one instance."""
    seq = prefix + inst.prompt + inst.answer
    start = len(prefix) + len(inst.prompt)
    losses, c_losses, masses, hits, c_hits = [], [], [], [], []
    for k, a in enumerate(inst.answer):
        logits = TABLE[seq[start - 1 + k]].double()
        logp = torch.log_softmax(logits, dim=-1)
        sub = logits[list(answers)]
        logq = torch.log_softmax(sub, dim=-1)
        losses.append(-float(logp[a]))
        c_losses.append(-float(logq[answers.index(a)]))
        masses.append(float(logp[list(answers)].exp().sum()))
        hits.append(int(logits.argmax()) == a)
        c_hits.append(answers[int(sub.argmax())] == a)
    return losses, c_losses, masses, all(hits), all(c_hits)


def test_choice_metrics_match_hand_computation() -> None:
    answers = (2, 3)
    insts = [
        Instance((1, 4), (2,)),
        Instance((5,), (3,)),
        Instance((6, 1, 7), (2, 3)),  # two answer tokens: the second is predicted after the first
        Instance((4, 4), (3, 2)),
        Instance((7,), (2,)),
    ]
    es = TaskEvalSet("toy", ["toy"], insts, [math.log(2)], answer_sets=[answers], prefix=(5,))
    m = evaluate(LastTokenModel(), [es], None, batch_size=2, pad_id=PAD, batch_tokens=7)
    per = [hand_scores(i, answers, prefix=(5,)) for i in insts]
    loss = np.concatenate([p[0] for p in per])
    c_loss = np.concatenate([p[1] for p in per])
    mass = np.concatenate([p[2] for p in per])
    assert m["eval/toy/loss"] == pytest.approx(loss.mean(), rel=1e-6)
    assert m["eval/toy/choice_loss"] == pytest.approx(c_loss.mean(), rel=1e-6)
    assert m["eval/toy/label_mass"] == pytest.approx(mass.mean(), rel=1e-6)
    assert m["eval/toy/acc"] == pytest.approx(np.mean([p[3] for p in per]))
    assert m["eval/toy/choice_acc"] == pytest.approx(np.mean([p[4] for p in per]))
    assert m["eval/toy/n"] == 5
    # The stand-in is not a trivial case: restricting to the two labels changes the verdicts.
    assert m["eval/toy/choice_acc"] > m["eval/toy/acc"]
    assert m["eval/toy/acc_lo"] <= m["eval/toy/acc"] <= m["eval/toy/acc_hi"]
    assert m["eval/toy/choice_acc_lo"] <= m["eval/toy/choice_acc"] <= m["eval/toy/choice_acc_hi"]
    # The prefix is part of the context: scoring it as part of the prompt gives the same numbers.
    moved = [Instance((5, *i.prompt), i.answer) for i in insts]
    plain = TaskEvalSet("toy", ["toy"], moved, [math.log(2)], answer_sets=[answers])
    assert evaluate(LastTokenModel(), [plain], None, batch_size=64, pad_id=PAD) == pytest.approx(m)


def test_choice_metrics_per_skill_and_only_with_answer_sets() -> None:
    insts = [
        Instance((1,), (2,), 0),
        Instance((4,), (3,), 0),
        Instance((6,), (5,), 1),
        Instance((2,), (7,), 1),
    ]
    sets = [(2, 3), (5, 6, 7)]
    es = TaskEvalSet("fam", ["a", "b"], insts, [math.log(2), math.log(3)], answer_sets=sets)
    m = evaluate(LastTokenModel(), [es], None, batch_size=3, pad_id=PAD)
    for s, name in enumerate(["a", "b"]):
        mine = [hand_scores(i, sets[s]) for i in insts if i.skill == s]
        assert m[f"eval/fam/{name}/choice_loss"] == pytest.approx(np.mean([p[1][0] for p in mine]), rel=1e-6)
        assert m[f"eval/fam/{name}/label_mass"] == pytest.approx(np.mean([p[2][0] for p in mine]), rel=1e-6)
        assert m[f"eval/fam/{name}/choice_acc"] == pytest.approx(np.mean([p[4] for p in mine]))
        assert m[f"eval/fam/{name}/n"] == 2
    # A sub-skill without an answer set: the task keeps today's metrics (plus n and the interval).
    partial = TaskEvalSet("fam", ["a", "b"], insts, [math.log(2), math.log(3)], answer_sets=[sets[0], None])
    keys = set(evaluate(LastTokenModel(), [partial], None, batch_size=3, pad_id=PAD))
    assert not any("choice" in k or "label_mass" in k for k in keys)
    assert {"eval/fam/n", "eval/fam/acc_lo", "eval/fam/a/acc_hi"} <= keys


def test_token_batches_give_the_same_scores() -> None:
    rng = np.random.default_rng(3)
    insts = [
        Instance(
            tuple(rng.integers(1, V, size=rng.integers(1, 6)).tolist()),
            tuple(rng.integers(2, 4, size=2).tolist()),
        )
        for _ in range(40)
    ]
    ref = score_instances(LastTokenModel(), insts, batch_size=1, pad_id=PAD, answer_sets=[(2, 3)])
    for kwargs in (
        {"batch_size": 40},
        {"batch_size": 40, "batch_tokens": 9},
        {"batch_size": 7, "batch_tokens": 1},
    ):
        got = score_instances(LastTokenModel(), insts, pad_id=PAD, answer_sets=[(2, 3)], **kwargs)
        np.testing.assert_allclose(got.loss_sum, ref.loss_sum, rtol=1e-6)
        np.testing.assert_allclose(got.choice_loss_sum, ref.choice_loss_sum, rtol=1e-6)
        np.testing.assert_array_equal(got.choice_correct, ref.choice_correct)
        np.testing.assert_array_equal(got.num_correct, ref.num_correct)


def test_bootstrap_interval_is_the_instance_bootstrap() -> None:
    hits = np.r_[np.ones(90), np.zeros(30)]
    lo, hi = bootstrap_ci(hits)
    assert (lo, hi) == bootstrap_ci(hits)  # fixed seed
    # Explicit resampling of instances gives the same percentiles up to Monte-Carlo noise.
    rng = np.random.default_rng(7)
    means = hits[rng.integers(0, len(hits), size=(4000, len(hits)))].mean(axis=1)
    ref_lo, ref_hi = np.percentile(means, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.02) and hi == pytest.approx(ref_hi, abs=0.02)
    # ... which is close to the normal approximation p +- 1.96 sqrt(p(1-p)/n) = 0.75 +- 0.077.
    assert (lo, hi) == pytest.approx((0.75 - 0.0775, 0.75 + 0.0775), abs=0.02)
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Answer sets of the built-in tasks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(registered_tasks()))
def test_builtin_answer_sets_hold_every_answer(name: str) -> None:
    task = build_task(name, {}, TaskVocab(byte_tokenizer()), seed=1)
    rng = np.random.default_rng(0)
    for s in range(len(task.skills)):
        answers = task.answer_set(s)
        assert answers is not None, f"{name} declares no answer set"
        assert task.answer_space(s) == len(set(answers)) == len(answers)
        for _ in range(50):
            assert set(task.generate(rng, s).answer) <= set(answers)


def test_answer_set_values() -> None:
    vocab = TaskVocab(byte_tokenizer())
    cmp = build_task("t_cmp", {}, vocab)
    assert cmp.answer_set() == (cmp.label_less, cmp.label_not_less)
    assert build_task("t_add", {"num_values": 7}, vocab).answer_space() == 7
    addition = build_task("addition", {"num_digits": 2, "include_carry": True}, vocab)
    digits = tuple(vocab.symbols(list("0123456789")))
    assert [addition.answer_set(s) for s in range(3)] == [digits, digits, digits[:2]]
    assert addition.chance_loss(2) == pytest.approx(math.log(2))


def test_eval_sets_round_trip_answer_sets_and_prefix(tmp_path) -> None:
    insts = [Instance((1, 2), (3,), 0), Instance((4,), (5, 6), 1)]
    es = TaskEvalSet("t", ["a", "b"], insts, [0.5, 0.7], answer_sets=[(3, 9), None], prefix=(0,))
    save_eval_sets([es], tmp_path / "e.json")
    (back,), _ = load_eval_sets(tmp_path / "e.json")
    assert back == es and back.answer_set(0) == (3, 9) and back.answer_set(1) is None
    # A file from before answer sets and prefixes: neither, and no choice metrics.
    old = json.loads((tmp_path / "e.json").read_text())
    for d in old["tasks"]:
        del d["answer_sets"], d["prefix"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    (back,), _ = load_eval_sets(tmp_path / "old.json")
    assert back.answer_sets == [] and back.prefix == () and not back.has_answer_sets


@pytest.fixture(scope="module")
def t_cmp_pool() -> InstancePool:
    """T_CMP with the default 100-token table and the default finite pool (shared: ~1 s to draw)."""
    task = build_task("t_cmp", {}, TaskVocab(byte_tokenizer()))
    return InstancePool(task, 0, TaskConfig(name="t_cmp", frequency=1e-3), 0)


def test_finite_pools_hold_out_everything_by_default(t_cmp_pool: InstancePool) -> None:
    # The 9,900 ordered pairs split in half; all of the test half is evaluated.
    assert len(t_cmp_pool.eval_instances()) == 4950 and len(t_cmp_pool.train) == 4950
    task = build_task("t_cmp", {"num_values": 30}, TaskVocab(byte_tokenizer()))
    capped = InstancePool(task, 0, TaskConfig(name="t_cmp", frequency=1e-3, eval_size=100), 0)
    assert len(capped.eval_instances()) == 100 and len(capped.test) == 435
    fresh = InstancePool(task, 0, TaskConfig(name="t_cmp", frequency=1e-3, pool="fresh"), 0)
    assert len(fresh.eval_instances()) == FRESH_EVAL_SIZE


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------


def test_one_position_rule_by_hand() -> None:
    train = [Instance((5, 6), (3,)), Instance((5, 7), (2,)), Instance((4, 6), (3,)), Instance((4, 7), (2,))]
    test = [Instance((5, 7), (2,)), Instance((4, 6), (3,)), Instance((1, 6), (3,)), Instance((9, 8), (3,))]
    es = TaskEvalSet("toy", ["toy"], test, [math.log(2)], answer_sets=[(2, 3)])
    b = compute_baselines([es], [train])
    assert b["version"] == 1
    rec = b["labels"]["toy"]
    # Position 0 ties every token (-> label 2): 1/4. Position 1: 7 -> 2, 6 -> 3, 8 unseen -> overall 2.
    assert (rec["rule_position"], rec["rule_acc"]) == (1, 0.75)
    # Add-one over 2 answers: three seen tokens with 2 of 2 votes (3/4), one unseen (1/2).
    assert rec["rule_choice_loss"] == pytest.approx((-3 * math.log(3 / 4) - math.log(1 / 2)) / 4)
    assert (rec["chance_acc"], rec["chance_loss"], rec["answer_set_size"], rec["n"]) == (
        0.5,
        pytest.approx(math.log(2)),
        2,
        4,
    )


def test_one_position_rule_predicts_whole_answers() -> None:
    train = [Instance((5,), (2, 3)), Instance((5,), (2, 3)), Instance((4,), (3, 3))]
    test = [Instance((5,), (2, 3)), Instance((4,), (3, 2))]
    p, acc, loss = one_position_rule(train, test, set_size=2)
    # 2**2 possible answers: (2+1)/(2+4) for the first, (0+1)/(1+4) for the second; 4 answer tokens.
    assert (p, acc) == (0, 0.5) and loss == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 4)


def test_t_cmp_one_position_baseline_is_about_three_quarters(t_cmp_pool: InstancePool) -> None:
    pool, task = t_cmp_pool, t_cmp_pool.task
    es = TaskEvalSet("t_cmp", ["t_cmp"], pool.eval_instances(), [task.chance_loss()], [task.answer_set()])
    rec = compute_baselines([es], [pool.fit_instances(0)])["labels"]["t_cmp"]
    # Theory: sum_i max(i, 99 - i) / (100 * 99) = 0.7525 for the majority label given val(TOK1).
    assert sum(max(i, 99 - i) for i in range(100)) / 9900 == pytest.approx(0.7525, abs=1e-4)
    assert rec["rule_acc"] == pytest.approx(0.7525, abs=0.02) and rec["chance_acc"] == 0.5
    assert rec["n"] == 4950 and rec["answer_set_size"] == 2


def test_threshold_must_exceed_the_best_baseline() -> None:
    baselines = {"labels": {"t_cmp": {"chance_acc": 0.5, "rule_acc": 0.7525, "rule_position": 0}}}
    check_threshold(baselines, CriterionConfig(threshold=0.9))
    check_threshold(baselines, CriterionConfig(metric="label_mass", threshold=0.5))  # not an accuracy
    with pytest.raises(ConfigError) as err:
        check_threshold(baselines, CriterionConfig(metric="choice_acc", threshold=0.75))
    assert str(err.value) == (
        "eval.criterion.threshold: 0.75 does not exceed the best baseline accuracy of 't_cmp', 0.7525 "
        "(the one-position rule at prompt position 0); raise it above that"
    )


# ----------------------------------------------------------------------------------------------
# The learned criterion
# ----------------------------------------------------------------------------------------------


def _records(values: list[float], metric: str = "choice_acc") -> list[dict]:
    return [
        {"kind": "eval", "step": 10 * i, "tokens": 1000 * i, "eval/t/acc": 0.1, f"eval/t/{metric}": v}
        for i, v in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("at_end", "status", "learned", "step"),
    [
        ("unconfirmed", "unconfirmed", False, None),
        ("learned", "unconfirmed", True, 30),
        ("not_learned", "not_learned", False, None),
    ],
)
def test_unconfirmed_crossing_at_the_end(at_end: str, status: str, learned: bool, step: int | None) -> None:
    crit = CriterionConfig(metric="choice_acc", threshold=0.9, patience=2, at_end=at_end)
    (row,) = emergence_table(_records([0.5, 0.6, 0.7, 0.95]), EvalConfig(criterion=crit))
    assert (row["status"], row["learned"], row["emergence_step"]) == (status, learned, step)
    assert row["crossing_step"] == (None if status == "not_learned" else 30)
    assert (row["metric"], row["threshold"], row["final_choice_acc"]) == ("choice_acc", 0.9, 0.95)


def test_criterion_direction_follows_the_metric() -> None:
    crit = CriterionConfig(metric="choice_loss", threshold=0.2, patience=1)
    (row,) = emergence_table(_records([0.7, 0.3, 0.15, 0.1, 0.12], "choice_loss"), EvalConfig(criterion=crit))
    assert (row["status"], row["learned"], row["emergence_step"]) == ("learned", True, 20)
    assert row["final_choice_loss"] == 0.12 and row["final_label_mass"] is None
    with pytest.raises(ConfigError, match=r"^eval\.criterion\.threshold: must be in \(0, 1\), got 1\.5$"):
        CriterionConfig(metric="loss_ratio", threshold=1.5).validate()


def test_shared_heads_give_the_same_scores() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="micro-w32"), vocab_size=64, max_seq_len=16).eval()
    rng = np.random.default_rng(1)
    # T_CMP-like rows: 8 distinct first tokens over 60 rows, so heads repeat and are shared.
    insts = [
        Instance((int(rng.integers(2, 10)), int(rng.integers(10, 60))), (int(rng.integers(60, 62)),))
        for _ in range(60)
    ]
    insts += [Instance((3, 4, 5), (60, 61))]  # a longer row: a batch of its own, with two answer tokens
    # The two-token rows form one batch whose heads (first columns) are shared.
    heads = np.array([i.prompt for i in insts[:60]])
    assert evaluator._shared_head_logits(model, heads, 1, torch.device("cpu")) is not None
    for prefix in ((), (1,)):
        kwargs = {"batch_size": 64, "pad_id": 0, "prefix": prefix, "answer_sets": [(60, 61)]}
        shared = score_instances(model, insts, **kwargs)
        plain = score_instances(model, insts, share_heads=False, **kwargs)
        np.testing.assert_allclose(shared.loss_sum, plain.loss_sum, rtol=1e-4)
        np.testing.assert_allclose(shared.label_mass_sum, plain.label_mass_sum, rtol=1e-4)
        np.testing.assert_array_equal(shared.choice_correct, plain.choice_correct)


def test_run_refuses_a_threshold_a_baseline_meets(tmp_path) -> None:
    from conftest import tiny_config

    from smalllm.train.trainer import train

    # The tiny run's T_CMP (20 values, 32 held-out pairs) has a one-position rule at 0.625.
    cfg = tiny_config(tmp_path / "run", "eval.criterion.threshold=0.6")
    with pytest.raises(
        ConfigError, match=r"^eval\.criterion\.threshold: 0\.6 does not exceed .* 't_cmp', 0\.6250"
    ):
        train(cfg, log=lambda line: None)
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or "eval/" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    )


def test_a_choice_criterion_needs_every_task_to_declare_its_answer_set() -> None:
    declared = TaskEvalSet("t", ["t"], [Instance((1,), (2,))], [math.log(2)], answer_sets=[(2, 3)])
    undeclared = TaskEvalSet("plugin", ["plugin"], [Instance((1,), (2,))], [math.log(2)])
    for metric in ("choice_acc", "choice_loss", "label_mass"):
        check_criterion_applies([declared], CriterionConfig(metric=metric, threshold=0.5))
        with pytest.raises(
            ConfigError, match=f"eval.criterion.metric: {metric} needs tasks .* 'plugin' declares none"
        ):
            check_criterion_applies([declared, undeclared], CriterionConfig(metric=metric, threshold=0.5))
    check_criterion_applies([undeclared], CriterionConfig(metric="acc", threshold=0.9))  # acc needs none
