"""``smalllm export lm-eval``: lm-evaluation-harness tasks from a run, scored by lm-eval itself.

Offline: the run is trained here, the harness reads the exported JSONL files through the packaged
``json`` builder, and the model is the run's checkpoint directory.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import assert_one_line_error, quiet, tiny_config

from smalllm.checkpoints import latest_checkpoint
from smalllm.cli import main
from smalllm.data.eval_sets import load_eval_sets
from smalllm.data.tokenizer import load_tokenizer
from smalllm.eval.evaluator import evaluate
from smalllm.eval.lm_eval_export import export_lm_eval, export_run
from smalllm.run_record import RunDir
from smalllm.tasks.text import text_problem
from smalllm.train.trainer import Trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lm-eval") / "run"
    Trainer(tiny_config(run_dir), log=quiet).fit()
    return run_dir


def test_export_writes_a_group_of_faithful_tasks(trained_run, tmp_path):
    out = tmp_path / "export"
    lines: list[str] = []
    exported = export_run(trained_run, out, log=lines.append)
    sets, _ = load_eval_sets(RunDir(trained_run).eval_sets_file)
    tok = load_tokenizer(latest_checkpoint(RunDir(trained_run).checkpoints_dir))
    by_task = {t.eval_set.task: t for t in exported}
    assert by_task["t_cmp"].output_type == "multiple_choice"
    assert by_task["copy"].output_type == "loglikelihood"  # several answer tokens
    for es in sets:
        task = by_task[es.task]
        assert len(task.eval_set.instances) + task.dropped == len(es.instances)
        docs = [json.loads(line) for line in (out / f"{task.name}.jsonl").read_text().splitlines()]
        assert len(docs) == len(task.eval_set.instances)
        for doc, inst in zip(docs, task.eval_set.instances, strict=True):
            assert tok.encode(doc["context"], add_special_tokens=False) == [*es.prefix, *inst.prompt]
            assert doc["context"] == doc["context"].rstrip()
            whole = tok.encode(doc["context"] + doc["answer"], add_special_tokens=False)
            assert whole == [*es.prefix, *inst.prompt, *inst.answer]
            if "choices" in doc:
                assert doc["choices"][doc["label"]] == doc["answer"]
    group = yaml.safe_load((out / "smalllm_run.yaml").read_text())
    assert group["task"] == [t.name for t in exported]
    spec = yaml.safe_load((out / f"{by_task['t_cmp'].name}.yaml").read_text())
    assert spec["output_type"] == "multiple_choice" and spec["target_delimiter"] == ""
    assert any("dropped" in line for line in lines) == any(t.dropped for t in exported)


def test_export_refuses_when_no_instance_survives(trained_run, tmp_path, capsys):
    sets, _ = load_eval_sets(RunDir(trained_run).eval_sets_file)
    tok = load_tokenizer(latest_checkpoint(RunDir(trained_run).checkpoints_dir))
    broken = [s for s in sets if s.task == "t_cmp"]
    broken[0].instances = [
        i for i in broken[0].instances if text_problem(tok, i, (), broken[0].answer_sets[0])
    ]
    assert broken[0].instances, "the tiny run's BPE table has instances that do not round-trip"
    with pytest.raises(Exception, match=r"^t_cmp: none of its \d+ instances survive id -> text -> id"):
        export_lm_eval(broken, tok, tmp_path / "x", "run", log=quiet)
    rc = main(["export", "lm-eval", str(tmp_path / "no-run"), "--out", str(tmp_path / "y")])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.out, captured.err, "not found")
    rc = main(["export", "lm-eval", "--tasks", "t_cmp", "--out", str(tmp_path / "y")])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.out, captured.err, "give a run directory, or --tasks and --tokenizer")


def test_lm_eval_accuracy_equals_choice_acc(trained_run, tmp_path, monkeypatch):
    import lm_eval  # a dev dependency: a broken install fails here instead of skipping

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    out = tmp_path / "export"
    assert main(["export", "lm-eval", str(trained_run), "--out", str(out)]) == 0
    exported = export_run(trained_run, out, log=quiet)
    checkpoint = latest_checkpoint(RunDir(trained_run).checkpoints_dir)
    output = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(checkpoint), "dtype": "float32"},
        tasks=["smalllm_run"],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(out)),
        device="cpu",
        batch_size=16,
        num_fewshot=0,
    )
    results = output["results"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype="float32")
    tok = load_tokenizer(checkpoint)
    for task in exported:
        ours = evaluate(model, [task.eval_set], None, batch_size=64, pad_id=tok.pad_token_id)
        metric = "choice_acc" if task.output_type == "multiple_choice" else "acc"
        theirs = results[task.name]["acc,none"]
        assert output["n-samples"][task.name]["effective"] == len(task.eval_set.instances)
        print(task.name, task.output_type, len(task.eval_set.instances), task.dropped, theirs, metric)
        assert theirs == pytest.approx(ours[f"eval/{task.eval_set.task}/{metric}"], abs=1e-6), task.name


def test_export_of_tasks_built_in_a_tokenizer(tmp_path, capsys):
    from test_any_model import word_tokenizer

    saved = tmp_path / "tok"
    word_tokenizer().save_pretrained(str(saved))
    out = tmp_path / "export"
    argv = ["export", "lm-eval", "--tasks", "t_cmp,t_add", "--tokenizer", str(saved), "--out", str(out)]
    params = ["--param", "t_cmp.num_values=20", "--param", "t_add.num_values=20", "--eval-size", "40"]
    assert main(argv + params) == 0, capsys.readouterr().err
    assert "wrote 2 task(s)" in capsys.readouterr().out
    group = yaml.safe_load((out / "smalllm_tok.yaml").read_text())
    assert group["task"] == ["smalllm_tok_t_cmp", "smalllm_tok_t_add"]
    for name in group["task"]:
        spec = yaml.safe_load((out / f"{name}.yaml").read_text())
        assert spec["output_type"] == "multiple_choice"  # both have single-token answer sets
        docs = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert docs and all(d["answer"].startswith(" ") and d["context"].startswith(" ") for d in docs)
    add = [json.loads(line) for line in (out / "smalllm_tok_t_add.jsonl").read_text().splitlines()]
    assert len(add[0]["choices"]) == 20
