"""Tests of smalllm.eval: metrics, greedy-decoding equivalence, schedule, emergence and report."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smalllm.config import EvalConfig, ModelConfig
from smalllm.eval import (
    TaskEvalSet,
    detect_emergence,
    emergence_table,
    eval_steps,
    evaluate,
    format_emergence_table,
    greedy_generate,
    score_instances,
)
from smalllm.eval.config import CriterionConfig
from smalllm.eval.report import read_metrics, write_report
from smalllm.model.build import build_model
from smalllm.tasks.base import Instance

V = 64
PAD = 0


@pytest.fixture(scope="module")
def olmo() -> torch.nn.Module:
    torch.manual_seed(1234)
    model = build_model(ModelConfig(preset="micro-w32"), vocab_size=V, max_seq_len=32)
    # Random init at std 0.02 gives nearly flat logits; a larger scale makes argmaxes decisive,
    # so the teacher-forced/generate comparison is not decided by float rounding on near-ties.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(10.0)
    return model


def random_instances(rng: np.random.Generator, n: int, skills: int = 1) -> list[Instance]:
    out = []
    for _ in range(n):
        prompt = tuple(int(x) for x in rng.integers(2, V, size=rng.integers(1, 9)))
        answer = tuple(int(x) for x in rng.integers(2, V, size=rng.integers(1, 5)))
        out.append(Instance(prompt, answer, int(rng.integers(skills))))
    return out


# ----------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------


def test_loss_matches_hand_computation(olmo: torch.nn.Module) -> None:
    rng = np.random.default_rng(0)
    insts = random_instances(rng, 7, skills=2)
    chance = [math.log(2), math.log(10)]
    es = TaskEvalSet("toy", ["a", "b"], insts, chance)
    background = rng.integers(0, V, size=(3, 12))
    olmo.train()
    # batch_size 3 with mixed lengths exercises sorting, several batches and right padding.
    m = evaluate(olmo, [es], background, batch_size=3, pad_id=PAD)
    assert olmo.training, "train mode must be restored"

    losses, ratios, skills, exact, hits = [], [], [], [], 0
    olmo.eval()
    with torch.no_grad():
        for inst in insts:
            ids = torch.tensor([inst.prompt + inst.answer])
            logp = torch.log_softmax(olmo(input_ids=ids).logits[0].double(), dim=-1)
            p = len(inst.prompt)
            tok = [-float(logp[p - 1 + i, a]) for i, a in enumerate(inst.answer)]
            arg = [int(logp[p - 1 + i].argmax()) == a for i, a in enumerate(inst.answer)]
            losses += tok
            ratios += [t / chance[inst.skill] for t in tok]
            skills += [inst.skill] * len(tok)
            exact.append((inst.skill, all(arg)))
            hits += sum(arg)
        logits = olmo(input_ids=torch.from_numpy(background)).logits.double()
        bg = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), torch.from_numpy(background)[:, 1:].reshape(-1)
        )
    assert m["eval/toy/loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert m["eval/toy/loss_bits"] == pytest.approx(np.mean(losses) / math.log(2), rel=1e-5)
    assert m["eval/toy/loss_ratio"] == pytest.approx(np.mean(ratios), rel=1e-5)
    assert m["eval/toy/token_acc"] == pytest.approx(hits / len(losses))
    assert m["eval/toy/acc"] == pytest.approx(np.mean([e for _, e in exact]))
    for s, name in enumerate(["a", "b"]):
        sel = np.array(skills) == s
        assert m[f"eval/toy/{name}/loss"] == pytest.approx(np.array(losses)[sel].mean(), rel=1e-5)
        assert m[f"eval/toy/{name}/loss_ratio"] == pytest.approx(np.array(ratios)[sel].mean(), rel=1e-5)
        assert m[f"eval/toy/{name}/acc"] == pytest.approx(np.mean([e for k, e in exact if k == s]))
    assert m["eval/background/loss"] == pytest.approx(float(bg), rel=1e-5)


class OracleModel(torch.nn.Module):
    """Puts (almost) all mass on the next token of any known instance prefix; uniform elsewhere."""

    def __init__(self, instances: list[Instance]) -> None:
        super().__init__()
        self.next: dict[tuple[int, ...], int] = {}
        for inst in instances:
            seq = inst.prompt + inst.answer
            for t in range(len(inst.prompt), len(seq)):
                self.next[seq[:t]] = seq[t]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        b, t = input_ids.shape
        logits = torch.zeros(b, t, V)
        rows = input_ids.tolist()
        for i in range(b):
            for j in range(t):
                tok = self.next.get(tuple(rows[i][: j + 1]))
                if tok is not None:
                    logits[i, j] = -1e4
                    logits[i, j, tok] = 0.0
        return SimpleNamespace(logits=logits)


class UniformModel(torch.nn.Module):
    """Uniform over the whole vocabulary, or over the valid answers of the skill named by token 0."""

    def __init__(self, valid: dict[int, list[int]] | None = None) -> None:
        super().__init__()
        self.valid = valid
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device to find, like a real model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        b, t = input_ids.shape
        if self.valid is None:
            return SimpleNamespace(logits=torch.zeros(b, t, V))
        logits = torch.full((b, t, V), float("-inf"))
        for i in range(b):
            logits[i, :, self.valid[int(input_ids[i, 0])]] = 0.0
        return SimpleNamespace(logits=logits)


def family_set() -> tuple[TaskEvalSet, dict[int, list[int]]]:
    """Two sub-skills: binary answers (tokens 10-11) and 5-way answers (20-24), each value equally often."""
    valid = {3: [10, 11], 4: [20, 21, 22, 23, 24]}
    insts = []
    for k in range(50):  # two full cycles of the 25 two-token answers; every prompt distinct
        insts.append(Instance((3, 30 + k // 8, 40 + k % 8), (valid[3][k % 2],), 0))
        insts.append(Instance((4, 30 + k // 8, 40 + k % 8), (valid[4][k % 5], valid[4][(k // 5) % 5]), 1))
    return TaskEvalSet("fam", ["bin", "five"], insts, [math.log(2), math.log(5)]), valid


def test_oracle_scores_perfectly() -> None:
    es, _ = family_set()
    m = evaluate(OracleModel(es.instances), [es], None, batch_size=16, pad_id=PAD)
    assert m["eval/fam/acc"] == 1.0
    assert m["eval/fam/token_acc"] == 1.0
    assert m["eval/fam/loss"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/fam/bin/acc"] == m["eval/fam/five/acc"] == 1.0
    assert "eval/background/loss" not in m


def test_uniform_over_vocab_scores_log_v() -> None:
    es, _ = family_set()
    m = evaluate(UniformModel(), [es], np.ones((2, 8), dtype=np.int64), batch_size=16, pad_id=PAD)
    assert m["eval/fam/loss"] == pytest.approx(math.log(V))
    assert m["eval/fam/bin/loss_ratio"] == pytest.approx(math.log(V) / math.log(2))
    assert m["eval/fam/five/loss_ratio"] == pytest.approx(math.log(V) / math.log(5))
    assert m["eval/background/loss"] == pytest.approx(math.log(V))


def test_uniform_over_valid_answers_scores_chance() -> None:
    es, valid = family_set()
    m = evaluate(UniformModel(valid), [es], None, batch_size=32, pad_id=PAD)
    assert m["eval/fam/loss_ratio"] == pytest.approx(1.0)
    assert m["eval/fam/bin/loss_ratio"] == pytest.approx(1.0)
    assert m["eval/fam/five/loss_ratio"] == pytest.approx(1.0)
    assert m["eval/fam/bin/loss"] == pytest.approx(math.log(2))
    # Argmax of a flat distribution is its first valid token: right for exactly 1/K of each token.
    assert m["eval/fam/bin/acc"] == pytest.approx(1 / 2)
    assert m["eval/fam/five/token_acc"] == pytest.approx(1 / 5)
    assert m["eval/fam/five/acc"] == pytest.approx(1 / 25)


def test_single_skill_task_has_no_skill_keys() -> None:
    insts = [Instance((5, 6), (7,)), Instance((5,), (8, 9))]
    m = evaluate(UniformModel(), [TaskEvalSet("solo", ["solo"], insts, [math.log(4)])], None, 8, PAD)
    keys = ("loss", "loss_bits", "loss_ratio", "acc", "token_acc", "n", "acc_lo", "acc_hi")
    assert set(m) == {f"eval/solo/{k}" for k in keys}


def test_teacher_forced_exact_match_equals_greedy_generate(olmo: torch.nn.Module) -> None:
    rng = np.random.default_rng(7)
    insts = random_instances(rng, 24)
    generated = greedy_generate(olmo, [x.prompt for x in insts], max_new_tokens=4)
    # Half the answers become the model's own greedy continuation (so they must match), one of them
    # with its last token changed (partial match); the rest stay random.
    for i in range(0, len(insts), 2):
        k = len(insts[i].answer)
        insts[i] = Instance(insts[i].prompt, generated[i][:k])
    k = len(insts[2].answer)
    wrong = (insts[2].answer[-1] + 1) % V
    insts[2] = Instance(insts[2].prompt, insts[2].answer[:-1] + (wrong,))

    scores = score_instances(olmo.eval(), insts, batch_size=5, pad_id=PAD)
    reference = np.array([generated[i][: len(x.answer)] == x.answer for i, x in enumerate(insts)])
    np.testing.assert_array_equal(scores.exact, reference)
    assert 0 < reference.sum() < len(insts)
    assert scores.num_correct[2] == k - 1 and not scores.exact[2]


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------


def test_eval_steps_pythia_style() -> None:
    cfg = EvalConfig(every_steps=1000, log_spaced=True)
    assert eval_steps(3000, cfg, 2048) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    assert eval_steps(2500, cfg, 2048)[-2:] == [2000, 2500]  # the final step is always there
    assert eval_steps(100, EvalConfig(every_steps=0), 1) == [0, 1, 2, 4, 8, 16, 32, 64, 100]
    assert eval_steps(35, EvalConfig(every_steps=10, log_spaced=False), 1) == [0, 10, 20, 30, 35]
    assert eval_steps(0, cfg, 1) == [0]


def test_eval_steps_by_tokens() -> None:
    # 300 tokens per step, every 1000 tokens: first steps with >= 1000, 2000, 3000 tokens seen.
    cfg = EvalConfig(every_tokens=1000, log_spaced=False)
    assert eval_steps(12, cfg, 300) == [0, 4, 7, 10, 12]
    assert eval_steps(12, EvalConfig(every_tokens=1000, log_spaced=True), 300) == [0, 1, 2, 4, 7, 10, 12]
    assert eval_steps(5, EvalConfig(every_tokens=10, log_spaced=False), 300) == [0, 1, 2, 3, 4, 5]
    steps = eval_steps(10_000, EvalConfig(every_tokens=2**20, every_steps=7), 2**16)
    assert steps == sorted(set(steps)) and steps[-1] == 10_000 and 32 in steps and 7 not in steps


# ----------------------------------------------------------------------------------------------
# Emergence
# ----------------------------------------------------------------------------------------------


def curve(values: list[float]) -> tuple[list[int], list[int], list[float]]:
    steps = list(range(0, 10 * len(values), 10))
    return steps, [s * 100 for s in steps], values


def test_emergence_clean_step() -> None:
    em = detect_emergence(*curve([0, 0.1, 0.2, 0.95, 0.97, 0.99, 1.0]), threshold=0.9, patience=2)
    assert em is not None and (em.step, em.tokens, em.value) == (30, 3000, 0.95)


def test_emergence_tolerates_one_isolated_dip() -> None:
    em = detect_emergence(*curve([0, 0.1, 0.92, 0.85, 0.95, 0.96, 0.97]), threshold=0.9, patience=2)
    assert em is not None and em.step == 20
    # Two failures in a row are a fall, not a dip: emergence waits for the later crossing.
    em = detect_emergence(*curve([0, 0.92, 0.5, 0.5, 0.95, 0.96, 0.97]), threshold=0.9, patience=2)
    assert em is not None and em.step == 40


def test_spike_then_fall_is_not_emergence() -> None:
    assert detect_emergence(*curve([0, 0.1, 0.95, 0.2, 0.1, 0.2, 0.3]), threshold=0.9, patience=2) is None
    assert detect_emergence(*curve([0, 0.1, 0.95, 0.2, 0.1]), threshold=0.9, patience=1) is None
    assert detect_emergence(*curve([0, 0.1, 0.95, 0.2, 0.1]), threshold=0.9, patience=0).step == 20


def test_never_emerges() -> None:
    assert detect_emergence(*curve([0, 0.1, 0.5, 0.89, float("nan")]), threshold=0.9) is None
    assert detect_emergence([], [], [], threshold=0.9) is None


def test_crossing_at_end_of_run() -> None:
    # Last evaluation only: no evidence it is not a spike, so the crossing is reported unconfirmed.
    em = detect_emergence(*curve([0, 0.1, 0.2, 0.95]), threshold=0.9, patience=2)
    assert em is not None and (em.step, em.value, em.confirmed) == (30, 0.95, False)
    assert detect_emergence(*curve([0, 0.1, 0.2, 0.95]), threshold=0.9, patience=0).confirmed
    # One evaluation left (< patience): it must hold.
    assert detect_emergence(*curve([0, 0.1, 0.95, 0.96]), threshold=0.9, patience=2).step == 20
    assert detect_emergence(*curve([0, 0.1, 0.95, 0.5]), threshold=0.9, patience=2) is None
    # A dip at the very end of a full window cannot be shown to be isolated.
    assert detect_emergence(*curve([0, 0.95, 0.96, 0.5]), threshold=0.9, patience=2) is None


def test_loss_ratio_mode() -> None:
    ratios = [1.0, 0.9, 0.6, 0.25, 0.3, 0.1, 0.05]
    em = detect_emergence(*curve(ratios), threshold=0.3, patience=2, higher_is_better=False)
    assert em is not None and em.step == 30 and em.value == 0.25


def metrics_records() -> list[dict]:
    accs = [0.0, 0.05, 0.2, 0.95, 0.93, 0.97, 0.99]
    add = [0.0, 0.5, 0.92, 0.95, 0.97, 0.98, 0.99]
    mul = [0.0, 0.0, 0.1, 0.3, 0.95, 0.2, 0.3]
    records = []
    for i, (a, b, c) in enumerate(zip(accs, add, mul)):
        step = 0 if i == 0 else 2 ** (i + 2)
        tokens = step * 1024
        records.append(
            {
                "kind": "train",
                "step": step,
                "tokens": tokens,
                "loss": 5.0 - 0.5 * i,
                "lr": 1e-3,
                "tokens_per_s": 1e4,
                "train/copy/loss": 3.0 - 0.4 * i,
            }
        )
        ratio = 1.0 - 0.9 * a
        records.append(
            {
                "kind": "eval",
                "step": step,
                "tokens": tokens,
                "eval/copy/loss": ratio * math.log(10),
                "eval/copy/loss_bits": ratio * math.log2(10),
                "eval/copy/loss_ratio": ratio,
                "eval/copy/acc": a,
                "eval/copy/token_acc": a,
                "eval/arith/loss": 2.0 - i * 0.2,
                "eval/arith/loss_bits": 3.0,
                "eval/arith/loss_ratio": 1.0 - 0.1 * i,
                "eval/arith/acc": (b + c) / 2,
                "eval/arith/token_acc": (b + c) / 2,
                "eval/arith/add/loss": 2.0 - i * 0.3,
                "eval/arith/add/loss_ratio": 1.0 - 0.15 * i,
                "eval/arith/add/acc": b,
                "eval/arith/mul/loss": 2.0 - i * 0.1,
                "eval/arith/mul/loss_ratio": 1.0 - 0.05 * i,
                "eval/arith/mul/acc": c,
                "eval/background/loss": 4.0 - 0.3 * i,
            }
        )
    return records


def test_emergence_table_rows() -> None:
    rows = emergence_table(
        metrics_records(), EvalConfig(criterion=CriterionConfig(threshold=0.9, patience=2))
    )
    by = {(r["task"], r["skill"]): r for r in rows}
    assert list(by) == [("copy", None), ("arith", None), ("arith", "add"), ("arith", "mul")]
    assert by[("copy", None)]["emergence_step"] == 32 and by[("copy", None)]["emergence_tokens"] == 32 * 1024
    assert by[("arith", "add")]["emergence_step"] == 16
    assert by[("arith", "mul")]["emergence_step"] is None and by[("arith", "mul")]["best_acc"] == 0.95
    assert by[("copy", None)]["final_acc"] == 0.99
    # Loss-ratio criterion instead of accuracy.
    crit = CriterionConfig(metric="loss_ratio", threshold=0.5, patience=1)
    rows = emergence_table(metrics_records(), EvalConfig(criterion=crit))
    by = {(r["task"], r["skill"]): r for r in rows}
    assert by[("arith", "add")]["emergence_step"] == 64 and by[("arith", "mul")]["emergence_step"] is None
    text = format_emergence_table(rows)
    assert "arith" in text and "mul" in text and len(set(map(len, text.splitlines()[:2]))) == 1
    cells = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines()[2:]}
    assert cells[("arith", "add")] == ["0.990", "-", "-", "0.990", "0.100", "learned", "64", "65.5K"]
    assert cells[("arith", "mul")] == ["0.300", "-", "-", "0.950", "0.700", "not_learned", "-", "-"]


def test_write_report(tmp_path) -> None:
    with (tmp_path / "metrics.jsonl").open("w") as f:
        for rec in metrics_records():
            f.write(json.dumps(rec) + "\n")
        f.write('{"kind": "eval", "step": 99')  # truncated last line of a killed run
    (tmp_path / "config.yaml").write_text("eval:\n  accuracy_threshold: 0.9\n  patience: 2\n")
    assert len(read_metrics(tmp_path)) == 14
    paths = write_report(tmp_path)
    names = {p.name for p in paths}
    assert {"copy.png", "arith.png", "background.png", "summary.md"} <= names
    for p in paths:
        assert p.is_file() and p.parent == tmp_path / "report"
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 300_000
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| copy | (all) |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| copy |"))
    assert row.split("|")[9].strip() == "32"  # emergence step column
    assert "![arith](arith.png)" in summary
