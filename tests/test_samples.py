"""Greedy samples at each evaluation: records in metrics.jsonl with the configured counts, text that
decodes, TensorBoard text, off when asked; batched generation equals one prompt at a time.

(That a resumed run writes the same samples records as an uninterrupted one is checked by
tests/test_determinism.py's resume tests, which compare every metrics record: samples are on by
default.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import quiet, tiny_config

from smalllm.config import ModelConfig
from smalllm.data.shards import ensure_corpus
from smalllm.eval.samples import BACKGROUND_SOURCE, greedy_complete
from smalllm.model.build import build_model
from smalllm.run_record import RunDir
from smalllm.train.callbacks.samples import SamplesCallback
from smalllm.train.trainer import Trainer

SHORT = ("train.max_tokens=2048", "train.device=cpu", "train.log_every=3", "eval.every_steps=4")
"""8 steps of 256 tokens; evaluates at 0, 1, 2, 4 and 8."""


def test_samples_records_at_eval_steps_with_the_configured_counts(tmp_path: Path) -> None:
    """The samples callback alone (no evaluator): one record per evaluation step, ``eval.samples``
    per task and of the background, ``eval.sample_tokens`` each, text decoded with the run's
    tokenizer, and the same tables in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(
        tmp_path / "run", *SHORT, "eval.samples=3", "eval.sample_tokens=5", "logging.tensorboard=true"
    )
    trainer = Trainer(cfg, callbacks=[SamplesCallback()], log=quiet)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["samples_seconds"] > 0
    run = RunDir(tmp_path / "run")
    records = [r for r in run.read_metrics() if r["kind"] == "samples"]
    assert [r["step"] for r in records] == [0, 1, 2, 4, 8]
    assert all(r["tokens"] == r["step"] * 256 and r["samples_s"] > 0 for r in records)

    tokenizer = ensure_corpus(cfg.data, log=quiet).tokenizer
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    sets = {s.task: s for s in trainer.stream.eval_sets()}
    for record in records:
        entries = record["samples"]
        assert [e["source"] for e in entries] == ["t_cmp"] * 3 + ["copy"] * 3 + [BACKGROUND_SOURCE] * 3
        for e in entries:
            assert len(e["completion_ids"]) == 5
            for field in ("prompt", "expected", "completion"):
                assert isinstance(e[field], str) and e[field] == decode(e[f"{field}_ids"])
            if e["source"] == BACKGROUND_SOURCE:
                assert "correct" not in e and len(e["expected_ids"]) == 5
            else:
                assert e["correct"] == (e["completion_ids"][: len(e["expected_ids"])] == e["expected_ids"])
        # The first held-out instances of each task, the same at every evaluation.
        for task, es in sets.items():
            shown = [(e["prompt_ids"], e["expected_ids"]) for e in entries if e["source"] == task]
            assert shown == [(list(i.prompt), list(i.answer)) for i in es.instances[:3]]

    tags: set[str] = set()
    for sub in sorted(p.parent for p in run.path.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(sub), size_guidance={"tensors": 0}).Reload()
        tags |= {t for t in acc.Tags()["tensors"] if t.startswith("samples/")}
        if "samples/t_cmp/text_summary" in acc.Tags()["tensors"]:
            text = acc.Tensors("samples/t_cmp/text_summary")
            assert [t.step for t in text] == [0, 1, 2, 4, 8]
            assert b"| prompt | expected | completion | right |" in text[-1].tensor_proto.string_val[0]
    assert {
        "samples/t_cmp/text_summary",
        "samples/copy/text_summary",
        "samples/background/text_summary",
    } <= tags


@pytest.mark.parametrize("off", ["eval.samples=0", "eval.sample_tokens=0", "eval.enabled=false"])
def test_samples_off_writes_no_records(tmp_path: Path, off: str) -> None:
    cfg = tiny_config(tmp_path / "run", *SHORT, off)
    summary = Trainer(cfg, log=quiet).fit()
    assert summary["status"] == "completed" and "samples_seconds" not in summary
    assert not [r for r in RunDir(tmp_path / "run").read_metrics() if r["kind"] == "samples"]


@pytest.mark.parametrize("arch", ["olmo", "gpt2"])
def test_batched_greedy_equals_one_prompt_at_a_time(arch: str) -> None:
    """Left padding with a mask and explicit positions changes nothing: each prompt's completion
    in the batch equals its completion alone, and equals a full forward pass's argmax."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="micro-w32", arch=arch), vocab_size=97, max_seq_len=32)
    model.train()
    prompts = [[5, 9, 11], [7], [3, 4, 5, 6, 7, 8], [50, 60, 70]]
    batched = greedy_complete(model, prompts, 6)
    assert model.training, "training mode must be restored"
    assert [len(c) for c in batched] == [6] * 4
    for prompt, got in zip(prompts, batched, strict=True):
        assert greedy_complete(model, [prompt], 6) == [got]
        ids = list(prompt)
        with torch.no_grad():
            model.eval()
            for _ in range(6):  # no cache, no padding: the reference
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            model.train()
        assert ids[len(prompt) :] == got
    # The model's positions bound the completion: a 30-token prompt at 32 positions gets 3 tokens.
    assert [len(c) for c in greedy_complete(model, [list(range(1, 31)), [1]], 10)] == [3, 3]
