"""The frequency-controlled stream: exact counts, schedules, placement, seeking, ranks, held-out split."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import tiny_config

from smalllm.config import ScheduleConfig, TaskConfig
from smalllm.data.mixture import SkillSequence, make_rule
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.errors import ConfigError
from smalllm.tasks import _REGISTRY, Instance, Task, register


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ensure_corpus(tiny_config(tmp_path_factory.mktemp("r")).data, log=lambda _m: None)


def make_stream(corpus, tmp_path, tasks: str, batch: int = 8, seq_len: int = 32) -> TaskStream:
    cfg = tiny_config(tmp_path, f"data.tasks={tasks}", f"data.seq_len={seq_len}")
    return TaskStream(cfg.data, corpus, batch)


def count_instances(batch) -> dict[int, int]:
    """Instances per label, counted from the token labels (each instance ends at a label change)."""
    counts: dict[int, int] = {}
    for row, answer in zip(batch.task_ids, batch.answer_mask):
        # An instance is a maximal run of one label that contains answer tokens followed by its EOD;
        # consecutive instances of one label are split at answer->non-answer transitions.
        for i in range(len(row)):
            if row[i] and answer[i] and (i + 1 == len(row) or not answer[i + 1]):
                counts[int(row[i])] = counts.get(int(row[i]), 0) + 1
    return counts


# ----------------------------------------------------------------------------- exact placement


@pytest.mark.parametrize(
    "unit,freq", [("per_token", 0.01), ("token_fraction", 0.05), ("example_fraction", 0.3)]
)
@pytest.mark.parametrize(
    "schedule",
    [
        ScheduleConfig(),
        ScheduleConfig(kind="gap", gap_batches=7),
        ScheduleConfig(kind="piecewise", points=[[5, 0.0], [11, 0.02], [40, 0.001]]),
    ],
    ids=["uniform", "gap", "piecewise"],
)
def test_realised_counts_within_one_instance_per_block(unit, freq, schedule):
    cfg = TaskConfig(name="t_cmp", frequency=freq, unit=unit, schedule=schedule)
    rule = make_rule(cfg, 0, seq_len=64, batch_rows=16, mean_length=4.0, seed=3)
    rows = np.arange(0, 16 * 200 + 1)
    counts, expected = rule.count(rows), rule.expected(rows)
    # A block is one batch, or one period of a gap schedule: exact at every block boundary, and by
    # difference over every run of whole blocks.
    period = 16 * (7 if schedule.kind == "gap" else 1)
    ends = rows[::period]
    assert np.all(np.abs(counts[ends] - expected[ends]) < 1)
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.integers(0, len(ends), size=(2, 500)), axis=0)
    assert np.all(np.abs((counts[ends[b]] - counts[ends[a]]) - (expected[ends[b]] - expected[ends[a]])) < 1)
    # Inside a block the count only moves between the block's two boundary counts.
    first = (rows // period) * period
    last = np.minimum(first + period, rows[-1])
    assert np.all((counts[first] <= counts) & (counts <= counts[last]))
    assert np.all(np.diff(counts) >= 0)


def test_tiny_frequency_over_a_long_horizon_is_exact():
    # Huang et al.'s rarest setting: 2.4e-8 instances per token, 4096-token rows, batches of 1024.
    cfg = TaskConfig(name="t_cmp", frequency=2.4e-8, unit="per_token")
    rule = make_rule(cfg, 0, seq_len=4096, batch_rows=1024, mean_length=4.0, seed=0)
    for steps in (1, 10, 99, 1_000, 50_000, 10_000_000):
        rows = steps * 1024
        tokens = rows * 4096
        assert abs(int(rule.count(rows)) - 2.4e-8 * tokens) < 1
    # About one instance every ten batches, never two in one batch.
    per_batch = np.diff(rule.count(np.arange(0, 1024 * 1000 + 1, 1024)))
    assert per_batch.max() == 1 and 95 <= per_batch.sum() <= 104


@pytest.mark.parametrize(
    "weights",
    [
        [1, 1, 1],
        [5, 1, 0.5, 0.25],
        list(1 / np.arange(1, 33) ** 1.4),
        list(np.random.default_rng(0).pareto(1, 9) + 0.01),
    ],
)
def test_sub_skills_get_their_share_within_one_instance_at_every_prefix(weights):
    seq = SkillSequence(weights)
    n = 5000
    seen = np.zeros(len(weights))
    for k in range(n):
        skill, within = seq[k]
        assert within == seen[skill]
        seen[skill] += 1
        assert np.all(np.abs(seen - (k + 1) * seq.weights) < 2)
    assert np.array_equal(seq.counts(n), seen)


def test_family_sub_skills_are_placed_exactly(corpus, tmp_path):
    stream = make_stream(
        corpus,
        tmp_path,
        "[{name: sparse_parity, frequency: 0.5, unit: example_fraction, params: {num_subtasks: 4, num_bits: 8}}]",
        seq_len=64,
    )
    steps = 25
    seen: dict[int, int] = {}
    for step in range(steps):
        for label, n in count_instances(stream.batch(step)).items():
            seen[label] = seen.get(label, 0) + n
    table = {row["label"]: row for row in stream.frequency_table(steps * 8)}
    assert table["sparse_parity"]["realised"] == sum(seen.values()) == 100
    for i, label in enumerate(stream.labels[1:], start=1):
        assert seen.get(i, 0) == table[str(label)]["realised"]
        assert abs(table[str(label)]["realised"] - table[str(label)]["requested"]) < 2


def test_gap_schedule_delivers_each_period_in_its_first_batch():
    cfg = TaskConfig(name="t_cmp", frequency=0.002, schedule=ScheduleConfig(kind="gap", gap_batches=10))
    rule = make_rule(cfg, 0, seq_len=64, batch_rows=32, mean_length=4.0, seed=1)
    per_batch = np.diff(rule.count(np.arange(0, 32 * 100 + 1, 32)))
    assert per_batch.reshape(10, 10)[:, 1:].sum() == 0
    assert abs(per_batch.sum() - 0.002 * 64 * 32 * 100) < 1
    # A scalar count inside a period (a run whose last step ends mid-period) is the array's count.
    grid = np.arange(0, 32 * 25 + 1, 16)
    assert [int(rule.count(int(g))) for g in grid] == rule.count(grid).tolist()
    assert rule.count(32 * 5).shape == ()


def test_stream_batches_realise_the_frequency_table(corpus, tmp_path):
    stream = make_stream(
        corpus,
        tmp_path,
        "[{name: t_cmp, frequency: 0.01, params: {num_values: 20}},"
        " {name: copy, frequency: 0.1, unit: example_fraction, placement: document, params: {length: 3}},"
        " {name: t_add, frequency: 0.2, unit: token_fraction, params: {num_values: 20}, schedule: {kind: gap, gap_batches: 3}}]",
    )
    steps = 30
    seen: dict[int, int] = {}
    for step in range(steps):
        for label, n in count_instances(stream.batch(step)).items():
            seen[label] = seen.get(label, 0) + n
    table = stream.frequency_table(steps * 8)
    for i, row in enumerate(table, start=1):
        assert seen.get(i, 0) == row["realised"], row
        assert abs(row["realised"] - row["requested"]) < 1


# ------------------------------------------------------------------ determinism, seeking, ranks


def test_same_seed_same_stream_and_seek_equals_iteration(corpus, tmp_path):
    tasks = "[{name: t_cmp, frequency: 0.02, params: {num_values: 20}}, {name: lego, frequency: 0.01}]"
    a, b = make_stream(corpus, tmp_path, tasks), make_stream(corpus, tmp_path, tasks)
    iterated = [a.batch(k) for k in range(12)]
    for k in (11, 3, 7, 0):  # seek in any order
        direct = b.batch(k)
        assert np.array_equal(direct.input_ids, iterated[k].input_ids)
        assert np.array_equal(direct.task_ids, iterated[k].task_ids)
        assert np.array_equal(direct.answer_mask, iterated[k].answer_mask)


def test_two_ranks_are_disjoint_and_cover_the_global_batch(corpus, tmp_path):
    stream = make_stream(corpus, tmp_path, "[{name: t_cmp, frequency: 0.03, params: {num_values: 20}}]")
    for step in range(5):
        whole = stream.batch(step, rank=0, world=1)
        r0, r1 = stream.batch(step, rank=0, world=2), stream.batch(step, rank=1, world=2)
        assert np.array_equal(np.concatenate([r0.input_ids, r1.input_ids]), whole.input_ids)
        assert np.array_equal(np.concatenate([r0.task_ids, r1.task_ids]), whole.task_ids)


def test_data_seed_changes_order_and_phase(corpus, tmp_path):
    tasks = "[{name: t_cmp, frequency: 0.01, params: {num_values: 20}}]"
    a = make_stream(corpus, tmp_path, tasks)
    cfg = tiny_config(tmp_path, f"data.tasks={tasks}", "data.seed=1")
    b = TaskStream(cfg.data, corpus, 8)
    assert not np.array_equal(a.batch(0).input_ids, b.batch(0).input_ids)


# ------------------------------------------------------------------------------- placement


def test_prefix_and_document_placement(corpus, tmp_path):
    stream = make_stream(
        corpus,
        tmp_path,
        "[{name: t_cmp, frequency: 0.5, unit: example_fraction, params: {num_values: 20}},"
        " {name: copy, frequency: 0.5, unit: example_fraction, placement: document, params: {length: 3}}]",
    )
    eod = stream.eod
    batch = stream.batch(0)
    prefixed, documents = 0, 0
    for ids, tids in zip(batch.input_ids, batch.task_ids):
        assert len(ids) == 32
        if tids[0] == 1:  # prefix instance of t_cmp: TOK1 TOK2 LABEL <eod> at the start
            assert list(tids[:4]) == [1, 1, 1, 1] and ids[3] == eod
            prefixed += 1
        starts = [i for i in range(len(tids)) if tids[i] == 2 and (i == 0 or tids[i - 1] != 2)]
        for s in starts:  # a document instance starts a document
            assert s == 0 or ids[s - 1] == eod
        documents += len(starts)
    assert prefixed >= 3 and documents >= 3  # half of 8 rows each, within one instance


# --------------------------------------------------------------------------- held-out split


@pytest.mark.parametrize("pool", ["finite", "fresh"])
def test_held_out_instances_never_enter_training(corpus, tmp_path, pool):
    stream = make_stream(
        corpus,
        tmp_path,
        f"[{{name: copy, frequency: 0.5, unit: example_fraction, pool: {pool}, pool_size: 400,"
        f" eval_size: {200 if pool == 'finite' else 40}, params: {{length: 3, alphabet_size: 5}}}}]",
    )
    (pool_obj,) = stream.families[0].pools
    test_keys = {i.key for i in pool_obj.eval_instances()}
    assert test_keys
    train_keys = {pool_obj.train_instance(k).key for k in range(3000)}
    assert not test_keys & train_keys
    if pool == "finite":  # 5^3 = 125 distinct strings: half held out, all of the rest trained on
        assert len(test_keys) == 62 and len(train_keys) == 63
    else:
        assert len(test_keys) == 40 and len(train_keys) == 85


def test_fresh_pool_that_cannot_avoid_the_test_set_is_refused(corpus, tmp_path):
    with pytest.raises(ConfigError, match="pool=fresh"):
        make_stream(
            corpus,
            tmp_path,
            "[{name: copy, frequency: 0.5, unit: example_fraction, pool: fresh, eval_size: 100,"
            " params: {length: 2, alphabet_size: 3}}]",
        )


@pytest.mark.parametrize(
    "pool, settings, message",
    [
        # 3^2 = 9 strings, 7 of them held out
        (
            "finite",
            "test_fraction: 0.8, params: {length: 2, alphabet_size: 3}",
            "has 2 distinct instance(s) left to train on after holding out 7",
        ),
        # 5^3 = 125 strings, 100 of them held out
        (
            "fresh",
            "eval_size: 100, params: {length: 3, alphabet_size: 5}",
            "has 25 distinct instance(s) left to train on after holding out 100",
        ),
    ],
)
def test_a_pool_too_small_for_its_held_out_split_is_refused(corpus, tmp_path, pool, settings, message):
    with pytest.raises(ConfigError) as err:
        make_stream(
            corpus,
            tmp_path,
            f"[{{name: copy, frequency: 0.5, unit: example_fraction, pool: {pool}, {settings}}}]",
        )
    assert str(err.value).startswith(
        f"data.tasks.0: pool={pool}: task 'copy' {message} for evaluation, too few"
    )


class ThreeWords(Task):
    """Test-only plug-in with three instances that it does not declare."""

    name = "test_three_words"
    description = "test only: one of three fixed instances"
    memorization = False

    @dataclass
    class Params:
        pass

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        k = int(rng.integers(3))
        return Instance((2 + k,), (5 + k,), skill)


@pytest.fixture(params=[False, True], ids=["generalisation", "memorization"])
def three_words(request):
    cls = type("ThreeWords", (ThreeWords,), {"memorization": request.param})
    register(cls)
    yield cls
    _REGISTRY.pop(cls.name, None)


@pytest.mark.parametrize("pool, left", [("finite", 1), ("fresh", 0)])
def test_a_plugin_with_fewer_instances_than_it_says_is_refused_unless_it_memorises(
    corpus, tmp_path, three_words, pool, left
):
    tasks = f"[{{name: test_three_words, frequency: 0.5, unit: example_fraction, pool: {pool}}}]"
    if not three_words.memorization:
        with pytest.raises(ConfigError, match=f"task 'test_three_words' has {left} distinct instance"):
            make_stream(corpus, tmp_path, tasks)
        return
    (pool_obj,) = make_stream(corpus, tmp_path, tasks).families[0].pools
    # A memorisation task is scored on what it trained on: all three instances.
    assert {i.key for i in pool_obj.eval_instances()} == {pool_obj.train_instance(k).key for k in range(30)}
    assert len(pool_obj.eval_instances()) == 3


def test_eval_sets_come_from_the_test_split(corpus, tmp_path):
    stream = make_stream(corpus, tmp_path, "[{name: lego, frequency: 0.01, eval_size: 10}]")
    (eval_set,) = stream.eval_sets()
    assert eval_set.task == "lego" and len(eval_set.skills) == 5
    assert len(eval_set.instances) == 50 and {i.skill for i in eval_set.instances} == set(range(5))
    assert eval_set.skills == [f"depth{d}" for d in range(1, 6)]  # eval/lego/depth1/acc, not lego/lego/…


def test_multi_shard_corpus_windows_match_one_stream(tmp_path, monkeypatch):
    from smalllm.data import shards

    cfg = tiny_config(tmp_path / "run", f"data.cache_dir={tmp_path / 'cache'}").data
    single = shards.open_corpus(shards.build_corpus(cfg, tmp_path / "one"))
    monkeypatch.setattr(shards, "SHARD_TOKENS", 10_000)
    multi = shards.open_corpus(shards.build_corpus(cfg, tmp_path / "many"))
    assert len(multi.train.parts) > 3 and len(multi.train) == len(single.train)
    flat = np.concatenate([np.asarray(p) for p in multi.train.parts])
    per_shard = [len(p) // 32 for p in multi.train.parts]
    ids = np.array([0, per_shard[0] - 1, per_shard[0], sum(per_shard) - 1])
    rows = multi.train.windows(ids, 32)
    starts = [0, (per_shard[0] - 1) * 32, len(multi.train.parts[0]), None]
    for row, start in zip(rows[:3], starts[:3]):
        assert np.array_equal(row, flat[start : start + 32])


# ---------------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "tasks,message",
    [
        (
            "[{name: t_cmpp, frequency: 0.01}]",
            "data.tasks.0.name: unknown task 't_cmpp' (did you mean 't_cmp'?)",
        ),
        (
            "[{name: copy, frequency: 0.01, params: {lenght: 3}}]",
            "data.tasks.0.params.lenght: unknown parameter",
        ),
        ("[{name: copy, frequency: 0.01, params: {length: 40}}]", "longer than data.seq_len=32"),
        ("[{name: copy, frequency: 3.0, unit: example_fraction}]", "data.tasks.0.frequency"),
        (
            "[{name: copy, frequency: 0.9, params: {length: 8}}]",
            "data.tasks: at these frequencies a row may need",
        ),
        (
            "[{name: t_cmp, frequency: 0.01, params: {num_values: 400}}]",
            "needs 400 distinct table tokens but only",
        ),
    ],
)
def test_bad_task_specs_name_the_field(corpus, tmp_path, tasks, message):
    with pytest.raises(ConfigError) as err:
        make_stream(corpus, tmp_path, tasks)
    assert message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- independent placement


def test_two_tasks_share_a_row_at_the_product_of_their_rates():
    # Per-row rates 0.3 and 0.2 (example fractions), 16-row batches, 1,500 batches = 24,000 rows.
    rows = np.arange(0, 16 * 1500 + 1)
    per_row = []
    for index, freq in enumerate((0.3, 0.2)):
        cfg = TaskConfig(name="t_cmp", frequency=freq, unit="example_fraction")
        rule = make_rule(cfg, index, seq_len=64, batch_rows=16, mean_length=4.0, seed=5)
        per_row.append(np.diff(rule.count(rows)))
    first, second = per_row
    assert first.sum() == round(0.3 * 24_000) and second.sum() == round(0.2 * 24_000)
    both = np.mean((first > 0) & (second > 0))
    # Independent placement: 0.3 · 0.2 = 0.06 (binomial sd over 24,000 rows is about 0.0015; the
    # exact per-batch counts make it smaller). Locked rows would give 0.2, disjoint rows 0.
    assert abs(both - 0.06) < 0.006
    # Each task still gets exactly its count in every batch: 0.3·16 = 4.8 -> 4 or 5, 0.2·16 -> 3 or 4.
    assert set(np.add.reduceat(first, np.arange(0, 24_000, 16)).tolist()) == {4, 5}
    assert set(np.add.reduceat(second, np.arange(0, 24_000, 16)).tolist()) == {3, 4}


def test_rows_inside_a_block_depend_on_the_data_seed_and_task():
    cfg = TaskConfig(name="t_cmp", frequency=0.25, unit="example_fraction")
    rows = np.arange(0, 16 * 50 + 1)
    runs = {
        (seed, index): tuple(np.diff(make_rule(cfg, index, 64, 16, 4.0, seed).count(rows)))
        for seed in (0, 1)
        for index in (0, 1)
    }
    assert len(set(runs.values())) == 4
    again = make_rule(cfg, 1, 64, 16, 4.0, 1).count(rows)
    assert tuple(np.diff(again)) == runs[(1, 1)]


def test_rate_above_one_packs_floor_or_ceil_instances_per_row():
    # Huang et al.'s scale in small: 2.5 instances per row -> every row gets 2 or 3.
    cfg = TaskConfig(name="t_cmp", frequency=2.5 / 64, unit="per_token")
    rule = make_rule(cfg, 0, seq_len=64, batch_rows=8, mean_length=4.0, seed=0)
    per_row = np.diff(rule.count(np.arange(0, 8 * 100 + 1)))
    assert set(per_row.tolist()) == {2, 3} and per_row.sum() == 2000
    assert rule.max_per_row() == 3


def test_gap_period_that_overflows_its_first_batch_names_gap_batches(corpus, tmp_path):
    # 0.01 per token · 16 tokens = 0.16 per row: spread out, one 4-token instance per row at most;
    # a 40-batch period delivered in its first batch is 6.4 per row -> 7 · 4 = 28 tokens > 16.
    tasks = (
        "[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, schedule: {kind: gap, gap_batches: 40}}]"
    )
    with pytest.raises(ConfigError) as err:
        make_stream(corpus, tmp_path, tasks, seq_len=16)
    message = str(err.value)
    assert message.startswith("data.tasks.0.schedule.gap_batches: ") and "need 28 task tokens" in message
    # 2 batches: 0.32 per row -> at most 1 instance per row, which fits.
    make_stream(corpus, tmp_path, tasks.replace("gap_batches: 40", "gap_batches: 2"), seq_len=16)


def test_eval_sets_start_where_training_put_the_task(corpus, tmp_path):
    stream = make_stream(corpus, tmp_path, TWO_PLACEMENTS)
    prefixes = {s.task: s.prefix for s in stream.eval_sets()}
    assert prefixes == {"t_cmp": (), "copy": (stream.eod,)}


TWO_PLACEMENTS = (
    "[{name: t_cmp, frequency: 0.01, params: {num_values: 20}},"
    " {name: copy, frequency: 0.1, unit: example_fraction, placement: document, params: {length: 3}}]"
)


# ----------------------------------------------------------------------------- task token tables


def test_default_table_holds_only_background_tokens_with_a_text_form(corpus, tmp_path):
    from smalllm.data.task_tokens import background_counts, round_trips

    stream = make_stream(corpus, tmp_path, "[{name: t_cmp, frequency: 0.01, params: {num_values: 20}}]")
    task = stream.families[0].task
    counts = background_counts(corpus)
    table = task.table_tokens()
    assert len(table) == 22 == len(set(table))
    assert min(int(counts[t]) for t in table) >= 100
    tok = corpus.tokenizer
    for t in table:
        assert tok.encode(tok.decode([t]), add_special_tokens=False) == [t] and round_trips(tok, t)
    # Whole-vocabulary drawing stays available, and there some table ids never occur at all.
    cfg = tiny_config(
        tmp_path, "data.tasks=[{name: t_cmp, frequency: 0.01}]", "data.task_tokens.source=vocabulary"
    )
    wide = TaskStream(cfg.data, corpus, 8).families[0].task.table_tokens()
    assert min(int(counts[t]) for t in wide) == 0


def test_tables_are_a_pure_function_of_seed_tokenizer_and_corpus(corpus, tmp_path):
    tasks = "[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, seed: 3}, {name: t_add, frequency: 0.01, params: {num_values: 20}, seed: 3}]"
    first = make_stream(corpus, tmp_path, tasks)
    second = make_stream(corpus, tmp_path, tasks)
    cmp_a, add_a = (f.task for f in first.families)
    cmp_b, _ = (f.task for f in second.families)
    assert cmp_a.table_tokens() == cmp_b.table_tokens()
    assert cmp_a.table == add_a.table  # one seed, one shared value table


def test_word_initial_tables_use_words_only(corpus, tmp_path):
    from smalllm.config import load_config  # noqa: F401 - the config types come from there
    from smalllm.data.task_tokens import background_counts, eligible_table_tokens

    cfg = tiny_config(tmp_path, "data.task_tokens.word_initial=true", "data.task_tokens.min_count=1")
    ids = eligible_table_tokens(cfg.data.task_tokens, corpus.tokenizer, background_counts(corpus))
    texts = [corpus.tokenizer.decode([int(i)]) for i in ids]
    assert texts and all(t[0] == " " and t[1:].isalpha() for t in texts)


def test_data_inspect_and_tasks_show_list_the_run_table_with_counts(corpus, tmp_path, capsys):
    from smalllm.cli import main
    from smalllm.data.inspect import inspect_stream
    from smalllm.data.task_tokens import background_counts

    cfg = tiny_config(tmp_path, "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}}]")
    counts = background_counts(corpus)
    table = TaskStream(cfg.data, corpus, 8).families[0].task.table_tokens()
    expected = sorted((i, int(counts[i])) for i in table)
    out = inspect_stream(cfg.data, 8, 8 * 32 * 4, rows=1)
    section = out.split("t_cmp token table (22 tokens, data.task_tokens: seen >= 100 times")[1]
    assert sorted((int(i), int(n)) for i, n in re.findall(r"(\d+) '[^']*'\s+×(\d+)", section)) == expected
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  seq_len: 32\n  tokenizer: {kind: bpe, vocab_size: 300}\n"
        "  background: {holdout_documents: 50, synthetic: {num_words: 200, num_documents: 1500}}\n"
    )
    capsys.readouterr()
    assert main(["tasks", "show", "t_cmp", "num_values=20", "--config", str(config)]) in (0, None)
    shown = capsys.readouterr().out.split("\ntoken table ")[1].split("\nsamples")[0]
    assert sorted((int(i), int(n)) for i, n in re.findall(r"(\d+) '[^']*'\s+×(\d+)", shown)) == expected


def test_background_counts_read_the_training_shards_only(corpus, monkeypatch):
    import dataclasses

    from smalllm.data import task_tokens

    size = len(corpus.tokenizer)
    whole = np.bincount(np.concatenate([np.asarray(p) for p in corpus.train.parts]), minlength=size)
    assert np.array_equal(task_tokens.background_counts(dataclasses.replace(corpus)), whole)
    assert whole.sum() == corpus.num_tokens  # the held-out tokens are not counted
    monkeypatch.setattr(task_tokens, "COUNTED_TOKENS", 1000)
    prefix = np.bincount(np.asarray(corpus.train.parts[0][:1000]), minlength=size)
    assert np.array_equal(task_tokens.background_counts(dataclasses.replace(corpus)), prefix)


# ----------------------------------------------------------------------------- review fixes


def test_a_rows_instances_come_in_a_seeded_order_not_the_configs(corpus, tmp_path):
    # Two prefix tasks that often share a row: each is first in some of those rows, so neither sits
    # behind the other by construction (t_cmp, listed first, used to be at position 0 always).
    stream_tasks = (
        "[{name: t_cmp, frequency: 0.4, unit: example_fraction, params: {num_values: 20}},"
        " {name: t_add, frequency: 0.4, unit: example_fraction, params: {num_values: 20}}]"
    )
    stream = make_stream(corpus, tmp_path, stream_tasks, batch=32)
    batch = stream.rows(0, 2000)
    both = [row for row in batch.task_ids if {1, 2} <= set(row.tolist())]
    first = [int(row[0]) for row in both]
    assert len(both) > 200 and 0.35 < first.count(1) / len(first) < 0.65
    again = stream.rows(0, 2000)
    assert (again.input_ids == batch.input_ids).all()  # the order is a function of the row


def test_prefix_tasks_at_more_than_one_per_row_are_scored_after_an_eod(corpus, tmp_path):
    # Paper scale: over one prefix instance per row on average, most follow another's <eod>.
    crowded = make_stream(
        corpus,
        tmp_path,
        "[{name: t_cmp, frequency: 0.05, params: {num_values: 20}}]",  # 1.6 per row
    )
    assert [s.prefix for s in crowded.eval_sets()] == [(crowded.eod,)]
    sparse = make_stream(
        corpus, tmp_path, "[{name: t_cmp, frequency: 0.5, unit: example_fraction, params: {num_values: 20}}]"
    )
    assert [s.prefix for s in sparse.eval_sets()] == [()]


class BadAnswerSet(ThreeWords):
    """Test-only plug-in whose answers (5, 6, 7) are not all in the answer set it declares."""

    name = "test_bad_answer_set"
    declared: tuple[int, ...] = (5, 6)

    def answer_set(self, skill: int = 0) -> tuple[int, ...]:
        return self.declared


@pytest.mark.parametrize(
    "declared, message",
    [
        ((5, 6), "emits answer token 7 outside its answer_set"),
        ((5, 6, 7, 7), "repeats a token in its answer_set"),
    ],
)
def test_an_answer_set_that_misses_or_repeats_answers_is_refused(corpus, tmp_path, declared, message):
    cls = type("Declared", (BadAnswerSet,), {"declared": declared, "memorization": True})
    register(cls)
    try:
        with pytest.raises(ConfigError, match=f"data.tasks.0.name: task 'test_bad_answer_set' {message}"):
            make_stream(
                corpus, tmp_path, "[{name: test_bad_answer_set, frequency: 0.5, unit: example_fraction}]"
            )
    finally:
        _REGISTRY.pop(cls.name, None)


def test_a_one_rate_rule_expects_exactly_what_the_general_integral_gives():
    # The uniform schedule skips the clip-and-sum over breakpoints; the counts must not move a bit.
    rule = make_rule(
        TaskConfig(name="t_cmp", frequency=3.7e-3), 0, seq_len=128, batch_rows=16, mean_length=4.0, seed=2
    )
    assert len(rule.rates) == 1
    rows = np.concatenate([np.arange(0, 5000), np.random.default_rng(0).integers(0, 2**40, size=5000)])
    covered = np.clip(rows.astype(np.float64)[..., None] - 0.0, 0.0, np.inf)
    np.testing.assert_array_equal(rule.expected(rows), (covered * rule.rates).sum(axis=-1))
