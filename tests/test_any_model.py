"""Scoring a model smalllm did not train (``smalllm eval --model``), and task instances as text.

Everything is offline: the "outside" model is a micro model with a small BPE tokenizer, both saved
with ``save_pretrained`` by the test itself, its "revisions" two subdirectories.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from smalllm.cli import main
from smalllm.config import ModelConfig
from smalllm.data.task_tokens import word_initial_tokens, word_initial_vocab
from smalllm.data.tokenizer import byte_level_bpe, byte_tokenizer
from smalllm.eval.any_model import build_outside_tasks, revision_step
from smalllm.model.build import build_model
from smalllm.tasks import Instance, build_task
from smalllm.tasks.text import render, text_problem

WORDS = [
    "".join(np.random.default_rng(k).choice(list("abcdefghijklmnoprstuvwy"), size=3 + k % 4))
    for k in range(160)
]


def word_tokenizer():
    """A byte-level BPE that has learnt each of :data:`WORDS` (with its leading space) as one token."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=30)) for _ in range(400)]
    return byte_level_bpe(texts, vocab_size=900)


@pytest.fixture(scope="module")
def outside_model(tmp_path_factory):
    """A local "hub" directory with revisions step10 and step20 (different random weights)."""
    root = tmp_path_factory.mktemp("outside") / "model"
    tok = word_tokenizer()
    for step, seed in (("step20", 2), ("step10", 1)):
        torch.manual_seed(seed)
        model = build_model(ModelConfig(preset="micro-w32"), vocab_size=len(tok), max_seq_len=32)
        model.save_pretrained(str(root / step))
        tok.save_pretrained(str(root / step))
    return root


def test_word_initial_tokens_are_words_that_round_trip():
    tok = word_tokenizer()
    ids = word_initial_tokens(tok)
    assert len(ids) >= 100
    for i in ids[:50]:
        text = tok.decode([int(i)])
        assert text[0] == " " and text[1:].isalpha()
        assert tok.encode(text, add_special_tokens=False) == [int(i)]
    assert len(word_initial_tokens(byte_tokenizer())) == 0  # bytes only: no whole words


def test_text_problem_names_each_failure():
    tok = byte_tokenizer()  # one token per byte: "a" is 97 - 256 offset aside, look the ids up
    a, b, space = (tok.convert_tokens_to_ids(c) for c in ("a", "b", "Ġ"))
    assert text_problem(tok, Instance((a, b), (a,))) is None
    assert render(tok, Instance((a, b), (a,))).context == "ab"
    assert text_problem(tok, Instance((a, space), (b,))) == "context ends in whitespace"
    bpe = word_tokenizer()
    word = int(word_initial_tokens(bpe)[0])
    pieces = bpe.encode(bpe.decode([word]), add_special_tokens=False)
    assert pieces == [word]
    # The word spelt out in bytes decodes to the same text, which re-merges into the one word token.
    spelt = [bpe.convert_tokens_to_ids(c) for c in bpe.convert_ids_to_tokens([word])[0]]
    assert text_problem(bpe, Instance(tuple(spelt), (word,))) == "context re-tokenizes differently"


def test_task_render_and_choices_round_trip():
    tok = word_tokenizer()
    task = build_task("t_cmp", {"num_values": 20}, word_initial_vocab(tok), seed=3)
    inst = task.generate(np.random.default_rng(0))
    context, answer = task.render(inst)
    assert context.startswith(" ") and answer.startswith(" ")
    assert tok.encode(context + answer, add_special_tokens=False) == [*inst.prompt, *inst.answer]
    assert task.text_problem(inst) is None


def test_outside_tasks_share_one_table_and_keep_only_faithful_instances():
    tok = word_tokenizer()
    built = build_outside_tasks(
        tok,
        ["t_cmp", "t_add"],
        {"t_cmp": {"num_values": 20}, "t_add": {"num_values": 20}},
        seed=5,
        eval_size=64,
    )
    cmp_task, add_task = built.tasks
    assert cmp_task.table == add_task.table
    assert set(cmp_task.table) <= set(int(i) for i in word_initial_tokens(tok))
    for es in built.sets:
        assert es.instances and all(text_problem(tok, i) is None for i in es.instances)
        assert len(es.instances) + built.dropped[es.task] == 64
    assert built.fit[0] and not {i.key for i in built.fit[0]} & {i.key for i in built.sets[0].instances}


def test_revision_steps():
    assert revision_step("step1000", 5) == 1000
    assert revision_step("main", 2) == 2
    assert revision_step(None, 0) == 0


def test_eval_model_with_two_revisions_writes_a_curve_with_baselines(outside_model, tmp_path, capsys):
    out = tmp_path / "curve.json"
    rc = main(
        [
            "eval",
            "--model",
            str(outside_model),
            "--revision",
            "step20",
            "--revision",
            "step10",
            "--tasks",
            "t_cmp,t_add",
            "--param",
            "t_cmp.num_values=20",
            "--param",
            "t_add.num_values=20",
            "--seed",
            "7",
            "--eval-size",
            "64",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    summary = json.loads(out.read_text())
    curve = summary["curve"]
    assert [r["step"] for r in curve] == [10, 20]  # step order, whatever the order given
    assert [r["revision"] for r in curve] == ["step10", "step20"]
    for rec in curve:
        for key in ("loss", "acc", "choice_acc", "choice_loss", "label_mass", "n", "acc_lo", "acc_hi"):
            assert f"eval/t_cmp/{key}" in rec
        assert rec["eval/t_cmp/n"] == 64 - summary["tasks"]["t_cmp"]["dropped"]
        assert 0.0 <= rec["eval/t_cmp/choice_acc"] <= 1.0
    assert curve[0]["eval/t_cmp/loss"] != curve[1]["eval/t_cmp/loss"]  # two different models
    base = summary["baselines"]["labels"]
    assert base["t_cmp"]["chance_acc"] == pytest.approx(0.5)
    assert base["t_add"]["chance_acc"] == pytest.approx(1 / 20)
    assert base["t_cmp"]["rule_acc"] > 0.5  # reading the first value alone beats chance
    assert {r["task"] for r in summary["emergence"]} == {"t_cmp", "t_add"}
    assert all(r["status"] == "not_learned" for r in summary["emergence"])  # untrained models
    assert len(summary["tasks"]["t_cmp"]["table"]) == 22  # 20 values and the two labels
    assert "baselines:" in printed and "rule acc" in printed and "emerged at step" in printed


def test_eval_model_refusals(outside_model, tmp_path, capsys):
    def refused(argv: list[str], expect: str) -> None:
        rc = main(argv)
        captured = capsys.readouterr()
        assert_one_line_error(rc, captured.out, captured.err, expect)

    model = str(outside_model)
    refused(
        ["eval", "--model", model, "--revision", "step99", "--tasks", "t_cmp"], "--revision: model directory"
    )
    refused(["eval", "--model", model, "--revision", "step10"], "--tasks: name at least one task")
    refused(["eval", str(tmp_path), "--revision", "step10"], "--revision: only with --model")
    refused(
        ["eval", "--model", model, "--revision", "step10", "--tasks", "t_cmp", "--param", "x"],
        "--param: expected",
    )
    refused(
        [
            "eval",
            "--model",
            model,
            "--revision",
            "step10",
            "--tasks",
            "t_cmp",
            "--param",
            "t_cmp.num_values=900",
        ],
        "--tasks.t_cmp.params: task 't_cmp': task needs 900 distinct table tokens",
    )
    # A byte tokenizer has no word-initial tokens at all.
    byte_dir = tmp_path / "bytes"
    byte_tokenizer().save_pretrained(str(byte_dir))
    refused(
        ["eval", "--model", str(byte_dir), "--tasks", "t_cmp"], "word-initial tokens of the model's tokenizer"
    )
