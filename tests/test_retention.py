"""Gap retention: injection batches of a gap schedule, the evaluations around them, and the per-cycle
gain and decay read back from a run."""

from __future__ import annotations

import math

import pytest
from conftest import quiet, tiny_config

from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.errors import ConfigError
from smalllm.eval.retention import bracket_steps, eval_steps_of, retention_cycles, summarize_cycles
from smalllm.run_record import RunDir
from smalllm.train.trainer import train

GAP_TASK = (
    "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32,"
    " schedule: {kind: gap, gap_batches: 4}}]"
)


def test_gap_schedule_injects_in_the_first_batch_of_each_period(tmp_path) -> None:
    cfg = tiny_config(tmp_path / "run", GAP_TASK)
    stream = TaskStream(cfg.data, ensure_corpus(cfg.data, log=quiet), 8)
    steps = stream.injection_steps("t_cmp", 40)
    assert steps and all(s % 4 == 0 for s in steps)
    for s in range(40):  # the batches themselves agree
        has = bool((stream.batch(s).task_ids > 0).any())
        assert has == (s in steps)
    with pytest.raises(ConfigError, match="'copy' is not in this run's data.tasks"):
        stream.injection_steps("copy", 40)


def test_brackets_and_cycles_by_hand() -> None:
    brackets = bracket_steps([0, 10, 20, 30, 40], cycles=3, total_steps=45)
    assert brackets == [(0, 1, 10), (20, 21, 30), (40, 41, None)]
    assert eval_steps_of(brackets) == {0, 1, 10, 20, 21, 30, 40, 41}
    assert bracket_steps([0, 10, 20], cycles=5, total_steps=15) == [(0, 1, 10), (10, 11, None)]
    assert bracket_steps([], cycles=5, total_steps=15) == []
    key = "eval/t/loss"
    records = [
        {"kind": "eval", "step": s, key: v}
        for s, v in [(0, 2.0), (1, 1.5), (10, 1.8), (20, 1.6), (21, 1.0), (30, 1.4), (40, 1.2)]
    ]
    records.append({"kind": "train", "step": 41, key: 0.0})  # not an eval record: ignored
    cycles = retention_cycles(records, "t", brackets)
    assert [c["gain"] for c in cycles[:2]] == pytest.approx([0.5, 0.6])
    assert [c["decay"] for c in cycles[:2]] == pytest.approx([0.3, 0.4])
    assert math.isnan(cycles[2]["gain"])  # step 41 was never evaluated
    summary = summarize_cycles(cycles)
    assert summary["mean_gain"] == pytest.approx(0.55) and summary["gain_cycles"] == 2
    assert summary["mean_decay"] == pytest.approx(0.35) and summary["decay_cycles"] == 2


def test_a_run_evaluates_around_its_injections(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path / "run",
        GAP_TASK,
        "eval.around_injections=t_cmp",
        "eval.injection_cycles=3",
        "eval.every_steps=0",
        "eval.log_spaced=false",
        "eval.samples=0",
    )
    summary = train(cfg, log=quiet)
    brackets = [tuple(b) for b in summary["injections"]["brackets"]]
    assert summary["injections"]["task"] == "t_cmp" and len(brackets) == 3
    assert brackets[0][:2] == (0, 1) and all(b[0] % 4 == 0 for b in brackets)
    records = RunDir(cfg.run_dir).read_metrics()
    evaluated = {r["step"] for r in records if r.get("kind") == "eval"}
    assert eval_steps_of(brackets) <= evaluated
    cycles = retention_cycles(records, "t_cmp", brackets)
    assert all(math.isfinite(c["gain"]) for c in cycles)
    assert all(math.isfinite(c["decay"]) for c in cycles if c["next"] is not None)


def test_around_injections_must_name_a_configured_task(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^eval.around_injections: 'nope' is not a task of data.tasks"):
        tiny_config(tmp_path / "run", "eval.around_injections=nope")
    with pytest.raises(ConfigError, match=r"^eval.injection_cycles"):
        tiny_config(tmp_path / "run", "eval.injection_cycles=0")
