"""The leakage audit: a held-out instance planted in the background is found where it lands, a clean
tiny run has none, and a mixture whose tasks share a table is refused before training."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import numpy as np
import pytest
import yaml
from conftest import TINY_OVERRIDES, TINY_TASKS, assert_one_line_error, quiet, tiny_config

from smalllm.cli import main
from smalllm.config import load_config, load_run_config, save_config
from smalllm.data import token_search
from smalllm.data.config import TaskConfig
from smalllm.data.leakage import audit_stream, check_leaks
from smalllm.data.pools import InstancePool
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream, build_families
from smalllm.data.task_tokens import task_vocab
from smalllm.data.token_search import PatternIndex, window_hashes
from smalllm.data.tokenizer import byte_tokenizer
from smalllm.tasks import TaskVocab, build_task
from smalllm.train.trainer import train

SEQ = 32
PLANT_ROW, PLANT_OFFSET = 3, 10  # past any prefix instance the stream writes at the row's start


def test_window_hashes_agree_with_a_pattern_hashed_alone():
    ids = np.arange(40, dtype=np.int64).reshape(2, 20) % 7
    h = window_hashes(ids, 5)
    assert h.shape == (2, 16)
    assert h[1, 3] == window_hashes(ids[1, 3:8], 5)[0, 0]
    assert (h[0, 0] == h[0, 7]) == (ids[0, 0:5].tolist() == ids[0, 7:12].tolist())


def test_pattern_search_across_chunks_arrays_and_limit(monkeypatch):
    monkeypatch.setattr(token_search, "CHUNK_TOKENS", 8)
    a = np.arange(100, 120)  # 20 tokens: chunks [0, 8), [8, 16), [16, 20) with overlap
    b = np.arange(200, 210)
    index = PatternIndex(
        [(106, 107, 108, 109), (119, 200), (201, 202), (205,), (), (300, 301), (106, 107, 108, 109)]
    )
    # Across a chunk boundary: found (both copies); across two arrays: never; empty: never.
    assert index.found_in([a, b]) == {0, 2, 3, 6}
    # The limit counts tokens over the arrays in order: 25 tokens end inside b, before 205.
    assert index.found_in([a, b], limit=25) == {0, 2, 6}
    assert index.found_in([a, b], limit=9) == set()
    assert sorted(index.matches(np.stack([a[:10], a[5:15]]))) == [(0, 6, 0), (0, 6, 6), (1, 1, 0), (1, 1, 6)]


def _planted_source(tmp_path) -> tuple[list[str], tuple[int, ...]]:
    """Overrides for a byte-token background that carries one held-out t_cmp instance verbatim at
    training row PLANT_ROW, offset PLANT_OFFSET (unshuffled, so row g is window g of the file)."""
    tasks = [
        "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32}]",
        "data.task_tokens.source=vocabulary",  # tables independent of the corpus, so known before it
        "data.tokenizer.kind=byte",
        "data.background.shuffle=false",
    ]
    cfg = tiny_config(tmp_path / "probe", *tasks)
    families = build_families(cfg.data, task_vocab(cfg.data, byte_tokenizer(), None), 8)
    task = families[0].task
    instance = families[0].pools[0].eval_instances()[5]
    planted = instance.prompt + instance.answer
    # Filler of one token outside the task's table and labels: no chance match anywhere else.
    filler = next(t for t in range(ord("a"), 256) if t not in set(task.table_tokens()))
    eos = byte_tokenizer().eos_token_id
    held_out = [filler] * 100 + [eos]
    train = [filler] * (SEQ * 40) + [eos]
    at = PLANT_ROW * SEQ + PLANT_OFFSET
    train[at : at + len(planted)] = planted
    path = tmp_path / "background.npy"
    np.save(path, np.array(held_out + train, dtype=np.uint16))
    source = [
        "data.background.source=tokens",
        f"data.background.paths=[{path}]",
        "data.background.holdout_documents=1",
    ]
    return [*tasks, *source], planted


def test_audit_finds_a_held_out_instance_planted_in_the_background(tmp_path, capsys):
    overrides, planted = _planted_source(tmp_path)
    # Without decontamination the planted instance stays in the held-out set, and the scan finds it.
    overrides.append("data.decontaminate=false")
    cfg = tiny_config(tmp_path / "run", *overrides)
    stream = TaskStream(cfg.data, ensure_corpus(cfg.data, log=quiet), 8)
    report = audit_stream(stream, 40, stream.background_holdout(2), ngram=8)
    (t_cmp,) = report.tasks
    assert (t_cmp.occurrences, t_cmp.leaked) == (1, 1)
    (hit,) = t_cmp.examples
    assert (hit["row"], hit["offset"], hit["in"]) == (PLANT_ROW, PLANT_OFFSET, "background")
    assert hit["where"] == "in_background_text" and t_cmp.where["in_background_text"] == 1
    assert stream.rows(PLANT_ROW, PLANT_ROW + 1).input_ids[0, PLANT_OFFSET:][: len(planted)].tolist() == list(
        planted
    )
    # The held-out background (filler) shares its 8-grams with the training filler.
    assert report.background is not None and report.background.found == report.background.holdout_ngrams == 1

    # The command: the same finding, the speed printed, the report as JSON.
    out = tmp_path / "audit.json"
    args = [*TINY_OVERRIDES, *TINY_TASKS, f"run_dir={tmp_path / 'run'}", *overrides]
    assert main(["audit", *args, "--max-rows", "40", "--ngram", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"row {PLANT_ROW} offset {PLANT_OFFSET}" in printed and "tokens/s" in printed
    saved = json.loads(out.read_text())
    assert saved["tasks"][0]["examples"][0]["row"] == PLANT_ROW and saved["tokens"] == 40 * SEQ


def test_decontamination_drops_the_planted_instance_from_the_held_out_set(tmp_path):
    overrides, planted = _planted_source(tmp_path)
    cfg = tiny_config(tmp_path / "run", *overrides)
    corpus = ensure_corpus(cfg.data, log=quiet)
    stream = TaskStream(cfg.data, corpus, 8)
    assert stream.held_out_dropped == {"t_cmp": 1}
    (held_out,) = stream.eval_sets()
    # Left out, not replaced: 31 of the 32 are evaluated, in their order.
    (full,) = TaskStream(replace(cfg.data, decontaminate=False), corpus, 8).eval_sets()
    assert held_out.instances == [i for i in full.instances if i.prompt + i.answer != planted]
    assert len(held_out.instances) == 31
    report = audit_stream(stream, 40, None)
    assert report.task_occurrences == 0 and report.tasks[0].decontaminated == 1
    # The training rows are the same either way: the instance is still there, now never evaluated.
    off = TaskStream(replace(cfg.data, decontaminate=False), corpus, 8)
    assert off.held_out_dropped == {"t_cmp": 0}
    for a, b in zip(dataclasses.astuple(stream.rows(0, 40)), dataclasses.astuple(off.rows(0, 40))):
        np.testing.assert_array_equal(a, b)
    assert stream.rows(PLANT_ROW, PLANT_ROW + 1).input_ids[0, PLANT_OFFSET:][: len(planted)].tolist() == list(
        planted
    )

    # Kept in the data cache: the next stream on this corpus reads the answer instead of searching.
    def no_search(*_args, **_kwargs):
        raise AssertionError("searched again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PatternIndex, "found_in", no_search)
        assert TaskStream(cfg.data, corpus, 8).held_out_dropped == {"t_cmp": 1}
    # A run logs and records what it dropped.
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert summary["status"] == "completed" and summary["held_out_dropped"] == {"t_cmp": 1}
    assert any(line.startswith("held-out sets: dropped 1 t_cmp instance(s)") for line in lines)


def test_clean_tiny_run_has_no_leak(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    stream = TaskStream(cfg.data, ensure_corpus(cfg.data, log=quiet), cfg.train.global_batch_size)
    check_leaks(stream.families)
    rows = cfg.train.max_tokens // cfg.data.seq_len
    report = audit_stream(stream, rows, stream.background_holdout(8), chunk_tokens=1000)
    assert report.rows == rows and [t.task for t in report.tasks] == ["t_cmp", "copy"]
    assert report.task_occurrences == 0 and all(t.leaked == 0 for t in report.tasks)
    assert report.tokens_per_second > 0


def test_two_tasks_on_one_table_are_refused_before_training(tmp_path, capsys):
    # copy and reverse write strings of the same letter tokens: a palindrome is an instance of both,
    # so one task's held-out palindromes are the other's training instances (3 letters of 2: 4 of 8).
    strings = "params: {length: 3, alphabet_size: 2}, eval_size: 4"
    shared = f"data.tasks=[{{name: copy, frequency: 0.01, {strings}}}, {{name: reverse, frequency: 0.01, {strings}}}]"
    args = [*TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"]
    for extra in (["--dry-run"], []):
        rc = main(["train", *args, shared, *extra])
        captured = capsys.readouterr()
        assert_one_line_error(
            rc, captured.out, captured.err, "data.tasks.0 ('copy') and data.tasks.1 ('reverse')"
        )
    assert not (tmp_path / "run").exists()
    # Longer strings over the whole alphabet: no palindrome held out by chance, accepted.
    other = shared.replace("length: 3, alphabet_size: 2", "length: 6, alphabet_size: 26")
    assert main(["train", *args, other, "--dry-run"]) == 0


def test_audit_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    rc = main(["audit", str(empty)])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.out, captured.err, f"RUN_DIR: '{empty}' holds no run")
    rc = main(["audit", "--ngram", "0"])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.out, captured.err, "--ngram: must be between 1")


def test_memorisation_tasks_keep_their_evaluated_instances():
    vocab = TaskVocab(byte_tokenizer())
    task = build_task("fact_lookup", {}, vocab)
    pool = InstancePool(task, 0, TaskConfig(name="fact_lookup", frequency=0.01), 0)
    every = {i.key for i in pool.eval_instances()}
    assert every  # a memorisation task is scored on its training facts: there are some to keep
    assert pool.drop_from_evaluation(every) == 0 and {i.key for i in pool.eval_instances()} == every


def test_a_run_saved_before_decontamination_is_read_without_it(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    saved = tmp_path / "config.yaml"
    save_config(cfg, saved)
    assert load_run_config(saved).data.decontaminate is True
    legacy = yaml.safe_load(saved.read_text())
    del legacy["data"]["decontaminate"]
    saved.write_text(yaml.safe_dump(legacy))
    assert load_run_config(saved).data.decontaminate is False
    assert load_config(saved).data.decontaminate is True  # a config file of one's own: the default
